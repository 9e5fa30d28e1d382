#!/usr/bin/env python3
"""What the analysis holds at the end of the frames, table by table (one process).

    python scripts/memory_tables.py calls --format jsonl CAPTURE --workers 1 > /dev/null

Runs the wmiscope command given and, when the last frame has been read (before the
connections still open are flushed), writes to stderr the deep size (sys.getsizeof over
everything reachable, each object counted once, in the order listed) of the WMI
correlation state by table, of the analysis' other parts and of the package's module
globals (its caches), then the largest types over the whole heap. Sizes are what Python
reports for its objects, not the allocator's pages: compare them between runs (200 MB
against 1 GB, one branch against another), not with the peak RSS.
"""

from __future__ import annotations

import gc
import sys
import types
from collections import Counter

from wmiscope.cli import main
from wmiscope.dissectors import pipeline

_SHARED = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.CodeType,
           types.MethodType)


def deep_size(root, seen: set) -> int:
    """Octets reachable from root not counted yet (seen: the ids counted so far)."""
    size, stack = 0, [root]
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, _SHARED):
            continue
        seen.add(id(o))
        size += sys.getsizeof(o)
        stack.extend(gc.get_referents(o))
    return size


def report(analysis) -> None:
    gc.collect()
    seen: set = set()
    rows: list[tuple[str, int]] = []
    pairs = analysis.operations._pairs
    tables = Counter()
    for st in pairs.values():
        for name in ("objects", "pending", "caches", "refreshers"):
            tables[name] += deep_size(getattr(st, name), seen)
        tables["rest of the pair"] += deep_size(st, seen)
    rows += [(f"operations ({len(pairs)} host pairs): {k}", v) for k, v in tables.items()]
    rows.append(("operations: the rest", deep_size(analysis.operations, seen)))
    for name in ("registry", "_reassembler", "_call_pdus", "_flood", "_tunnels", "stats"):
        rows.append((name.lstrip("_"), deep_size(getattr(analysis, name), seen)))
    modules = [(f"module {n}", deep_size(vars(m), seen)) for n, m in list(sys.modules.items())
               if n.startswith("wmiscope")]
    rows += sorted(modules, key=lambda r: -r[1])[:12]
    del seen
    out = sys.stderr
    for what, size in rows:
        print(f"{size / 1024:10.0f} KB  {what}", file=out)
    counted: set = set()
    count, octets = Counter(), Counter()
    for o in gc.get_objects():
        for x in (o, *(r for r in gc.get_referents(o) if not gc.is_tracked(r))):
            if id(x) not in counted:
                counted.add(id(x))
                count[type(x).__qualname__] += 1
                octets[type(x).__qualname__] += sys.getsizeof(x)
    print("largest types (objects, KB):", file=out)
    for t, n in octets.most_common(20):
        print(f"{n / 1024:10.0f} KB  {count[t]:9d}  {t}", file=out)


def run(argv: list[str]) -> int:
    end_of_frames = pipeline.Analysis.end_of_frames

    def measured(self):
        report(self)
        return end_of_frames(self)

    pipeline.Analysis.end_of_frames = measured
    sys.argv = ["wmiscope", *argv]
    return main()


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
