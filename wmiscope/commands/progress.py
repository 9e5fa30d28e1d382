"""Progress of a long run on a terminal: frames and MB read, calls and errors so far.

Written to stderr only when it is a terminal, and, for commands that stream their
output to stdout, only when stdout is not one (the line would cut through the table);
nothing at all on a pipe or in a log. Short runs (under half a second) print nothing.
"""

from __future__ import annotations

import os
import sys
import time


class Progress:
    def __init__(self, stream=None, delay: float = 0.5):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.bytes = 0
        self._last = time.monotonic() + delay - 0.2
        self._shown = False

    def __call__(self, stats) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.2:      # at most 5 updates a second
            return
        self._last = now
        self._shown = True
        self.stream.write(f"\r{stats.frames} frames, {self.bytes / 1e6:.1f} MB read, {stats.calls} calls, "
                          f"{stats.errors} errors ...")
        self.stream.flush()

    def done(self) -> None:
        if self._shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._shown = False


def with_progress(source, analysis, *, streaming: bool, stream=None):
    """The frames of `source` (a capture path or live frames) for `analysis.run`, metered
    when a progress line is wanted; otherwise `source` itself, at no per-frame cost."""
    progress = Progress(stream)
    if streaming and sys.stdout.isatty():
        progress.enabled = False
    if not progress.enabled:
        return source
    return _metered(source, analysis, progress)


def _metered(source, analysis, progress: Progress):
    if isinstance(source, (str, bytes, os.PathLike)):
        from wmiscope.dissectors.capture import open_sources
        # a capture set keeps its read errors, which the analysis reports at the end as for any file
        source = open_sources([source])
    return _Metered(source, analysis, progress)


class _Metered:
    """The source's frames, metered; its other attributes (a capture set's ``origin``,
    ``multi``, ``errors``) stay visible to the analysis."""

    def __init__(self, source, analysis, progress: Progress):
        self._source = source
        self._analysis = analysis
        self._progress = progress

    def __getattr__(self, name):
        return getattr(self._source, name)

    def __iter__(self):
        progress, stats = self._progress, self._analysis.stats
        try:
            for raw in self._source:
                progress.bytes += len(raw[3])
                progress(stats)
                yield raw
        finally:
            progress.done()
