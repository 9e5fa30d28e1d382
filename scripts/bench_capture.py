#!/usr/bin/env python3
"""Speed of the bottom of the wire engine against tshark, on the same file in the same run.

    python scripts/bench_capture.py [CAPTURE ...] [--size MB] [--keep PATH] [--no-tshark]
                                    [--transform NAME ...]

Times three nested stages on each capture: reading frames (open_capture),
decapsulating TCP (tcp_segment), and reassembling with a no-op handler
(TcpReassembler). Besides the captures named, it times a large synthetic file made
by `replicate()` from the real wmimplant.pcap (every copy with its own addresses,
so every connection is new). tshark runs `-Y dcerpc -T fields` on each file for
the ratio. Figures: packets/s and MB/s of the file size.

With ``--transform NAME`` (a name of wmiscope.synth.sensor.SENSOR_TRANSFORMS:
frag4, vxlan, erspan3 ...) the synthetic file is also rewritten as a sensor would
deliver it and timed the same way: the cost of IP reassembly and decapsulation
beside the plain file's fast path.

`replicate(src, dst, target_bytes)` is importable for other benchmarks.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT.parent / "shared" / "captures" / "wmimplant.pcap"

sys.path.insert(0, str(ROOT))
from wmiscope.dissectors.capture import Decapsulation, open_capture, tcp_segment  # noqa: E402
from wmiscope.dissectors.tcp import NullHandler, TcpReassembler  # noqa: E402
from wmiscope.synth.wire import PcapWriter  # noqa: E402


def replicate(src, dst, target_bytes: int) -> int:
    """Writes a classic pcap at dst made of copies of src until it holds target_bytes.

    Copy i moves every IPv4 address of src (Ethernet frames) to 10.0.0.0/8 as
    ``i * 256 + k + 1`` (k the address's rank of first appearance), so copies never
    share a TCP connection, and shifts time by i times (src's duration + 1 s).
    Other frames are copied unchanged. Returns the number of frames written.
    """
    frames = list(open_capture(src))
    if not frames:
        raise ValueError(f"{src}: no frames")
    linktype = frames[0][2]
    frames = [f for f in frames if f[2] == linktype]
    t0 = frames[0][1]
    span = frames[-1][1] - t0 + 1.0
    hosts: dict[bytes, int] = {}
    templates = []          # (relative ts, frame bytes, offset of the IPv4 addresses or -1)
    for _, ts, lt, data in frames:
        off = -1
        if lt == 1 and len(data) >= 34 and data[12:14] == b"\x08\x00":
            off = 26
            for a in (data[26:30], data[30:34]):
                hosts.setdefault(a, len(hosts))
        templates.append((ts - t0, data, off))
    if len(hosts) > 255:
        raise ValueError("source has more than 255 IPv4 hosts")
    size = 24                                   # the pcap file header
    copy = 0
    with PcapWriter(dst, linktype) as out:
        while size < target_bytes:
            base = copy * 256
            mapped = {a: (0x0A000000 + base + k + 1).to_bytes(4, "big") for a, k in hosts.items()}
            shift = t0 + copy * span
            for rel, data, off in templates:
                if off >= 0:
                    data = data[:26] + mapped[data[26:30]] + mapped[data[30:34]] + data[34:]
                out.write(shift + rel, data)
                size += 16 + len(data)
            copy += 1
            if copy >= 1 << 16:
                break
    return out.frames


_NOOP = NullHandler()


def _stage_read(path) -> int:
    n = 0
    for _ in open_capture(path):
        n += 1
    return n


def _stage_segment(path) -> int:
    # As the pipeline calls it: with the state IP reassembly and tunnels need.
    n = 0
    seg = tcp_segment
    ctx = Decapsulation(lambda e: None)
    for frame, ts, lt, data in open_capture(path):
        seg(lt, data, ctx, frame, ts)
        n += 1
    return n


def _stage_reassemble(path) -> tuple[int, dict]:
    n = 0
    seg = tcp_segment
    ctx = Decapsulation(lambda e: None)
    r = TcpReassembler(lambda conn: _NOOP)
    feed = r.feed
    for frame, ts, lt, data in open_capture(path):
        s = seg(lt, data, ctx, frame, ts)
        if s is not None:
            feed(frame, ts, s)
        n += 1
    r.finish()
    return n, r.stats


def _best(fn, path, repeat: int):
    best = None
    result = None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn(path)
        dt = time.perf_counter() - t
        best = dt if best is None else min(best, dt)
    return best, result


def replay(keep, size_mb: int, source, name: str):
    """(path, temporary directory or None) of a replay of `source` of at least size_mb MB:
    at `keep` (built only when missing or smaller), else in a temporary directory that the
    caller cleans up."""
    import tempfile

    tmpdir = None
    if keep:
        path = Path(keep)
    else:
        tmpdir = tempfile.TemporaryDirectory()
        path = Path(tmpdir.name) / name
    if not path.exists() or path.stat().st_size < size_mb << 20:
        t = time.perf_counter()
        packets = replicate(source, path, size_mb << 20)
        print(f"built {path} ({path.stat().st_size / 1e6:.0f} MB, {packets} packets) in {time.perf_counter() - t:.0f} s")
    return path, tmpdir


def tshark_command(path) -> list[str]:
    """The tshark run every wire benchmark compares against (the issue's reference)."""
    return ["tshark", "-r", str(path), "-Y", "dcerpc", "-T", "fields",
            "-e", "frame.number", "-e", "dcerpc.cn_call_id", "-e", "dcerpc.opnum"]


def _tshark(path) -> float | None:
    if shutil.which("tshark") is None:
        return None
    t = time.perf_counter()
    subprocess.run(tshark_command(path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t


def bench(path, *, tshark: bool = True, repeat: int = 3) -> None:
    size = os.path.getsize(path)
    mb = size / 1e6
    t_read, packets = _best(_stage_read, path, repeat)
    t_seg, _ = _best(_stage_segment, path, repeat)
    t_all, (_, stats) = _best(_stage_reassemble, path, repeat)
    print(f"{Path(path).name}: {packets} packets, {mb:.1f} MB, {stats['flows']} TCP connections")
    for name, t in (("read", t_read), ("read+tcp_segment", t_seg), ("read+segment+reassemble", t_all)):
        print(f"  {name:26s} {t:8.3f} s  {packets / t:>10,.0f} packets/s  {mb / t:8.1f} MB/s"
              f"  {t / packets * 1e6:6.2f} us/packet")
    if tshark:
        t_ts = _tshark(path)
        if t_ts is not None:
            print(f"  {'tshark -Y dcerpc -T fields':26s} {t_ts:8.3f} s  {packets / t_ts:>10,.0f} packets/s"
                  f"  {mb / t_ts:8.1f} MB/s")
            print(f"  ratio: ours (read+segment+reassemble) is {t_ts / t_all:.1f}x tshark's speed")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("captures", nargs="*", help="captures to time (besides the synthetic one)")
    ap.add_argument("--size", type=float, default=100.0, help="synthetic file size in MB (0: none)")
    ap.add_argument("--source", default=str(DEFAULT_SOURCE), help="capture the synthetic file replicates")
    ap.add_argument("--keep", help="write the synthetic file here and keep it")
    ap.add_argument("--no-tshark", action="store_true")
    ap.add_argument("--repeat", type=int, default=3, help="runs per stage; the best is reported")
    ap.add_argument("--transform", action="append", default=[], metavar="NAME",
                    help="also time the synthetic file rewritten by this sensor transformation "
                         "(wmiscope.synth.sensor: frag4, frag6, vxlan, erspan3, ...)")
    args = ap.parse_args(argv)
    for path in args.captures:
        bench(path, tshark=not args.no_tshark, repeat=args.repeat)
    if args.size > 0:
        with tempfile.TemporaryDirectory() as tmp:
            dst = args.keep or os.path.join(tmp, "replicated.pcap")
            t = time.perf_counter()
            n = replicate(args.source, dst, int(args.size * 1e6))
            print(f"(replicated {Path(args.source).name} into {n} frames in {time.perf_counter() - t:.1f} s)")
            bench(dst, tshark=not args.no_tshark, repeat=args.repeat)
            for name in args.transform:
                from wmiscope.synth import sensor
                moved = os.path.join(tmp, f"replicated-{name}.pcap")
                n = sensor.transform_capture(dst, moved, *sensor.steps(name))
                print(f"(rewritten as '{name}': {n} frames)")
                bench(moved, tshark=not args.no_tshark, repeat=args.repeat)
                os.unlink(moved)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
