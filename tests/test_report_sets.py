"""The report over a capture set: rolling files of one capture make the report of the whole.

The cuts fall inside the WMI sessions: a login in one file and the calls it names in the
next (the IPID registry must be shared), a sealed 80 KB reply fragmented across the cut
(the TCP and DCE/RPC reassembly must be shared), so per-file analyses would lose findings.
"""

from __future__ import annotations

import json

import pytest

from test_capture_sets import split
from tshark_util import CAPTURES
from wmiscope.cli import main

# what a finding says, apart from where its frames are filed
SAME = ("rule", "title", "techniques", "basis", "confidence", "reasons", "principal", "namespace", "command_line",
        "tool", "outcome", "first_time", "last_time", "frames", "operation", "source", "destination", "wmi")


def report(capsys, *paths) -> dict:
    assert main(["report", "--format", "json", *map(str, paths)]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name, cut", [
    ("LM_WMI_ProcessCallCreate.pcapng", 90),    # login in the first file; GetObject's sealed reply spans the cut
    ("impacket_wmiexec.pcapng", 80),            # NTLMLogin in the first file, two of the three Creates in the second
], ids=lambda x: str(x))
def test_rolling_files_give_the_findings_of_the_whole(capsys, tmp_path, name, cut):
    whole = report(capsys, CAPTURES / name)
    parts = split(CAPTURES / name, tmp_path, lambda i, ts, data: "a.pcap" if i < cut else "b.pcap")
    merged = report(capsys, *parts)
    assert [{k: f[k] for k in SAME} for f in merged["findings"]] == [{k: f[k] for k in SAME}
                                                                      for f in whole["findings"]]
    assert merged["captures"][0]["files"] == ["a.pcap", "b.pcap"]
    assert merged["summary"]["wmi_calls"] == whole["summary"]["wmi_calls"]
    # the evidence names each file and its own frame numbers
    for f in merged["findings"]:
        local = sorted((n if e["file"] == "a.pcap" else n + cut) for e in f["evidence"] for n in e["frames"])
        assert set(local) <= set(f["frames"]) and local
        assert f["capture"] == f["evidence"][0]["file"]
    if name.startswith("LM_WMI"):
        sealed = merged["findings"][1]
        assert sealed["rule"] == "sealed-method-exec" and "Win32_Process.Create-shaped" in sealed["title"]
        assert {e["file"] for e in sealed["evidence"]} == {"a.pcap", "b.pcap"}
        (conn,) = merged["sealed_connections"]
        assert conn["sequence"] == ["GetObject (148/79068 bytes)", "ExecMethod (5360/1160 bytes)"]


def test_jsonl_evidence_names_the_files(capsys, tmp_path):
    parts = split(CAPTURES / "impacket_wmiexec.pcapng", tmp_path, lambda i, ts, data: "a.pcap" if i < 80 else "b.pcap")
    assert main(["report", str(tmp_path)]) == 0      # a folder stands for its files
    docs = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    # the whoami Create: frames 114, 115, 117 of the whole are 34, 35, 37 of the second file
    assert docs[-1]["wmi"]["frames"] == [114, 115, 117]
    assert docs[-1]["wmi"]["evidence"] == [{"file": "b.pcap", "frames": [34, 35, 37]}]
    assert docs[0]["wmi"]["capture"] == "a.pcap" and len(parts) == 2
