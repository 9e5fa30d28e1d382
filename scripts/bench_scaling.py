#!/usr/bin/env python3
"""How the host-pair split scales, measured in CPU seconds (robust to a loaded machine).

    python scripts/bench_scaling.py CAPTURE [--shards 1,2,4] [--command calls|transcript] [--format jsonl|table]

For each N it runs every shard of an N-way split one after the other in this process
(dissectors.parallel.shard_stream, rendering as the command does) and times each with
the CPU clock, then the merge of their outputs. With N idle cores the wall time of a
split run is about the slowest shard plus the merge (the shards run side by side and
the merge streams behind them), so the table gives that critical path, the speed-up it
means against one process, and the CPU the split spends in all (each shard reads and
reassembles the whole capture). Wall-clock figures on a shared machine measure the
machine's load as much as the program; these do not.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from wmiscope.commands.workers import renderer_factory  # noqa: E402
from wmiscope.dissectors import parallel  # noqa: E402
from wmiscope.dissectors.pipeline import Analysis  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("capture")
    ap.add_argument("--shards", default="1,2,4")
    ap.add_argument("--command", default="calls", choices=("calls", "transcript"))
    ap.add_argument("--format", default="jsonl", choices=("jsonl", "table"))
    args = ap.parse_args(argv)
    opts = argparse.Namespace(format=args.format, no_errors=False, frames=False, mof=False, all=True,
                              no_operations=False)
    kwargs = {"objects": args.format == "jsonl"} if args.command == "calls" else {"want_pdus": True}
    make = renderer_factory(args.command, opts)
    mb = os.path.getsize(args.capture) / 1e6

    t = time.process_time()
    render = make()
    size = 0
    for rec in Analysis(**kwargs).run(args.capture):
        size += len(render(rec).encode("utf-8", "surrogatepass"))
    single = time.process_time() - t
    print(f"{Path(args.capture).name} ({mb:.0f} MB), {args.command} {args.format}: one process {single:.2f} s CPU "
          f"({mb / single:.1f} MB/s)")
    print("| shards | slowest shard s | merge s | critical path s | speed-up with N idle cores | MB/s | CPU in all |")
    print("|---|---|---|---|---|---|---|")
    for n in (int(x) for x in args.shards.split(",")):
        times, outs = [], []
        for k in range(n):
            t = time.process_time()
            outs.append(list(parallel.shard_stream(args.capture, k, n, "x", dict(kwargs), make)))
            times.append(time.process_time() - t)
        t = time.process_time()
        merged = sum(len(x.encode("utf-8", "surrogatepass")) if type(x) is str else len(x)
                     for x in parallel.merge_bytes(outs, "x"))
        merge = time.process_time() - t
        assert merged == size, "the split's output differs in size from one process's"
        path = max(times) + merge
        print(f"| {n} | {max(times):.2f} | {merge:.2f} | {path:.2f} | {single / path:.2f} | {mb / path:.1f} "
              f"| {(sum(times) + merge) / single:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
