"""Test-side access to the real captures through the real tshark.

Until (and besides) our own wire engine, tests cut the WMI encodings they check
out of the stub data tshark reassembles; this keeps the formats tests honest:
the bytes come from Windows through an independent DCE/RPC dissector.
"""

from __future__ import annotations

import functools
import shutil
import struct
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAPTURES = ROOT.parent / "shared" / "captures"
PCAPS = ROOT / "pcaps"

ENCODING_UNIT_SIGNATURE = b"\x78\x56\x34\x12"


def capture(name: str) -> Path:
    p = CAPTURES / name
    if not p.exists():
        p = PCAPS / name
    return p


def have_tshark() -> bool:
    return shutil.which("tshark") is not None


@functools.lru_cache(maxsize=None)
def stubs(name: str) -> dict[int, list[bytes]]:
    """frame number -> the clear (reassembled) stub data of each DCE/RPC PDU in it."""
    out = subprocess.run(
        ["tshark", "-r", str(capture(name)), "-2", "-Y", "dcerpc.stub_data",
         "-T", "fields", "-e", "frame.number", "-e", "dcerpc.stub_data",
         "-E", "occurrence=a", "-E", "aggregator=|"],
        # tshark exits 2 on a capture cut short after printing all it could read.
        capture_output=True, text=True,
    ).stdout
    result: dict[int, list[bytes]] = {}
    for line in out.splitlines():
        frame, _, data = line.partition("\t")
        result[int(frame)] = [bytes.fromhex(h.replace(":", "")) for h in data.split("|") if h]
    return result


def stub(name: str, frame: int, index: int = 0) -> bytes:
    return stubs(name)[frame][index]


def encoding_units(data: bytes) -> list[bytes]:
    """Every MS-WMIO EncodingUnit (signature 0x12345678 + ObjectEncodingLength + block) in data."""
    found = []
    pos = data.find(ENCODING_UNIT_SIGNATURE)
    while pos >= 0 and pos + 8 <= len(data):
        (length,) = struct.unpack_from("<I", data, pos + 4)
        if pos + 8 + length <= len(data):
            found.append(data[pos:pos + 8 + length])
            pos = data.find(ENCODING_UNIT_SIGNATURE, pos + 8 + length)
        else:
            pos = data.find(ENCODING_UNIT_SIGNATURE, pos + 1)
    return found


def generator():
    """pcaps/generate.py as a module (a script, not in a package, so it is loaded by path).

    Each call loads a fresh copy, so that no test sees what another did to its globals."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate", PCAPS / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    return gen


@functools.lru_cache(maxsize=None)
def sample_secrets() -> dict[str, Path]:
    """The sealed samples' test-only keytab and credentials file, written by the
    generator into a temporary directory (they are not kept in the repository)."""
    import atexit
    import shutil as _shutil
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="wmiscope-secrets-"))
    atexit.register(_shutil.rmtree, directory, True)
    return generator().write_secrets(directory)
