#!/usr/bin/env python3
"""Before and after a change, in the same rounds: ratios to tshark of this checkout and a baseline.

    git archive main | tar -x -C /tmp/base
    python scripts/bench_compare.py --baseline /tmp/base [--dir /tmp/wmiscope-bench]
                                    [--workloads objects,sealed,mix] [--commands jsonl,table] [--runs 3]

The corpora are WORKLOAD.pcap in --dir (scripts/bench_corpus.py WORKLOAD DIR/WORKLOAD.pcap
--size MB). Each round runs, per workload and command, tshark once, then this checkout and
the baseline with 1 and 2 workers, the two in the opposite order every other round. The
baseline is an unpacked source tree of the project run with PYTHONPATH (its `formats` and
`dissectors` folders are linked under its `wmiscope/` as the installed package has them).
On a loaded machine only ratios taken in the same round mean anything; the table gives
their medians and spreads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_speed import reference, timed  # noqa: E402

ARGS = {"jsonl": ["calls", "--format", "jsonl"], "table": ["calls"], "transcript": ["transcript", "--all"]}


def baseline_env(tree: Path) -> dict:
    for pkg in ("formats", "dissectors"):
        link = tree / "wmiscope" / pkg
        if not link.exists():
            link.symlink_to(Path("..") / pkg)
    return dict(os.environ, PYTHONPATH=str(tree))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, type=Path, help="an unpacked source tree (git archive)")
    ap.add_argument("--dir", default="/tmp/wmiscope-bench", type=Path)
    ap.add_argument("--workloads", default="objects,sealed,mix")
    ap.add_argument("--commands", default="jsonl,table")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    variants = [("after", dict(os.environ)), ("before", baseline_env(args.baseline.resolve()))]
    workloads, commands = args.workloads.split(","), args.commands.split(",")
    res: dict[tuple, list] = {}
    for r in range(args.runs):
        for w in workloads:
            path = args.dir / f"{w}.pcap"
            for c in commands:
                t = timed(reference(c, path))[0]
                for name, env in (variants if r % 2 == 0 else variants[::-1]):
                    for n in (1, 2):
                        s, rss, _, _ = timed([sys.executable, "-m", "wmiscope", *ARGS[c], str(path), "--workers", str(n)],
                                             env=env)
                        res.setdefault((w, c, n, name), []).append((s / t, s, rss))
                print(f"round {r}: {w} {c}, tshark {t:.2f} s, load {os.getloadavg()[0]:.1f}", file=sys.stderr)
    print("| workload | command | workers | before | after | after: wall s (median) | after: peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for w in workloads:
        for c in commands:
            for n in (1, 2):
                cells = []
                for name in ("before", "after"):
                    q = [x[0] for x in res[(w, c, n, name)]]
                    cells.append(f"{statistics.median(q):.2f} ({min(q):.2f}-{max(q):.2f})")
                after = res[(w, c, n, "after")]
                print(f"| {w} | {c} | {n} | {cells[0]} | {cells[1]} | {statistics.median(x[1] for x in after):.1f} "
                      f"| {max(x[2] for x in after):.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
