#!/usr/bin/env python3
"""What the merge's waiting costs a split run, from each shard's own CPU clock (load-robust).

    python scripts/bench_lockstep.py CAPTURE [--shards 2] [--format jsonl|table] [--ahead 2,16,64,inf]

Runs each shard of an N-way split alone in a process forked as the workers are (cold
caches, as scripts/bench_scaling.py does) and notes, for every batch it hands over, the
shard's CPU time, the keys of its first and last record and its size. Then it replays
the run on N idle cores: each shard computes at its own recorded pace, and the merge
can take a batch of one shard only once every other shard has handed over a batch
reaching its last key. A shard may run `ahead` MB of output beyond what the merge has
taken (what its pipe and the parent hold), and waits past that. The table gives the
replayed wall time for each bound against the slowest shard alone (no waiting): the
time lost to the shards running in lockstep, where one shard's heavy stretch of the
capture coincides with another's light one. About 2 MB was the bound before the parent
read every worker's pipe while waiting (a 1 MB pipe, a batch of up to 1 MB held by the
parent and one being written); `inf` is the parent that sets aside what it cannot merge yet.

The shards here each read the whole capture: the split that Dask and capture sets of
several files run. Local workers on one file read it once in a reading process
(dissectors/routed.py), which scripts/bench_processes.py measures.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from bisect import bisect_right
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scaling import _forked  # noqa: E402

from wmiscope.commands.workers import renderer_factory  # noqa: E402
from wmiscope.dissectors import parallel  # noqa: E402
from wmiscope.formats import wmio  # noqa: E402


def trace(capture, k, n, kwargs, make):
    """(CPU seconds when handed over, first key, last key, octets) of each of shard k's batches."""
    import pickle
    rows = []
    for items, blob in parallel.shard_stream(capture, k, n, "x", dict(kwargs), make):
        pickle.dumps(items, pickle.HIGHEST_PROTOCOL)
        rows.append((time.process_time(), items[0][0], items[-1][0], len(blob) + 64 * len(items)))
    return rows


def replay(traces: list[list], ahead: float, step: float = 0.002) -> float:
    """Wall seconds of the shards on idle cores, each waiting while more than `ahead` octets
    of its batches are handed over but not yet taken by the merge."""
    n = len(traces)
    cpu = [0.0] * n                                 # each shard's CPU clock so far
    sent = [0] * n                                  # batches handed over
    taken = [0] * n                                 # batches the merge has taken
    last_keys = [[row[2] for row in t] for t in traces]
    ends = [[row[0] for row in t] for t in traces]
    sizes = [[row[3] for row in t] for t in traces]
    wall = 0.0
    done = [False] * n
    while not all(done):
        wall += step
        for i in range(n):
            if done[i]:
                continue
            held = sum(sizes[i][taken[i]:sent[i]])
            if held > ahead:
                continue                            # waits for the merge
            cpu[i] += step
            while sent[i] < len(ends[i]) and ends[i][sent[i]] <= cpu[i]:
                sent[i] += 1
            if sent[i] == len(ends[i]):
                done[i] = True
        for i in range(n):
            # the merge takes shard i's batches whose last key every other shard has reached
            reach = None
            for j in range(n):
                if j != i and not done[j]:
                    key = last_keys[j][sent[j] - 1] if sent[j] else (-1,)
                    reach = key if reach is None else min(reach, key)
            if reach is None:
                taken[i] = sent[i]
            else:
                taken[i] = max(taken[i], min(sent[i], bisect_right(last_keys[i], reach)))
    return wall


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("capture")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--format", default="jsonl", choices=("jsonl", "table"))
    ap.add_argument("--ahead", default="2,16,64,inf", help="MB of output a shard may run ahead of the merge")
    args = ap.parse_args(argv)
    import argparse as ap_
    opts = ap_.Namespace(format=args.format, no_errors=False, frames=False, mof=False, all=True, no_operations=False)
    kwargs = {"objects": args.format == "jsonl"}
    make = renderer_factory("calls", opts)
    make()
    wmio.compile_parsers()
    traces = [_forked(lambda k=k: trace(args.capture, k, args.shards, kwargs, make))[1] for k in range(args.shards)]
    slowest = max(t[-1][0] for t in traces)
    print(f"{Path(args.capture).name}, calls {args.format}, {args.shards} shards: CPU of each "
          + ", ".join(f"{t[-1][0]:.2f} s ({len(t)} batches)" for t in traces))
    print("| a shard may run ahead by | replayed wall s | lost to waiting s | of the slowest shard |")
    print("|---|---|---|---|")
    for a in args.ahead.split(","):
        ahead = math.inf if a == "inf" else float(a) * 1e6
        wall = replay(traces, ahead)
        print(f"| {a} MB | {wall:.2f} | {wall - slowest:.2f} | {(wall - slowest) / slowest:.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
