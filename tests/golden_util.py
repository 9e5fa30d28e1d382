"""Golden outputs: what the commands print for every sample and every real capture.

A refactor must not change what an analyst sees. `scripts/golden.py` writes, for each
capture of pcaps/ and ../shared/captures/, the transcript (`--all --frames`, which holds
every line of the plain transcript plus the DCOM headers, binds and frame numbers) and
`calls --format jsonl`, into tests/golden/NAME.{transcript,calls}.gz; tests/test_golden.py
renders them again and compares. The sealed samples are rendered with their test-only
credentials, written by the generator into a temporary directory (never committed), so
their decrypted calls are covered too.

Outputs are gzip-compressed with a fixed mtime, so a rewrite of unchanged output leaves
the files byte-identical and `git diff` shows only real changes.
"""

from __future__ import annotations

import contextlib
import gzip
import io
from pathlib import Path

import tshark_util

GOLDEN = Path(__file__).resolve().parent / "golden"

# Each view: file suffix -> the command line after the capture path.
VIEWS = {
    "transcript": ["transcript", "--all", "--frames"],
    "calls": ["calls", "--format", "jsonl"],
}


def captures() -> list[Path]:
    found = sorted(tshark_util.PCAPS.glob("*.pcap*"))
    if tshark_util.CAPTURES.is_dir():
        found += sorted(p for p in tshark_util.CAPTURES.iterdir() if p.suffix in (".pcap", ".pcapng", ".cap"))
    return found


def cases() -> list[tuple[Path, str]]:
    return [(capture, view) for capture in captures() for view in VIEWS]


def golden_path(capture: Path, view: str) -> Path:
    return GOLDEN / f"{capture.name}.{view}.gz"


def render(capture: Path, view: str) -> str:
    """What `wmiscope VIEW CAPTURE ...` prints, run in this process (fast: no interpreter start-up)."""
    from wmiscope.cli import main

    argv = [VIEWS[view][0], str(capture), *VIEWS[view][1:]]
    if "sealed" in capture.name or "signed" in capture.name:
        argv += ["--credentials", str(tshark_util.sample_secrets()["wmi-sealed-samples.credentials"])]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(argv)
    return out.getvalue()


def write(capture: Path, view: str, text: str) -> None:
    GOLDEN.mkdir(exist_ok=True)
    with open(golden_path(capture, view), "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as z:
        z.write(text.encode())


def read(capture: Path, view: str) -> str:
    return gzip.decompress(golden_path(capture, view).read_bytes()).decode()
