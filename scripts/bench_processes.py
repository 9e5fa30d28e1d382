#!/usr/bin/env python3
"""CPU seconds of each process of a real split run: the parent (coordinator) and every worker.

    python scripts/bench_processes.py CAPTURE [--command calls|transcript] [--format jsonl|table]
                                      [--workers 2] [--rounds 3] [--baseline TREE]

Runs `wmiscope COMMAND CAPTURE --workers N > /dev/null` --rounds times, each in a fresh
interpreter, and prints the medians of the parent's CPU (all of it: start-up, the fork,
receiving, merging and writing the workers' text; and the part after the workers were
forked) and of each worker's. A baseline tree run from PYTHONPATH starts up slower than
an installed checkout (0.25-0.38 s against 0.13-0.17 s of imports and parser
compilation here): compare the parent's part after the fork. With --baseline
(an unpacked source tree, as for bench_compare.py) every round runs the baseline too,
the two in the opposite order every other round, so that the machine's load hits both
alike. CPU seconds of one process, unlike wall time, do not count the time a loaded
machine keeps it waiting; what the parent spends is taken from the workers' cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path



def driver(argv: list[str], out: str) -> None:
    """In the measured interpreter: the command, with each worker writing its CPU to `out`."""
    import time

    from wmiscope import cli
    from wmiscope.dissectors import parallel

    child = parallel._child

    def timed_child(*args, **kwargs):
        try:
            child(*args, **kwargs)
        finally:
            with open(f"{out}.worker{args[2]}", "w") as f:
                f.write(repr(time.process_time()))

    parallel._child = timed_child
    started = []
    init = parallel.LocalRun.__init__

    def timed_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        started.append(time.process_time())

    parallel.LocalRun.__init__ = timed_init
    sys.stderr.write(f"bench_processes: running {Path(parallel.__file__).parents[1]}\n")
    sys.stdout.flush()
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    cli.main(argv)
    sys.stdout.flush()
    with open(f"{out}.parent", "w") as f:
        end = time.process_time()
        f.write(repr((end, end - started[0])))


def one_run(tree: Path | None, argv: list[str], workers: int) -> tuple[float, list[float]]:
    # Imported here, not in the measured interpreter: bench_corpus puts this checkout
    # first on sys.path, which would shadow the baseline.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_compare import baseline_env
    env = baseline_env(tree) if tree is not None else None
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "cpu")
        subprocess.run([sys.executable, __file__, "--driver", out, "--", *argv], check=True, env=env)
        parent, merging = eval(Path(f"{out}.parent").read_text())
        shards = [float(Path(f"{out}.worker{k}").read_text()) for k in range(workers)]
    return parent, merging, shards


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--driver"]:
        driver(argv[3:], argv[1])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("capture")
    ap.add_argument("--command", default="calls", choices=("calls", "transcript"))
    ap.add_argument("--format", default="jsonl", choices=("jsonl", "table"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline", type=Path, help="an unpacked source tree (git archive) run in the same rounds")
    args = ap.parse_args(argv)
    if args.workers < 2:
        raise SystemExit("--workers must be 2 or more: one worker runs in the parent")
    cmd = [args.command, args.capture, "--workers", str(args.workers)]
    cmd += ["--format", args.format] if args.command == "calls" else ["--all"]
    trees = [("this checkout", None)] + ([("baseline", args.baseline)] if args.baseline else [])
    runs: dict[str, list] = {name: [] for name, _ in trees}
    for r in range(args.rounds):
        for name, tree in (trees if r % 2 == 0 else trees[::-1]):
            runs[name].append(one_run(tree, cmd, args.workers))
    load = os.getloadavg()[0]
    print(f"{Path(args.capture).name}, {' '.join(cmd[:1] + cmd[2:])}: medians of {args.rounds} rounds, "
          f"load average {load:.1f} at the end")
    print("| tree | parent CPU s | of it, after the fork s | " + " | ".join(f"worker {k} CPU s" for k in range(args.workers))
          + " | all CPU s |")
    print("|---|---|---|" + "---|" * args.workers + "---|")
    for name, rows in runs.items():
        parent = statistics.median(r[0] for r in rows)
        merging = statistics.median(r[1] for r in rows)
        shards = [statistics.median(r[2][k] for r in rows) for k in range(args.workers)]
        total = statistics.median(r[0] + sum(r[2]) for r in rows)
        print(f"| {name} | {parent:.3f} | {merging:.3f} | " + " | ".join(f"{x:.3f}" for x in shards)
              + f" | {total:.3f} |")
    print(json.dumps({name: rows for name, rows in runs.items()}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
