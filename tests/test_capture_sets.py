"""Capture sets: several files (rolling sensor files, both sides of a movement) read as one.

A real capture is split into files (by time, mid-session; by sending host) and the
set must give the calls of the whole. Frame numbers of a set are those tshark shows
on ``mergecap -w`` of the set, and each record names its file and frame there.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tshark_util import CAPTURES, have_tshark
from wmiscope import cli
from wmiscope.dissectors.jsonl import call_dict
from wmiscope.dissectors.capture import CaptureFormatError, open_capture, open_sources
from wmiscope.dissectors.pipeline import Analysis, analyse, call_outcome
from wmiscope.dissectors.records import Call, Pdu
from wmiscope.synth.wire import PcapWriter

REAL = CAPTURES / "wmiexecpro-create-start-service.pcap"


def split(src, dst_dir, pick) -> list:
    """Writes the frames of src into files chosen by pick(index, ts, frame) -> file name."""
    dst_dir.mkdir(exist_ok=True)
    writers = {}
    for i, (_, ts, _, data) in enumerate(open_capture(src)):
        name = pick(i, ts, data)
        if name not in writers:
            writers[name] = PcapWriter(dst_dir / name)
        writers[name].write(ts, data)
    for w in writers.values():
        w.close()
    return sorted(dst_dir / n for n in writers)


def calls_of(records, frames=True) -> list[dict]:
    out = []
    for r in records:
        if type(r) is Call:
            d = call_dict(r, call_outcome(r))
            d.pop("file", None)
            for half in ("request", "response"):
                if d[half]:
                    d[half].pop("origin", None)
                    if not frames:
                        d[half].pop("frames")
            if not frames:
                d.pop("operation")
            out.append(d)
    return out


def test_rolling_files_split_mid_session_give_the_calls_of_the_whole(tmp_path):
    whole, stats = analyse(REAL)
    n = stats.frames
    # Three rolling files; the cuts fall inside the WMI session, so calls cross them.
    files = split(REAL, tmp_path / "roll", lambda i, ts, d: f"sensor_{min(3 * i // n, 2):02d}.pcap")
    assert len(files) == 3
    for source in ([str(f) for f in reversed(files)], [str(tmp_path / "roll")], [str(tmp_path / "roll" / "*.pcap")]):
        records, set_stats = analyse(source)
        assert calls_of(records) == calls_of(whole)       # frame numbers too: the merge restores the order
        assert (set_stats.calls, set_stats.pdus, set_stats.frames) == (stats.calls, stats.pdus, stats.frames)
    files_of_conn: dict[int, set] = {}
    for r in records:
        if type(r) is Call:
            files_of_conn.setdefault(r.conn, set()).update(w[0] for half in r.origin.values() for w in half)
    assert any(len(f) > 1 for f in files_of_conn.values()), "no session crossed a file boundary"
    # Each record's origin: the file and the frame inside it, for tshark on that file.
    call = next(r for r in records if type(r) is Call)
    file, frame = call.origin["request"][0]
    assert (file, frame) == ("sensor_00.pcap", call.req_frames[0])
    last = [r for r in records if type(r) is Call][-1]
    before = sum(1 for f in files[:2] for _ in open_capture(f))
    assert last.origin["response"][1] == ["sensor_02.pcap", last.resp_frames[1] - before]


@pytest.mark.skipif(not have_tshark() or not shutil.which("mergecap"), reason="tshark/mergecap not installed")
def test_one_file_per_host_numbers_frames_as_mergecap(tmp_path):
    files = split(REAL, tmp_path / "hosts", lambda i, ts, d: f"{d[26:30].hex()}.pcap" if d[12:14] == b"\x08\x00"
                  else "other.pcap")
    assert len(files) >= 2
    merged = tmp_path / "merged.pcapng"
    subprocess.run(["mergecap", "-w", str(merged)] + [str(f) for f in files], check=True)
    rows = subprocess.run(["tshark", "-r", str(merged), "-Y", "dcerpc", "-T", "fields", "-e", "frame.number",
                           "-e", "dcerpc.cn_call_id", "-E", "occurrence=l"],
                          capture_output=True, text=True, check=True).stdout.split()
    theirs = sorted(set(zip(map(int, rows[::2]), map(int, rows[1::2]))))
    analysis = Analysis(want_pdus=True)
    records = list(analysis.run([str(f) for f in files]))
    ours = sorted({(p.frame, p.call_id) for p in records if type(p) is Pdu})
    assert ours == theirs
    whole, _ = analyse(REAL)
    assert calls_of(records, frames=False) == calls_of(whole, frames=False)


def test_jsonl_names_the_file_and_a_single_file_is_unchanged(tmp_path, capsys):
    files = split(REAL, tmp_path / "roll", lambda i, ts, d: "a.pcap" if i < 100 else "b.pcap")
    assert cli.main(["calls", "--format", "jsonl", str(files[0]), str(files[1])]) == 0
    lines = capsys.readouterr().out.splitlines()
    import json
    calls = [json.loads(x) for x in lines if '"type":"call"' in x]
    assert {c["file"] for c in calls} == {"a.pcap", "b.pcap"}
    assert all(c["request"]["origin"][0][0] == c["file"] for c in calls if c["request"])
    assert cli.main(["calls", "--format", "jsonl", str(REAL)]) == 0
    assert '"file"' not in capsys.readouterr().out


def test_bad_sources_end_with_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for args in ([str(tmp_path / "empty")], [str(tmp_path / "*.pcapng")], [str(tmp_path / "missing.pcap")]):
        assert cli.main(["stats"] + args) == 1         # unreadable input: one line, exit 1 (issue 12)
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("wmiscope: error: ") and err.count("\n") == 1
    with pytest.raises(CaptureFormatError):
        open_sources([str(tmp_path / "empty")])


def test_origins_of_packet_by_packet_interleaving_are_bounded(tmp_path, monkeypatch):
    from wmiscope.dissectors import capture

    monkeypatch.setattr(capture, "MAX_ORIGIN_RUNS", 16)
    files = split(REAL, tmp_path / "alt", lambda i, ts, d: f"{i % 2}.pcap")
    s = open_sources([str(f) for f in files])
    n = sum(1 for _ in s)
    assert len(s._run_start) <= 32
    assert s.origin(n) == ("0.pcap" if n % 2 else "1.pcap", (n + 1) // 2)
    assert s.origin(1) == (None, None)
