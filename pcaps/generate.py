"""Writes the project's sample captures into pcaps/ (the scenarios are in wmiscope.synth.samples).

    python pcaps/generate.py            # all samples, next to this file
    python pcaps/generate.py OUTDIR
    python pcaps/generate.py --secrets DIR   # the test-only keys of the sealed samples

The same as `python -m wmiscope.synth`. Tests load this file by path and reach the
scenarios and their test-only secrets through it (GEN.process_create, GEN.SAMPLE_PASSWORD,
GEN.write_secrets, ...).
"""

from __future__ import annotations

import sys

from wmiscope.synth.samples import *  # noqa: F401,F403  (the tests' view of the generator)
from wmiscope.synth.samples import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
