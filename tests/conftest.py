import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tshark_util  # noqa: E402


@pytest.fixture(scope="session")
def captures_dir():
    assert tshark_util.CAPTURES.is_dir(), f"real captures expected at {tshark_util.CAPTURES}"
    return tshark_util.CAPTURES
