"""The distribution installs under the wmiscope name only, and completely."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from tshark_util import ROOT


def test_wheel_holds_every_package_under_wmiscope_and_no_bare_top_level(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    (wheel,) = tmp_path.glob("wmiscope-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"wmiscope"}          # never a bare `formats` or `dissectors` (one exists on PyPI)
    for module in ("wmiscope/cli.py", "wmiscope/commands/calls.py", "wmiscope/commands/transcript.py",
                   "wmiscope/synth/wire.py", "wmiscope/formats/wmio.py", "wmiscope/dissectors/pipeline.py"):
        assert module in names, module
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "wmiscope = wmiscope.cli:main" in entry
