"""The distribution installs under the wmiscope name only, and completely."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

from tshark_util import ROOT


def _clean_checkout(dst):
    """The tracked files only: setuptools reuses a stale build/ or *.egg-info left in the
    work tree (an editable install writes one), which can put back files the
    configuration now leaves out, so the wheel is built as a fresh clone would build it."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    for rel in filter(None, tracked.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    return dst


def test_wheel_holds_every_package_under_wmiscope_and_no_bare_top_level(tmp_path):
    src = _clean_checkout(tmp_path / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(src)],
                   check=True, capture_output=True)
    (wheel,) = tmp_path.glob("wmiscope-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"wmiscope"}          # never a bare `formats` or `dissectors` (one exists on PyPI)
    for module in ("wmiscope/cli.py", "wmiscope/commands/calls.py", "wmiscope/commands/transcript.py",
                   "wmiscope/spec/interfaces.py", "wmiscope/formats/objref.py", "wmiscope/formats/wmio.py",
                   "wmiscope/dissectors/pipeline.py", "wmiscope/dissectors/jsonl.py"):
        assert module in names, module
    # The sample generator and its test-only credentials stay in the source tree.
    assert not [n for n in names if n.startswith("wmiscope/synth/")]
    wheel_bytes = b"".join(zipfile.ZipFile(wheel).read(n) for n in names)
    assert b"Sample-Only-Pa55" not in wheel_bytes and b"sample only" not in wheel_bytes
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "wmiscope = wmiscope.cli:main" in entry
