"""Values a capture cannot be trusted with (issue 12): out-of-range timestamps and
a damaged gzip stream. Each is a capture built here; each run ends with a located
record and every command's output intact."""

from __future__ import annotations

import gzip
import json

import pytest

from test_capture import epb, frames_of, idb, pcap_bytes, shb, write
from tshark_util import PCAPS
from wmiscope.cli import main
from wmiscope.dissectors.capture import TS_MAX, open_capture

SAMPLE = PCAPS / "wmi-process-create.pcap"


def sample_as_pcapng(tsresol: int | None, tsoffset: int | None, ticks) -> bytes:
    """The demo session's frames in a pcapng whose interface has the given options;
    ticks(i) is the raw timestamp of frame i."""
    frames = [data for _, _, _, data in open_capture(SAMPLE)]
    return shb("<") + idb("<", 1, tsresol=tsresol, tsoffset=tsoffset) + b"".join(
        epb("<", 0, ticks(i), data) for i, data in enumerate(frames))


HOSTILE = {
    # seconds as units and a plausible-looking tick count: year 38504
    "year 38504": (0, None, lambda i: 1_152_921_504_606 + i),
    # the largest tick count at the finest resolution the option allows, plus a huge offset
    "tsresol 2^-127": (0x80 | 127, 2 ** 62, lambda i: 2 ** 64 - 1 - i),
    "tsoffset -2^63": (None, -2 ** 63, lambda i: i),
    "tsoffset 2^63-1": (6, 2 ** 63 - 1, lambda i: i),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_out_of_range_timestamps_are_clamped_and_reported(tmp_path, capsys, name):
    path = write(tmp_path, "future.pcapng", sample_as_pcapng(*HOSTILE[name]))
    frames, errors = frames_of(path)
    assert len(frames) == 18 and all(0 <= ts <= TS_MAX for _, ts, _, _ in frames)
    assert len(errors) == 1 and errors[0].frame == 1 and errors[0].offset == 28 + len(idb("<", 1, *HOSTILE[name][:2]))
    assert "outside 1970..9999: clamped (and 17 frames after it)" in errors[0].reason

    for fmt in ("jsonl", "table"):
        assert main(["calls", str(path), "--format", fmt]) == 0
        out, err = capsys.readouterr()
        assert err == "" and "ExecMethod" in out and "outside 1970..9999" in out
    assert main(["calls", str(path), "--format", "jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    times = {c["request"]["time"] for c in rows if c["type"] == "call"}
    assert times <= {"1970-01-01T00:00:00.000000Z", "9999-12-31T23:59:59.000000Z"}, times
    assert main(["transcript", str(path)]) == 0 and "Win32_Process" in capsys.readouterr().out


def test_iso_renders_any_float_without_raising():
    from wmiscope.dissectors.jsonl import iso

    assert iso(0.0) == "1970-01-01T00:00:00.000000Z"
    for hostile in (1e300, -1e300, float("inf"), float("nan"), 2.0 ** 63, -(2.0 ** 63)):
        assert iso(hostile) is None


def test_damaged_gzip_is_located_at_its_compressed_offset(tmp_path):
    frames = [d for _, _, _, d in open_capture(SAMPLE)] * 200
    z = bytearray(gzip.compress(pcap_bytes([(float(i), f) for i, f in enumerate(frames)]), compresslevel=1))
    where = len(z) * 2 // 3
    z[where:where + 64] = b"\xff" * 64
    got, errors = frames_of(write(tmp_path, "damaged.pcap.gz", bytes(z)))
    assert 0 < len(got) < len(frames)
    assert len(errors) == 1 and errors[0].structure == "gzip stream"
    err = errors[0]
    assert err.offset <= where < err.offset + 8192 + 64, (err.offset, where, len(z))
    assert f"damaged within octets {err.offset}.." in err.reason

    cut, errors = frames_of(write(tmp_path, "cut.pcap.gz", bytes(z[:where])))
    assert errors[0].offset == where and f"cut short at octet {where}" in errors[0].reason
