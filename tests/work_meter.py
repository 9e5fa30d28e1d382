"""Deterministic measures of the work a decoder does, for the tests that guard against
quadratic scans, absurd counts honoured and runaway loops on hostile input.

Those tests used to assert wall-clock bounds, which fail on a loaded machine and which the
project brief forbids ("No timed unit tests"). These measures count instead:

- calls: Python and builtin function calls made while metering (`sys.setprofile`). Every
  loop of a decoder calls something per element (a read, a parse, an append), so a
  quadratic scan or an absurd count honoured shows up as calls, whatever the load.
- peak: the most memory allocated at once while metering (`tracemalloc`), for "refused
  before allocating" properties.

Both are the same on every run of the same code, so a bound set well above what the code
does and far below what a regression does is never flaky. A `budget` turns a runaway
(an absurd count looped over) into a prompt failure rather than a hang.
"""

from __future__ import annotations

import sys
import tracemalloc
from contextlib import contextmanager
from dataclasses import dataclass


# A decoder linear in its input makes a few calls per input octet (a read, a parse, an
# append per field) on top of a fixed cost per call (a record, a plan look-up), and holds
# its objects, tens of octets per input octet. One that honours a hostile count, or
# rescans its input, makes thousands of calls per octet, or allocates what the count says.
CALLS_FLOOR = 2000
CALLS_PER_OCTET = 8
PEAK_FLOOR = 256 * 1024
PEAK_PER_OCTET = 64
# Beyond this many times the linear bound a block is a runaway: stopped, not waited for.
RUNAWAY = 100


class WorkBudgetExceeded(BaseException):
    """A BaseException, so that a decoder's `except Exception` (which turns anything into a
    located error record) cannot swallow it and make a runaway look like a clean refusal."""


@dataclass
class Work:
    calls: int = 0
    peak: int = 0           # bytes, when metered with memory=True
    exceeded: bool = False


@contextmanager
def metered(budget: int | None = None, memory: bool = False):
    """Counts the calls (and with `memory`, the peak allocation) of the block into the
    yielded Work; raises WorkBudgetExceeded once more than `budget` calls are made."""
    work = Work()

    def hook(frame, event, arg):
        if event == "call" or event == "c_call":
            work.calls += 1
            if budget is not None and work.calls > budget:
                work.exceeded = True
                raise WorkBudgetExceeded(f"more than {budget} calls")

    started_tracing = memory and not tracemalloc.is_tracing()
    if memory:
        if started_tracing:
            tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
    old = sys.getprofile()
    sys.setprofile(hook)
    try:
        yield work
    finally:
        sys.setprofile(old)
        if memory:
            work.peak = max(0, tracemalloc.get_traced_memory()[1] - base)
            if started_tracing:
                tracemalloc.stop()
    # the decoder caught it and carried on: still a runaway. (CPython unsets the hook when
    # it raises, so a bare `except:` inside an endless loop can still hang: that is left
    # to the suite's pytest-timeout.)
    if work.exceeded:
        raise WorkBudgetExceeded(f"more than {budget} calls")


@contextmanager
def memory_traced():
    """Keeps tracemalloc on across many `metered(memory=True)` blocks (starting it for each
    would cost more than the blocks themselves)."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        yield
    finally:
        if started:
            tracemalloc.stop()


def work_of(fn, *args, budget: int | None = None, memory: bool = False, expect=()):
    """The Work of `fn(*args)`; an exception of a type in `expect` counts as an outcome."""
    with metered(budget, memory) as work:
        try:
            fn(*args)
        except expect:
            pass
    return work


def calls_bound(octets: int) -> int:
    return CALLS_FLOOR + CALLS_PER_OCTET * octets


def assert_linear(work: Work, octets: int):
    """`work` is what a decoder linear in `octets` input octets may cost."""
    assert work.calls <= calls_bound(octets), f"{work.calls} calls for {octets} octets"
    assert work.peak <= PEAK_FLOOR + PEAK_PER_OCTET * octets, f"{work.peak} octets held for {octets} octets"


@contextmanager
def linear_in(octets: int):
    """Meters the block (calls and memory) and fails it unless it cost what a decoder linear
    in `octets` input octets may: the property the old wall-clock bounds stood for ("quickly",
    "at once"), counted instead of timed. A runaway stops at RUNAWAY times the bound."""
    work = None
    try:
        with metered(budget=RUNAWAY * calls_bound(octets), memory=True) as work:
            yield work
    finally:
        # checked also when the block raised: a refusal (the DecodeError that pytest.raises
        # expects) must come before the work, not after it
        if work is not None and not work.exceeded:
            assert_linear(work, octets)
