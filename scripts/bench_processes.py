#!/usr/bin/env python3
"""CPU seconds of each process of a real split run: the parent (coordinator) and every worker.

    python scripts/bench_processes.py CAPTURE [--command calls|transcript] [--format jsonl|table]
                                      [--workers 2] [--rounds 3] [--baseline TREE]

Runs `wmiscope COMMAND CAPTURE --workers N > /dev/null` --rounds times, each in a fresh
interpreter, and prints the medians of the parent's CPU (all of it: start-up, the fork,
receiving, merging and writing the workers' text; and the part after the workers were
forked), of each worker's, and of the process that reads the capture for them (none
before dissectors.routed, and none for a capture set of several files). A baseline tree
run from PYTHONPATH starts up slower than an installed checkout (0.25-0.38 s against
0.13-0.17 s of imports and parser compilation here): compare the parent's part after the
fork. Besides CPU it gives each worker's wall time
and the wall time it spent handing its batches to the parent (writing them, and waiting
while its pipe was full because the merge waited for another shard), and how often it
slept (voluntary context switches: a worker reading a capture from the page cache and
computing sleeps only on a full pipe). Wall time on a loaded machine counts the load
too; the sleeps do not. Last, the parent's wall time after the fork and the octets it
set aside in temporary files (a worker far ahead of the merge). With --baseline
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
    # Wall time a worker spends handing its batches over (writing, and waiting for the
    # parent to drain its pipe): the blocking writes of `_send` in older trees, `_Outbox.send`.
    owner = parallel._Outbox if hasattr(parallel, "_Outbox") else parallel
    send = owner.send if owner is not parallel else parallel._send
    blocked = [0.0]

    def timed_send(*args, **kwargs):
        t = time.perf_counter()
        try:
            send(*args, **kwargs)
        finally:
            blocked[0] += time.perf_counter() - t

    def timed_child(*args, **kwargs):
        t = time.perf_counter()
        try:
            child(*args, **kwargs)
        finally:
            with open(f"{out}.worker{args[2]}", "w") as f:
                import resource
                sleeps = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
                f.write(repr((time.process_time(), blocked[0], time.perf_counter() - t, sleeps)))

    setattr(owner, "send" if owner is not parallel else "_send", timed_send)

    parallel._child = timed_child
    router = getattr(parallel, "_router", None)
    if router is not None:
        # The process that reads the capture once for every shard (dissectors.routed).
        def timed_router(*args, **kwargs):
            t = time.perf_counter()
            try:
                router(*args, **kwargs)
            finally:
                import resource
                with open(f"{out}.router", "w") as f:
                    f.write(repr((time.process_time(), 0.0, time.perf_counter() - t,
                                  resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw)))

        parallel._router = timed_router
    started = []
    init = parallel.LocalRun.__init__

    def timed_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        started.append((time.process_time(), time.perf_counter()))

    parallel.LocalRun.__init__ = timed_init
    spilled = [0]
    if hasattr(parallel, "_Inbox"):
        put = parallel._Inbox._put

        def counted_put(self, more, meta, blob, memory):
            before = self.spilled
            put(self, more, meta, blob, memory)
            spilled[0] += max(0, self.spilled - before)

        parallel._Inbox._put = counted_put
    sys.stderr.write(f"bench_processes: running {Path(parallel.__file__).parents[1]}\n")
    sys.stdout.flush()
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    cli.main(argv)
    sys.stdout.flush()
    with open(f"{out}.parent", "w") as f:
        end, wall = time.process_time(), time.perf_counter()
        f.write(repr((end, end - started[0][0], wall - started[0][1], spilled[0])))


def one_run(tree: Path | None, argv: list[str], workers: int) -> tuple:
    # Imported here, not in the measured interpreter: bench_corpus puts this checkout
    # first on sys.path, which would shadow the baseline.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_compare import baseline_env
    env = baseline_env(tree) if tree is not None else None
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "cpu")
        subprocess.run([sys.executable, __file__, "--driver", out, "--", *argv], check=True, env=env)
        parent = eval(Path(f"{out}.parent").read_text())
        shards = [eval(Path(f"{out}.worker{k}").read_text()) for k in range(workers)]
        reader = Path(f"{out}.router")
        shards.append(eval(reader.read_text()) if reader.exists() else (0.0, 0.0, 0.0, 0))
    return parent, shards


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
    print("| tree | parent CPU s | of it, after the fork s | parent wall after the fork s | spilled MB | "
          + " | ".join(f"worker {k} CPU s | worker {k} wall s | worker {k} in its writes, wall s | worker {k} sleeps"
                       for k in range(args.workers))
          + " | reading process CPU s | all CPU s |")
    print("|---|---|---|---|---|" + "---|---|---|---|" * args.workers + "---|---|")
    for name, rows in runs.items():
        med = statistics.median
        cells = [med(r[0][0] for r in rows), med(r[0][1] for r in rows), med(r[0][2] for r in rows),
                 med((r[0][3] if len(r[0]) > 3 else 0) / 1e6 for r in rows)]
        for k in range(args.workers):
            cells += [med(r[1][k][0] for r in rows), med(r[1][k][2] for r in rows), med(r[1][k][1] for r in rows),
                      med(r[1][k][3] for r in rows)]
        cells.append(med(r[1][args.workers][0] for r in rows))
        cells.append(med(r[0][0] + sum(w[0] for w in r[1]) for r in rows))
        print(f"| {name} | " + " | ".join(f"{x:.3f}" if type(x) is float else str(x) for x in cells) + " |")
    print(json.dumps({name: rows for name, rows in runs.items()}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
