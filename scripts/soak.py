#!/usr/bin/env python3
"""Soak: one analysis fed an endless generated capture, as a live capture sees it,
with peak memory measured as it goes.

    .venv/bin/python scripts/soak.py [--gb 10] [--every 1] [--seed 7]

The frames are made on the fly, never stored: the sample WMI sessions of pcaps/
replayed again and again, each time from a new client address and port (sessions
start and end), their IPIDs and OXIDs renamed (IPIDs come and go), beside an SMB2
file copy in 60 KB offload-sized frames (most of the octets, as on a real network:
about 180 KB per WMI session), with hostile noise mixed in: random octets to port 135 on connections seen from their middle
that never close, DCE/RPC headers with impossible lengths, requests whose last
fragment never comes, non-TCP frames and frames cut short.

One line per --every GB fed: octets fed, frames, calls, anomalies, the peak RSS so
far and the current RSS. It ends with the ratio of the peak RSS at the end to the
peak at the first report (issue 12 asks: at most 1.2 between 1 GB and 10 GB, and
under 400 MB) and exits 1 when either bound is broken. The machine is shared:
run it with `nice -n 19`.
"""

from __future__ import annotations

import argparse
import random
import resource
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PCAPS = ROOT / "pcaps"
SAMPLES = ("wmi-process-create.pcap", "spec-4.2.3.1-sync-execquery-execmethod.pcap", "wmi-refresher.pcap",
           "wmi-async-query-callbacks.pcap", "wmi-persistence-subscription.pcap",
           "spec-4.3.3.2-semisync-put-delete-enum.pcap", "wmi-process-create-ntlm-sealed.pcap")


def _templates():
    """Each sample as (frames, the 16-octet IPIDs / 8-octet OXIDs found in it)."""
    from wmiscope.dissectors.capture import open_capture
    from wmiscope.dissectors.pipeline import Analysis
    from wmiscope.dissectors.records import Call

    out = []
    for name in SAMPLES:
        path = PCAPS / name
        frames = [data for _, _, linktype, data in open_capture(path) if linktype == 1]
        analysis = Analysis(objects=False)
        for _ in analysis.run(path):
            pass
        import uuid
        ids = [uuid.UUID(i).bytes_le for i in analysis.registry.ipids]
        ids += [struct.pack("<Q", o) for o in analysis.registry.oxids]
        out.append((frames, [i for i in ids if any(i in f for f in frames)]))
    return out


def _session(frames, ids, n: int) -> list[bytes]:
    """A template's frames as session n: client address and ports, IPIDs and OXIDs renamed."""
    client = bytes((10, (n >> 16) & 255, (n >> 8) & 255, n & 255))
    tag = struct.pack("<I", n * 2654435761 & 0xFFFFFFFF)
    renames = [(i, i[:-4] + bytes(a ^ b for a, b in zip(i[-4:], tag))) for i in ids]
    first_src = frames[0][26:30]
    out = []
    for f in frames:
        if len(f) < 38 or f[12:14] != b"\x08\x00":
            continue
        f = bytearray(f)
        if f[26:30] == first_src:           # client -> server
            f[26:30] = client
            sport = struct.unpack_from("!H", f, 34)[0]
            struct.pack_into("!H", f, 34, 1024 + (sport + n * 7) % 60000)
        else:
            f[30:34] = client
            dport = struct.unpack_from("!H", f, 36)[0]
            struct.pack_into("!H", f, 36, 1024 + (dport + n * 7) % 60000)
        b = bytes(f)
        for old, new in renames:
            if old in b:
                b = b.replace(old, new)
        out.append(b)
    return out


def _tcp_frame(src: bytes, sport: int, dst: bytes, dport: int, seq: int, payload: bytes, flags: int = 0x18) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, 1, 5 << 4, flags, 65535, 0, 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0, src, dst) + tcp
    return b"\x00\x11\x22\x33\x44\x55\x00\x66\x77\x88\x99\xaa\x08\x00" + ip


def _noise(rnd: random.Random, n: int) -> list[bytes]:
    """One burst of hostile traffic; the connections that have one end with a FIN, but
    the random octets' (which stay open until evicted)."""
    burst = _hostile(rnd, n)
    if n % 5 in (1, 2, 4):
        src = bytes((172, 16, (n >> 8) & 255, n & 255))
        last = burst[-1]
        burst.append(_tcp_frame(src, 1024 + n % 60000, bytes((172, 17, 0, 1)), struct.unpack_from("!H", last, 36)[0],
                                struct.unpack_from("!I", last, 38)[0] + len(last) - 54, b"", 0x11))
    return burst


def _hostile(rnd: random.Random, n: int) -> list[bytes]:
    src = bytes((172, 16, (n >> 8) & 255, n & 255))
    dst = bytes((172, 17, 0, 1))
    sport = 1024 + n % 60000
    kind = n % 5
    if kind == 0:       # random octets to port 135, seen from the middle, never closed
        return [_tcp_frame(src, sport, dst, 135, 1000 + i * 1400, rnd.randbytes(1400)) for i in range(8)]
    if kind == 1:       # headers with impossible frag_len, back to back
        bad = b"\x05\x00\x00\x03\x10\x00\x00\x00\x08\x00\x00\x00" + bytes(4)
        return [_tcp_frame(src, sport, dst, 135, 1000 + i * 16 * 80, bad * 80) for i in range(4)]
    if kind == 2:       # a request whose fragments never set PFC_LAST_FRAG
        frags = []
        for i in range(12):
            stub = rnd.randbytes(1024)
            hdr = struct.pack("<BBBB4sHHIIHH", 5, 0, 0, 0x01 if i == 0 else 0, b"\x10\0\0\0", 24 + len(stub), 0,
                              7, len(stub), 0, 3)
            frags.append(hdr + stub)
        seq = 5000
        out = []
        for frag in frags:
            out.append(_tcp_frame(src, sport, dst, 135, seq, frag))
            seq += len(frag)
        return out
    if kind == 3:       # not TCP, and frames cut short
        udp = b"\x00\x11\x22\x33\x44\x55\x00\x66\x77\x88\x99\xaa\x08\x00" + struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 28, 1, 0, 64, 17, 0, src, dst) + bytes(8)
        return [udp, _tcp_frame(src, sport, dst, 135, 1, rnd.randbytes(200))[:40]]
    # an SMB2 flow seen from its middle
    smb = struct.pack(">I", 68) + b"\xfeSMB" + rnd.randbytes(64)
    return [_tcp_frame(src, sport, dst, 445, 1 + i * len(smb), smb) for i in range(6)]


def _bulk(rnd: random.Random, n: int) -> list[bytes]:
    """The traffic beside WMI that makes up most octets: an SMB2 file copy seen from its
    middle, in frames as large as a capturing host's segmentation offload makes them."""
    src, dst = bytes((192, 168, (n >> 8) & 255, n & 255)), bytes((192, 168, 255, 1))
    block = rnd.randbytes(4096) * 15
    port = 1024 + n % 60000
    return [_tcp_frame(dst, 445, src, port, 7 + i * len(block), block) for i in range(3)] + [
        _tcp_frame(dst, 445, src, port, 7 + 3 * len(block), b"", 0x11),
        _tcp_frame(src, port, dst, 445, 1, b"", 0x11)]


def frames(total_bytes: int, seed: int = 7, counter: list | None = None):
    """RawFrames of an endless capture, until total_bytes of frames were made;
    counter[0] holds the octets made so far."""
    rnd = random.Random(seed)
    templates = _templates()
    counter = counter if counter is not None else [0]
    frame = 0
    ts = 1_700_000_000.0
    n = 0
    while counter[0] < total_bytes:
        frames_, ids = templates[n % len(templates)]
        burst = _session(frames_, ids, n) + _bulk(rnd, n)
        if n % 3 == 0:
            burst += _noise(rnd, n // 3)
        for data in burst:
            frame += 1
            ts += 0.0001
            counter[0] += len(data)
            yield frame, ts, 1, data
        n += 1


def rss_mb() -> tuple[float, float]:
    """(peak, current) resident set size of this process in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open("/proc/self/statm") as f:
        current = int(f.read().split()[1]) * resource.getpagesize() / (1 << 20)
    return peak, current


def soak(total_bytes: int, every: int, seed: int = 7, out=sys.stdout) -> list[tuple]:
    """Runs the soak; returns the reports (octets fed, frames, calls, anomalies, peak MB, current MB)."""
    from wmiscope.dissectors.pipeline import Analysis

    analysis = Analysis()
    counter = [0]
    reports = []
    next_mark = every
    t0 = time.monotonic()
    for _ in analysis.run(frames(total_bytes, seed, counter)):
        if counter[0] >= next_mark:
            next_mark += every
            s = analysis.stats
            peak, cur = rss_mb()
            reports.append((counter[0], s.frames, s.calls, sum(s.anomalies.values()), peak, cur))
            out.write(f"{counter[0] / 1e9:8.2f} GB  {s.frames:>11} frames  {s.calls:>9} calls  "
                      f"{sum(s.anomalies.values()):>9} anomalies  peak RSS {peak:7.1f} MB  now {cur:7.1f} MB  "
                      f"{counter[0] / 1e6 / (time.monotonic() - t0):6.1f} MB/s\n")
            out.flush()
    return reports


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gb", type=float, default=10.0, help="octets of frames to feed, in GB (default 10)")
    ap.add_argument("--every", type=float, default=1.0, help="report every this many GB (default 1)")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    reports = soak(int(args.gb * 1e9), int(args.every * 1e9), args.seed)
    if len(reports) < 2:
        return 0
    first, last = reports[0][4], reports[-1][4]
    ok = last <= 1.2 * first and last < 400
    print(f"peak RSS {first:.1f} MB at {reports[0][0] / 1e9:.2f} GB, {last:.1f} MB at {reports[-1][0] / 1e9:.2f} GB: "
          f"ratio {last / first:.3f} ({'flat' if ok else 'NOT flat'}: bound 1.2x and 400 MB)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
