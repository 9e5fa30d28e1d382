#!/usr/bin/env python3
"""What the Wireshark plugin costs tshark, on the same capture in the same run.

    python scripts/bench_wireshark_plugin.py [--size MB] [--source CAPTURE] [--keep PATH] [--repeat N]

Builds a capture of --size MB (default 200) of real WMI sessions by replaying a real
capture with rewritten addresses (bench_capture's replicate(), as bench_wire.py does),
then times tshark reading it, one summary line per frame (the Info column, which the
plugin fills for every WMI call), without and with wireshark_lua/wmiscope.lua:

    tshark -r FILE > /dev/null
    tshark -X lua_script:wireshark_lua/wmiscope.lua -r FILE > /dev/null

and the same under the private Wireshark 4.4 (.tshark44/, from scripts/tshark44.sh) when
it is there, where the plugin is copied into the global Lua plugin folder for the run.
Reports seconds, MB/s and the ratio with / without (the goal: at most 1.5). The best of
--repeat runs counts. A script, not a test: its figures depend on the machine and its load.
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
from bench_capture import DEFAULT_SOURCE, replay  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "wireshark_lua" / "wmiscope.lua"
TSHARK44 = ROOT / ".tshark44" / "tshark"


def run(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of one child, measured by wait4."""
    start = time.perf_counter()
    with open(os.devnull, "wb") as null:
        proc = subprocess.Popen(cmd, stdout=null, stderr=subprocess.DEVNULL)
        _, _, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime


def best(cmd: list[str], repeat: int) -> tuple[float, float]:
    """The best wall time and the best CPU time of `repeat` runs (CPU time is what to
    compare on a loaded machine: other processes stretch the wall clock, not the CPU time)."""
    runs = [run(cmd) for _ in range(repeat)]
    return min(w for w, _ in runs), min(c for _, c in runs)


def global_lua_folder(tshark: str) -> Path | None:
    out = subprocess.run([tshark, "-G", "folders"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("Global Lua Plugins"):
            return Path(line.split(":", 1)[1].strip())
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=200, help="size of the replayed capture in MB (default 200)")
    ap.add_argument("--source", default=str(DEFAULT_SOURCE), help="real capture to replay")
    ap.add_argument("--keep", help="write the replayed capture here and keep it")
    ap.add_argument("--repeat", type=int, default=2, help="runs per variant; the best counts")
    args = ap.parse_args(argv)

    path, tmpdir = replay(args.keep, args.size, args.source, "plugin-bench.pcap")
    size_mb = path.stat().st_size / 1e6

    def report(label: str, without, with_) -> None:
        (w0, c0), (w1, c1) = without, with_
        print(f"{label}: without {w0:6.1f} s wall {c0:6.1f} s CPU ({size_mb / w0:5.1f} MB/s)   "
              f"with the plugin {w1:6.1f} s wall {c1:6.1f} s CPU ({size_mb / w1:5.1f} MB/s)   "
              f"ratio {w1 / w0:.2f} wall, {c1 / c0:.2f} CPU (goal <= 1.5)")

    tshark = shutil.which("tshark")
    if tshark:
        without = best([tshark, "-r", str(path)], args.repeat)
        with_ = best([tshark, "-X", f"lua_script:{PLUGIN}", "-r", str(path)], args.repeat)
        report("tshark 4.0", without, with_)
    if TSHARK44.exists():
        folder = global_lua_folder(str(TSHARK44))
        installed = folder / "wmiscope.lua" if folder else None
        if installed and installed.exists():
            installed.unlink()
        without = best([str(TSHARK44), "-r", str(path)], args.repeat)
        if installed:
            shutil.copyfile(PLUGIN, installed)
            with_ = best([str(TSHARK44), "-r", str(path)], args.repeat)
            report("tshark 4.4", without, with_)
    if tmpdir:
        tmpdir.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
