"""Random mutations of valid encodings, for the tests that a decoder only ever raises
DecodeError on hostile input, and without a blow-up of work or memory.

The mutation recipe suits length-prefixed structures: most edits overwrite one octet,
the others plant a 32-bit word that makes a count or length zero or hostile
(0xFFFFFFFF, 0x7FFFFFFF) or random. Seeded, so a failure replays.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

from wmiscope.formats import DecodeError
from work_meter import RUNAWAY, Work, calls_bound, memory_traced, metered

HOSTILE_WORDS = (0, 0xFFFFFFFF, 0x7FFFFFFF)


def mutations(sample: bytes, seed: int, count: int = 300, max_edits: int = 5, words=HOSTILE_WORDS):
    """`count` mutated copies of `sample`, each with 1 to `max_edits` edits."""
    rng = random.Random(seed)
    choices = list(words)
    for _ in range(count):
        data = bytearray(sample)
        for _ in range(rng.randint(1, max_edits)):
            pos = rng.randrange(len(data))
            if rng.random() < 0.3:
                data[pos:pos + 4] = struct.pack("<I", rng.choice(choices + [rng.getrandbits(32)]))
            else:
                data[pos] = rng.getrandbits(8)
        yield bytes(data)


@dataclass
class MutationRun(Work):
    """calls and peak: the most any one decode made and held (work_meter.Work)."""
    decoded: int = 0        # how many mutations decoded (the rest raised DecodeError)


def decode_mutations(decode, sample: bytes, seed: int, **options) -> MutationRun:
    """Runs `decode` on each of `mutations(sample, seed, **options)`, metered (work_meter):
    deterministic measures where a wall-clock bound would fail on a loaded machine.
    Anything but DecodeError propagates, and so does WorkBudgetExceeded once a decode makes
    RUNAWAY times what `assert_linear` allows (a runaway fails at once, not by hanging).
    The tests then `assert_linear(run, len(sample))`: no mutation cost more than a decoder
    linear in its input may."""
    decode(sample)   # first-use costs (lazy imports) are no mutation's work
    run = MutationRun()
    with memory_traced():
        for data in mutations(sample, seed, **options):
            with metered(budget=RUNAWAY * calls_bound(len(data)), memory=True) as work:
                try:
                    decode(data)
                    run.decoded += 1
                except DecodeError:
                    pass
            run.calls = max(run.calls, work.calls)
            run.peak = max(run.peak, work.peak)
    return run

