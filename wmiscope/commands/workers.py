"""Running a capture-reading command in one process, in local worker processes, or on Dask.

A command provides `record_renderer(args)`: a function turning one pipeline record into
its output text. The same function renders in one process and in each worker, so the
split run writes what the single run writes (dissectors.parallel merges the workers'
text in the single run's order and numbers the WMI operations).
"""

from __future__ import annotations

import os
import sys

# Below this size a capture is analysed in one process: starting workers (each reads the
# whole capture) costs more than it saves.
PARALLEL_MIN_BYTES = 32 << 20


def add_arguments(p) -> None:
    g = p.add_argument_group("parallel", "the analysis split by host pair; the output is the single run's")
    g.add_argument("--workers", type=int, metavar="N",
                   help="worker processes (default: the machine's cores for captures of 32 MB and more, "
                        "else 1; 1 runs in this process)")
    g.add_argument("--dask", metavar="ADDRESS",
                   help="run the split on this Dask distributed scheduler (tcp://host:8786); "
                        "every worker must read the capture at the same path")


def _plan(args, source) -> int:
    """How many shards: 1 for a live capture or a small capture set, else --workers or the cores."""
    from wmiscope.cli import UsageError

    if getattr(args, "dask", None):
        if getattr(args, "interface", None):
            raise UsageError("--dask splits capture files, not a live capture")
        return args.workers or 0            # 0: as many as the cluster has workers
    if getattr(args, "interface", None):
        return 1
    if args.workers is not None:
        return max(1, args.workers)
    from wmiscope.dissectors.parallel import default_workers
    try:
        small = sum(os.path.getsize(p) for p in source.paths) < PARALLEL_MIN_BYTES
    except (OSError, TypeError, AttributeError):
        small = True
    return 1 if small else default_workers()


def write_records(args, command: str, write, source, *, streaming: bool = True, **analysis_kwargs):
    """Analyses `source` (what open_source gave) and writes each record's text; returns the Stats.

    streaming: the command writes as it goes (no progress line when stdout is a terminal)."""
    from .output import make_analysis
    from .progress import with_progress

    shards = split_shards(args, source)
    if shards == 1:
        render = renderer_factory(command, args)()
        analysis = make_analysis(args, **analysis_kwargs)
        for rec in analysis.run(with_progress(source, analysis, streaming=streaming)):
            text = render(rec)
            if text:
                write(text)
        from wmiscope.dissectors.parallel import cache_stats
        _report_cache([cache_stats()])
        return analysis.stats
    return write_split(args, command, write, source, shards, **analysis_kwargs)


def split_shards(args, source) -> int:
    """1 when the run stays in this process, else how many shards (0: as many as Dask has workers)."""
    shards = _plan(args, source)
    return shards if shards != 1 or getattr(args, "dask", None) else 1


def write_split(args, command: str, write, source, shards: int, **analysis_kwargs):
    """The run split by host pair over `shards` local processes or Dask tasks; the records'
    text (rendered by the command's `record_renderer` in the workers) is written in the
    single run's order. Returns the merged Stats."""
    from .output import credentials_from_args

    # Each shard opens the capture set anew: its files by their absolute paths (a Dask
    # worker may run in another directory; the files must be there at the same paths).
    paths = [os.path.abspath(p) for p in source.paths]
    analysis_kwargs["credentials"] = credentials_from_args(args)
    make_renderer = renderer_factory(command, args)
    if args.dask:
        from wmiscope.dask_backend import DaskRun
        run = DaskRun(args.dask, paths, shards, analysis_kwargs, make_renderer)
    else:
        from wmiscope.dissectors.parallel import LocalRun
        # What the renderers import on first use, imported once before the workers fork.
        import wmiscope.dissectors.transcript  # noqa: F401
        import wmiscope.report.values  # noqa: F401
        run = LocalRun(paths, shards, analysis_kwargs, make_renderer)
    try:
        out = _binary_stdout(write)
        if out is None:
            for text in run.text():
                write(text)
        else:
            sys.stdout.flush()          # what the command wrote before goes first
            for piece in run.chunks():
                if type(piece) is str:  # not strict UTF-8: stdout takes or refuses it as in one process
                    write(piece)
                    sys.stdout.flush()
                else:
                    out.write(piece)
    finally:
        run.close()
    _report_cache(run.cache)
    return run.stats


def _binary_stdout(write):
    """stdout's byte stream when `write` is stdout's and it encodes UTF-8: the workers' text,
    already encoded, is then written as it came, without decoding and encoding it again in
    this process (which would compete with the workers for the cores). Text that strict UTF-8
    cannot encode comes as str and goes through stdout's own error handler, as in one process."""
    stdout = sys.stdout
    if getattr(write, "__self__", None) is not stdout:
        return None
    try:
        import codecs
        if codecs.lookup(stdout.encoding).name != "utf-8":
            return None
        return stdout.buffer
    except (AttributeError, LookupError, TypeError):
        return None


class renderer_factory:
    """Picklable: makes the command's record renderer in whichever process calls it."""

    def __init__(self, command: str, args):
        self.command = command
        self.args = args

    def __call__(self):
        import importlib
        return importlib.import_module(f"wmiscope.commands.{self.command}").record_renderer(self.args)


def _report_cache(parts) -> None:
    """With WMISCOPE_CACHE_STATS set (the benchmarks do), one line on stderr: the decoded-object
    caches' hits and misses, summed over the processes."""
    if not os.environ.get("WMISCOPE_CACHE_STATS"):
        return
    line = []
    for name in ("objects", "class parts"):
        hits = sum(p[name][0] for p in parts if p)
        misses = sum(p[name][1] for p in parts if p)
        line.append(f"{name} {hits} hits {misses} misses")
    sys.stderr.write(f"wmiscope cache: {', '.join(line)}\n")
