#!/usr/bin/env python3
"""How the host-pair split scales, measured in CPU seconds (robust to a loaded machine).

    python scripts/bench_scaling.py CAPTURE [--shards 1,2,4] [--command calls|transcript] [--format jsonl|table]
                                    [--rounds 3]

For each N it runs every shard of an N-way split one after the other, each in a process
forked from this one as the workers are (dissectors.parallel.shard_stream, rendering as
the command does, pickling its batches' keys as a worker does: cold caches of decoded
objects, as in a real run), and times each with the CPU clock, then the parent's merge
of their outputs and its writing to /dev/null. One process is timed the same way. With
N idle cores the wall time of a split run is about the slowest shard plus the merge (the
shards run side by side and the merge streams behind them), so the table gives that
critical path, the speed-up it means against one process, and the CPU the split spends
in all (each shard reads and reassembles the whole capture). --rounds repeats it all and
takes each figure's median. Wall-clock figures on a shared machine measure the
machine's load as much as the program; these do not. --together forks the shards of a
split at once, as a real run does: on an idle machine the difference from the default
(one after the other) is what two processes side by side cost each other in CPU.

The shards here each read the whole capture: the split that Dask and capture sets of
several files run. Local workers on one file read it once in a reading process
(dissectors/routed.py), which scripts/bench_processes.py measures.
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from wmiscope.commands.workers import renderer_factory  # noqa: E402
from wmiscope.dissectors import parallel  # noqa: E402
from wmiscope.dissectors.pipeline import Analysis  # noqa: E402
from wmiscope.formats import wmio  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("capture")
    ap.add_argument("--shards", default="1,2,4")
    ap.add_argument("--command", default="calls", choices=("calls", "transcript"))
    ap.add_argument("--format", default="jsonl", choices=("jsonl", "table"))
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--together", action="store_true",
                    help="run the shards of a split at the same time (as the workers run), not one after the other")
    args = ap.parse_args(argv)
    opts = argparse.Namespace(format=args.format, no_errors=False, frames=False, mof=False, all=True,
                              no_operations=False)
    kwargs = {"objects": args.format == "jsonl"} if args.command == "calls" else {"want_pdus": True}
    make = renderer_factory(args.command, opts)
    make()                      # what LocalRun does before it forks the workers
    wmio.compile_parsers()
    mb = os.path.getsize(args.capture) / 1e6
    shards = [int(x) for x in args.shards.split(",")]

    def single():
        render = make()
        size = 0
        for rec in Analysis(**kwargs).run(args.capture):
            size += len(render(rec).encode("utf-8", "surrogatepass"))
        return size

    runs: dict = {}
    for _ in range(args.rounds):
        seconds, size = _forked(single)
        runs.setdefault("single", []).append(seconds)
        for n in shards:
            jobs = [lambda k=k: _shard(args.capture, k, n, kwargs, make) for k in range(n)]
            if args.together:
                results = _forked_together(jobs)
            else:
                results = [_forked(job) for job in jobs]
            times = [seconds for seconds, _ in results]
            outs = [batches for _, batches in results]
            t = time.process_time()
            merged = 0
            with open(os.devnull, "wb") as out:
                for piece in parallel.merge_bytes(outs, "x"):
                    piece = piece.encode("utf-8", "surrogatepass") if type(piece) is str else piece
                    out.write(piece)
                    merged += len(piece)
            merge = time.process_time() - t
            assert merged == size, "the split's output differs in size from one process's"
            runs.setdefault(n, []).append((max(times), merge, sum(times)))
    one = statistics.median(runs["single"])
    print(f"{Path(args.capture).name} ({mb:.0f} MB), {args.command} {args.format}: one process {one:.2f} s CPU "
          f"({mb / one:.1f} MB/s); median of {args.rounds} round(s), each process forked"
          + ("; the shards of a split at once" if args.together else ""))
    print("| shards | slowest shard s | merge s | critical path s | speed-up with N idle cores | MB/s | CPU in all |")
    print("|---|---|---|---|---|---|---|")
    for n in shards:
        slowest = statistics.median(r[0] for r in runs[n])
        merge = statistics.median(r[1] for r in runs[n])
        total = statistics.median(r[2] + r[1] for r in runs[n])
        path = slowest + merge
        print(f"| {n} | {slowest:.2f} | {merge:.2f} | {path:.2f} | {one / path:.2f} | {mb / path:.1f} "
              f"| {total / one:.2f}x |")
    return 0


def _shard(capture, k, n, kwargs, make):
    batches = []
    for items, blob in parallel.shard_stream(capture, k, n, "x", dict(kwargs), make):
        pickle.dumps(items, pickle.HIGHEST_PROTOCOL)         # what a worker sends besides the text
        batches.append((items, blob))
    return batches


def _forked(fn):
    """(CPU seconds, result) of fn() run in a forked child; the result comes back pickled,
    outside the timing."""
    return _forked_together([fn])[0]


def _forked_together(fns):
    """(CPU seconds, result) of each fn() in fns, each run in a child forked at once with the others.

    Two processes side by side on this machine's two cores each take more CPU time for
    the same work than one alone (shared caches and memory bandwidth, or host threads);
    comparing with --together shows how much of a split run's wall time that is."""
    files = [tempfile.TemporaryFile() for _ in fns]
    try:
        pids = []
        for fn, f in zip(fns, files):
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    t = time.process_time()
                    result = fn()
                    seconds = time.process_time() - t
                    pickle.dump((seconds, result), f, pickle.HIGHEST_PROTOCOL)
                    f.flush()
                except BaseException:  # noqa: BLE001
                    import traceback
                    traceback.print_exc()
                    code = 1
                os._exit(code)
            pids.append(pid)
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                raise SystemExit("a forked run failed")
        out = []
        for f in files:
            f.seek(0)
            out.append(pickle.load(f))
        return out
    finally:
        for f in files:
            f.close()


if __name__ == "__main__":
    raise SystemExit(main())
