#!/usr/bin/env python3
"""wmiscope's commands against tshark on corpora that do not flatter a cache: one table.

    python scripts/bench_speed.py [--size MB] [--workloads objects,sealed,mix] [--runs 3]
                                  [--workers 1,2] [--dir /tmp/wmiscope-bench] [--commands jsonl,table,transcript]

For each workload it builds (once, kept in --dir) a capture of --size MB with
scripts/bench_corpus.py (real sessions, every copy with its own addresses and names),
then runs, alternating so that the machine's load hits both alike:

    wmiscope calls F --format jsonl   against  tshark -r F -Y dcerpc -T fields -e frame.number ...
    wmiscope calls F                  against  the same tshark run
    wmiscope transcript F --all       against  tshark -r F -V

and prints one row per (workload, command, workers): the median wall time of --runs runs,
the median of the per-run ratios to tshark's time in the same round (the goals: jsonl and
transcript <= 0.5, table <= 0.35), the peak RSS (the largest process: the coordinator or
one worker), and the class-part cache's hit rate that the run reported (WMISCOPE_CACHE_STATS).
A script, not a test: it takes minutes and its figures depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_corpus  # noqa: E402
from bench_capture import tshark_command  # noqa: E402

GOALS = {"jsonl": 0.5, "table": 0.35, "transcript": 0.5}
_HITS = re.compile(rb"wmiscope cache: objects (\d+) hits (\d+) misses, class parts (\d+) hits (\d+) misses")


def timed(cmd: list[str], env=None) -> tuple[float, float, bytes, float]:
    """(seconds, peak RSS in MB, stderr, CPU seconds) of one child (and the workers it
    waited for), measured by wait4."""
    start = time.perf_counter()
    with open(os.devnull, "wb") as null, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=null, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        err.seek(0)
        text = err.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {text[-500:].decode(errors='replace')}")
    return seconds, usage.ru_maxrss / 1024, text, usage.ru_utime + usage.ru_stime


def ours(command: str, path: Path, workers: int) -> list[str]:
    exe = shutil.which("wmiscope") or str(Path(sys.executable).parent / "wmiscope")
    base = {"jsonl": ["calls", "--format", "jsonl"], "table": ["calls"], "transcript": ["transcript", "--all"]}
    # workers 0: no --workers option at all (a build that predates it, for a baseline)
    return [exe, *base[command], str(path)] + (["--workers", str(workers)] if workers else [])


def reference(command: str, path: Path) -> list[str]:
    return ["tshark", "-r", str(path), "-V"] if command == "transcript" else tshark_command(path)


def hit_rate(stderr: bytes) -> str:
    """"objects H% of N / class parts H% of N": whole objects by bytes, then class parts."""
    m = _HITS.search(stderr)
    if not m:
        return "-"
    out = []
    for hits, misses in ((int(m.group(1)), int(m.group(2))), (int(m.group(3)), int(m.group(4)))):
        out.append(f"{100 * hits / max(1, hits + misses):.0f}% of {hits + misses}" if hits + misses else "-")
    return " / ".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=float, default=200, help="corpus size in MB (default 200)")
    ap.add_argument("--workloads", default="objects,sealed,mix")
    ap.add_argument("--commands", default="jsonl,table,transcript")
    ap.add_argument("--workers", default="1,2", help="worker counts to run ours with")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default="/tmp/wmiscope-bench", help="where the corpora are built and kept")
    args = ap.parse_args(argv)
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, WMISCOPE_CACHE_STATS="1")
    rows = []
    for workload in args.workloads.split(","):
        path = Path(args.dir) / f"{workload}-{args.size:g}MB.pcap"
        if not path.exists():
            info = bench_corpus.build(workload, path, int(args.size * 1e6))
            print(f"built {path}: {info['frames']} frames, {info['copies']} copies", file=sys.stderr)
        for command in args.commands.split(","):
            for workers in (int(w) for w in args.workers.split(",")):
                walls, ratios, cpu, rss, ref_rss, hits = [], [], [], 0.0, 0.0, "-"
                for _ in range(args.runs):
                    t_ref, r_ref, _, c_ref = timed(reference(command, path))
                    t, r, err, c = timed(ours(command, path, workers), env)
                    walls.append(t)
                    ratios.append(t / t_ref)
                    cpu.append(c / c_ref)
                    rss, ref_rss = max(rss, r), max(ref_rss, r_ref)
                    hits = hit_rate(err)
                row = (workload, command, workers, statistics.median(walls), statistics.median(ratios),
                       min(ratios), max(ratios), statistics.median(cpu), rss, ref_rss, hits)
                rows.append(row)
                print(_fmt(row, path), file=sys.stderr, flush=True)
    print(f"| workload ({args.size:g} MB) | command | workers | wall (median s) | wall ratio to tshark (median; "
          f"min-max) | goal | CPU ratio | peak RSS MB (tshark) | cache hits: objects / class parts |")
    print("|---|---|---|---|---|---|---|---|---|")
    for workload, command, workers, wall, ratio, lo, hi, cpu, rss, ref_rss, hits in rows:
        print(f"| {workload} | {command} | {workers} | {wall:.1f} | {ratio:.2f} ({lo:.2f}-{hi:.2f}) "
              f"| {GOALS[command]} | {cpu:.2f} | {rss:.0f} ({ref_rss:.0f}) | {hits} |")
    return 0


def _fmt(row, path) -> str:
    workload, command, workers, wall, ratio, lo, hi, cpu, rss, ref_rss, hits = row
    return (f"{path.name} {command} workers={workers}: {wall:.1f} s, ratio {ratio:.2f} ({lo:.2f}-{hi:.2f}), "
            f"CPU ratio {cpu:.2f}, RSS {rss:.0f} MB, cache {hits}")


if __name__ == "__main__":
    raise SystemExit(main())
