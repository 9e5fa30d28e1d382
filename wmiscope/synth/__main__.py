"""python -m wmiscope.synth [OUTDIR | --secrets DIR]: write the sample captures (see samples.py)."""

import sys

from .samples import main

raise SystemExit(main(sys.argv))
