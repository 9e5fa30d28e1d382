#!/usr/bin/env python3
"""Benchmark corpora that do not flatter a cache: real sessions, replicated with names varied.

    python scripts/bench_corpus.py WORKLOAD DST --size MB
    WORKLOAD: objects (wmimplant), sealed (LM_WMI_ProcessCallCreate), mix (every real WMI capture)

Each copy of a source capture gets its own IPv4 addresses (10.0.0.0/8, so copies never
share a connection or a host pair) and its own time, and every host, domain and user name
the source carries is rewritten, in ASCII and in UTF-16LE, case-insensitively, into a
name of the same length that is unique to the copy. Equal lengths keep every NDR count,
MS-WMIO heap offset and ASN.1 length valid; the names sit inside the objects (`__SERVER`,
`__PATH`, string bindings, Kerberos principals), so no two copies carry an equal object
and a cache keyed by an object's bytes sees only real repetition (class parts, which every
instance of a class carries), as in a real incident.

TCP checksums are not recomputed (neither wmiscope nor tshark checks them by default).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAPTURES = ROOT.parent / "shared" / "captures"
sys.path.insert(0, str(ROOT))
from wmiscope.dissectors.capture import open_capture  # noqa: E402
from wmiscope.synth.wire import PcapWriter  # noqa: E402

# The names each real capture carries (its README and tshark show them); all are varied.
NAMES = {
    "wmimplant.pcap": ["SnickleFritz", "picklesworth"],
    "LM_WMI_ProcessCallCreate.pcapng": ["01566s-win16-ir", "02694W-WIN10", "lgreen"],
    "wmiexecpro-create-start-service.pcap": ["SnickleFritz", "picklesworth"],
    "invoke-wmiexec.pcap": ["SnickleFritz", "picklesworth"],
    "impacket_wmiexec.pcapng": ["WIN-KCBVCO95HFV"],
    "covenant_sharpwmi_dcerpc_wmi_execquery_execmethod.cap": [],
}

WORKLOADS = {
    "objects": ["wmimplant.pcap"],
    "sealed": ["LM_WMI_ProcessCallCreate.pcapng"],
    "mix": ["wmimplant.pcap", "LM_WMI_ProcessCallCreate.pcapng", "wmiexecpro-create-start-service.pcap",
            "invoke-wmiexec.pcap", "impacket_wmiexec.pcapng",
            "covenant_sharpwmi_dcerpc_wmi_execquery_execmethod.cap"],
}

_DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _tag(n: int, width: int) -> str:
    out = ""
    for _ in range(width):
        n, r = divmod(n, 36)
        out = _DIGITS[r] + out
    return out


def variant(name: str, copy: int) -> str:
    """name with its tail replaced by copy's number (same length, first letter kept)."""
    width = min(len(name) - 1, 6)
    return name[: len(name) - width] + _tag(copy, width)


class _Source:
    """One capture's frames as templates, and the rewriting of a copy of them."""

    def __init__(self, path: Path):
        frames = [f for f in open_capture(path) if f[2] == 1]
        self.t0 = frames[0][1]
        self.span = frames[-1][1] - self.t0 + 1.0
        self.frames = [(ts - self.t0, data) for _, ts, _, data in frames]
        self.hosts: dict[bytes, int] = {}
        for _, data in self.frames:
            if len(data) >= 34 and data[12:14] == b"\x08\x00":
                for a in (data[26:30], data[30:34]):
                    self.hosts.setdefault(a, len(self.hosts))
        self.names = NAMES.get(path.name, [])
        alts = []
        for name in self.names:
            for enc in ("ascii", "utf-16-le"):
                alts.append(re.escape(name.encode(enc)))
        self.pattern = re.compile(b"|".join(alts), re.I) if alts else None
        self.bytes = sum(16 + len(d) for _, d in self.frames)

    def copy(self, index: int):
        """(relative ts, frame bytes) of copy number index."""
        base = 0x0A000000 + (index * 256) % (1 << 24)
        mapped = {a: (base + k + 1).to_bytes(4, "big") for a, k in self.hosts.items()}
        memo: dict[bytes, bytes] = {}

        def repl(m):
            s = m.group(0)
            got = memo.get(s)
            if got is None:
                wide = len(s) > 1 and s[1] == 0
                enc = "utf-16-le" if wide else "ascii"
                text = s.decode(enc)
                new = "".join(c.lower() if o.islower() else c for c, o in zip(variant(text.upper(), index), text))
                got = memo[s] = new.encode(enc)
            return got

        for rel, data in self.frames:
            if len(data) >= 34 and data[12:14] == b"\x08\x00":
                data = data[:26] + mapped[data[26:30]] + mapped[data[30:34]] + data[34:]
            if self.pattern is not None:
                data = self.pattern.sub(repl, data)
            yield rel, data


def build(workload: str, dst, target_bytes: int, captures: Path = CAPTURES) -> dict:
    """Writes dst (classic pcap) from the workload's sources until it holds target_bytes."""
    sources = [_Source(captures / name) for name in WORKLOADS[workload]]
    size = 24
    copy = 0
    t = min(s.t0 for s in sources)
    with PcapWriter(dst, 1) as out:
        while size < target_bytes:
            for src in sources:
                for rel, data in src.copy(copy):
                    out.write(t + rel, data)
                t += src.span
                size += src.bytes
            copy += 1
    return {"frames": out.frames, "copies": copy, "bytes": size}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload", choices=sorted(WORKLOADS))
    ap.add_argument("dst")
    ap.add_argument("--size", type=float, default=200.0, help="MB (default 200)")
    args = ap.parse_args(argv)
    t = time.perf_counter()
    info = build(args.workload, args.dst, int(args.size * 1e6))
    print(f"{args.dst}: {info['bytes'] / 1e6:.0f} MB, {info['frames']} frames, {info['copies']} copies "
          f"in {time.perf_counter() - t:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
