"""Coverage-guided fuzzing in the suite (issue 12): every crash ever found replays, the
seeds of every layer pass their harness, and a brief atheris run of all the harnesses
behind one target (a fixed seed and a fixed number of runs) finds nothing."""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REGRESSIONS = Path(__file__).resolve().parent / "fuzz_regressions"

_spec = importlib.util.spec_from_file_location("wmiscope_fuzz", ROOT / "scripts" / "fuzz.py")
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)

CASES = sorted(p for p in REGRESSIONS.glob("*/*") if p.is_file())


def test_regression_inputs_are_filed_by_layer():
    assert CASES, "no regression input found"
    assert {p.parent.name for p in CASES} <= set(fuzz.LAYERS)


@pytest.mark.parametrize("path", CASES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_crash_ever_found_stays_fixed(path):
    data = path.read_bytes()
    assert data, "an empty regression input replays nothing"
    # The harness raises (FuzzFailure or the crash itself) where the layer breaks its contract.
    fuzz.HARNESSES[path.parent.name](data)
    if path.parent.name == "capture":
        # What fixed them: the hostile input is said, as a located record, not only survived.
        from wmiscope.dissectors.capture import open_capture
        from wmiscope.spec.anomalies import BY_NAME

        reader = open_capture(io.BytesIO(data))
        frames = sum(1 for _ in reader)
        assert frames and reader.errors
        assert all(e.kind in BY_NAME and e.frame is not None for e in reader.errors)


@pytest.mark.parametrize("layer", fuzz.LAYERS)
def test_every_layer_is_seeded_and_its_seeds_pass(layer):
    seeds = fuzz.seeds(layer, limit=100)
    assert seeds, f"no seed for {layer}"
    for s in seeds:
        fuzz.HARNESSES[layer](s)


def test_a_brief_atheris_run_of_every_harness(tmp_path):
    pytest.importorskip("atheris")
    runs = 1500
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "fuzz.py"), "all", "--runs", str(runs), "--seed", "1",
                        "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"Done {runs} runs" in p.stderr and "stat::number_of_executed_units" in p.stderr
    assert not list(tmp_path.glob("all/crash-*")) and not list(tmp_path.glob("all/timeout-*"))
