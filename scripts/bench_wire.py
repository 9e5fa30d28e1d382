#!/usr/bin/env python3
"""The wire engine end to end against tshark, on the same file in the same run.

    python scripts/bench_wire.py [--size MB] [--source CAPTURE] [--keep PATH]

Builds a capture of at least --size MB (default 1024) of real WMI sessions by
replaying a real capture with rewritten addresses and ports (bench_capture's
replicate()), then times, one after the other on that file:

    wmiscope calls FILE > /dev/null                  (the table: calls named and paired)
    wmiscope calls FILE --format jsonl > /dev/null   (every parameter and object decoded)
    tshark -r FILE -Y dcerpc -T fields -e frame.number -e dcerpc.cn_call_id -e dcerpc.opnum

and reports wall time, MB/s, the ratio (ours / tshark's: <= 1.0 means we are at
least as fast) and each process's peak resident memory. A script, not a test:
it takes minutes and its figures depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_capture import DEFAULT_SOURCE, replay, tshark_command  # noqa: E402


def timed(cmd: list[str]) -> tuple[float, int, int]:
    """(seconds, peak RSS in KiB, exit status) of one child, measured by wait4."""
    start = time.perf_counter()
    with open(os.devnull, "wb") as null:
        proc = subprocess.Popen(cmd, stdout=null, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - start, usage.ru_maxrss, os.waitstatus_to_exitcode(status)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024, help="size of the synthetic capture in MB (default 1024)")
    ap.add_argument("--source", default=str(DEFAULT_SOURCE), help="real capture to replay")
    ap.add_argument("--keep", help="write the synthetic capture here and keep it")
    args = ap.parse_args(argv)

    wmiscope = shutil.which("wmiscope") or str(Path(sys.executable).parent / "wmiscope")
    path, tmpdir = replay(args.keep, args.size, args.source, "wire-bench.pcap")
    size_mb = path.stat().st_size / 1e6

    runs = {
        "wmiscope calls": [wmiscope, "calls", str(path)],
        "calls --jsonl": [wmiscope, "calls", str(path), "--format", "jsonl"],
        "tshark": tshark_command(path),
    }
    results = {}
    for name, cmd in runs.items():
        seconds, rss_kib, code = timed(cmd)
        results[name] = seconds
        print(f"{name:<15} {seconds:8.1f} s  {size_mb / seconds:7.1f} MB/s  peak RSS {rss_kib / 1024:7.0f} MB"
              f"{'' if code == 0 else f'  (exit {code})'}")
    for name in ("wmiscope calls", "calls --jsonl"):
        print(f"ratio {name} / tshark: {results[name] / results['tshark']:.2f}  (<= 1.0 is the goal)")
    if tmpdir:
        tmpdir.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
