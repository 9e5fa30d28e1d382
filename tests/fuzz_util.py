"""Random mutations of valid encodings, for the tests that a decoder only ever raises
DecodeError on hostile input, and quickly.

The mutation recipe suits length-prefixed structures: most edits overwrite one octet,
the others plant a 32-bit word that makes a count or length zero or hostile
(0xFFFFFFFF, 0x7FFFFFFF) or random. Seeded, so a failure replays.
"""

from __future__ import annotations

import random
import struct
import time

from wmiscope.formats import DecodeError

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


def decode_mutations(decode, sample: bytes, seed: int, **options) -> tuple[float, int]:
    """Runs `decode` on each of `mutations(sample, seed, **options)`: (the slowest call in
    seconds, how many mutations decoded). Anything but DecodeError propagates: the test fails."""
    worst = 0.0
    decoded = 0
    for data in mutations(sample, seed, **options):
        t0 = time.perf_counter()
        try:
            decode(data)
            decoded += 1
        except DecodeError:
            pass
        worst = max(worst, time.perf_counter() - t0)
    return worst, decoded
