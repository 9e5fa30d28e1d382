"""The transcript and the JSON lines of every sample and real capture are unchanged.

The golden files were written by scripts/golden.py; a difference here is a change an
analyst would see. If it is intended, rewrite them with that script and say why.
"""

from __future__ import annotations

import difflib

import pytest

import golden_util

CASES = golden_util.cases()


@pytest.mark.parametrize("capture,view", CASES, ids=[f"{c.name}-{v}" for c, v in CASES])
def test_output_matches_golden(capture, view):
    path = golden_util.golden_path(capture, view)
    assert path.exists(), f"no golden file {path.name}: run scripts/golden.py"
    want = golden_util.read(capture, view)
    got = golden_util.render(capture, view)
    if got != want:
        diff = "\n".join(list(difflib.unified_diff(want.splitlines(), got.splitlines(), "golden", "now",
                                                   lineterm="", n=1))[:60])
        pytest.fail(f"{capture.name} {view} differs from its golden file:\n{diff}")


def test_every_capture_has_both_views():
    # The set is real: the demo sample and the richest real capture are in it.
    names = {c.name for c, _ in CASES}
    assert "wmi-process-create.pcap" in names and "wmi-process-create-ntlm-sealed.pcap" in names
    assert len(CASES) == 2 * len(golden_util.captures()) >= 2 * 13
