"""The anomaly catalog (issue 12): one table of named kinds, documented, used by
every record, counted by `stats`, and a flood of one kind throttled."""

from __future__ import annotations

import json
import re
import struct
from collections import Counter
from pathlib import Path

import pytest

from wmiscope import synth
from wmiscope.cli import main
from wmiscope.dissectors.pipeline import FLOOD_LIMIT, analyse
from wmiscope.dissectors.records import ErrorRecord
from wmiscope.dissectors.wmi import decode_stub
from wmiscope.spec.anomalies import ANOMALIES, BY_NAME, LAYERS, SEVERITIES, markdown

ROOT = Path(__file__).resolve().parent.parent


def test_docs_anomalies_md_is_generated_from_the_table():
    assert (ROOT / "docs" / "anomalies.md").read_text() == markdown(), \
        "regenerate: python -m wmiscope.spec.anomalies > docs/anomalies.md"


def test_the_catalog_is_well_formed():
    assert len(BY_NAME) == len(ANOMALIES)
    for a in ANOMALIES:
        assert re.fullmatch(r"[a-z]+\.[a-z0-9_]+", a.name), a
        assert a.name.split(".")[0] == a.layer and a.layer in LAYERS, a
        assert a.severity in SEVERITIES and a.meaning.endswith(".") and "\n" not in a.meaning, a


def test_every_kind_named_in_the_code_is_in_the_catalog():
    """Records are checked when made, but a rarely reached site would only fail in the
    field: every kind the source names is looked up here."""
    named = set()
    for path in [*ROOT.glob("dissectors/*.py"), *ROOT.glob("formats/*.py"), *ROOT.glob("wmiscope/**/*.py")]:
        named |= set(re.findall(r"""kind\s*=\s*["']([a-z]+\.[a-z0-9_]+)["']""", path.read_text()))
    assert named, "no kind= found: the scan is broken"
    assert named - set(BY_NAME) == set()


def test_a_record_of_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="not in the catalog"):
        ErrorRecord("tcp", "x", kind="tcp.no_such_thing")
    assert ErrorRecord("tcp", "x", kind="tcp.gap").severity == "warning"


def gappy_session(path, gaps: int) -> None:
    """A DCE/RPC connection whose client loses 7 octets before each of `gaps` requests."""
    clock = synth.Clock()
    with synth.PcapWriter(path) as pcap:
        tcp = synth.TcpSession(pcap, clock, ("10.0.0.7", 50101), ("10.0.0.1", 135))
        tcp.open()
        tcp.send(0, synth.bind(1, [(0, "000001a0-0000-0000-c000-000000000046", (0, 0))]))
        tcp.send(1, synth.bind_ack(1, 1))
        for i in range(gaps):
            tcp.seq[0] += 7
            tcp.send(0, synth.request(i + 2, 0, 3, b"")[0])
            tcp.ack(1)
        tcp.close()


def test_a_flood_of_one_kind_is_throttled_and_counted(tmp_path):
    path = tmp_path / "gappy.pcap"
    gappy_session(path, 300)
    records, stats = analyse(path, objects=False)
    shown = Counter(r.kind for r in records if type(r) is ErrorRecord)
    gap_kind = "tcp.gap"
    assert shown[gap_kind] == FLOOD_LIMIT                      # the first ones are shown ...
    (summary,) = [r for r in records if type(r) is ErrorRecord and r.kind == "analysis.suppressed"]
    assert summary.conn == 0 and summary.reason.startswith(f"{300 - FLOOD_LIMIT} more '{gap_kind}' records")
    assert stats.anomalies[gap_kind] == 300 and stats.suppressed == 300 - FLOOD_LIMIT   # ... every one is counted
    assert stats.gaps == 300


def test_stats_counts_by_kind_and_severity(tmp_path, capsys):
    path = tmp_path / "gappy.pcap"
    gappy_session(path, 3)
    assert main(["stats", str(path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert sum(d["anomalies_by_kind"].values()) == sum(d["anomalies_by_severity"].values())
    assert d["anomalies_by_kind"]["tcp.gap"] == 3
    assert d["anomalies_by_severity"]["warning"] >= 3
    assert main(["stats", str(path)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^anomalies +\d+ +error \d+, warning \d+, note \d+", text, re.M)
    assert main(["calls", str(path), "--format", "jsonl"]) == 0
    errors = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"type":"error"' in line]
    assert errors and all(e["kind"] in BY_NAME and e["severity"] == BY_NAME[e["kind"]].severity for e in errors)


GUID = bytes.fromhex("00112233445566778899aabbccddeeff")


def test_stub_trailing_bytes_are_a_named_anomaly():
    """IWbemWCOSmartEnum::Next whose proxyGUID was marshaled as a unique pointer: the
    referent ID shifts every parameter and leaves 4 octets over."""
    good = GUID + struct.pack("<iI", -1, 10)
    out = decode_stub("IWbemWCOSmartEnum", "Next", good, params_offset=0)
    assert out.errors == [] and out.values["uCount"] == 10
    hostile = struct.pack("<I", 0x20000) + good
    out = decode_stub("IWbemWCOSmartEnum", "Next", hostile, params_offset=0)
    # the interpreter (shared by WMI and DCOM) names the anomaly; the decoder adds its layer
    assert [(getattr(e, "kind", None), e.offset, e.reason) for e in out.errors] == [
        ("stub_trailing_bytes", 24, "4 bytes after the last parameter")]


@pytest.mark.parametrize("name", ["dcom_mmc20_application.pcapng", "covenant_sharpwmi_dcerpc_wmi_execquery_execmethod.cap",
                                  "impacket_wmiexec.pcapng"])
def test_real_captures_name_every_anomaly(name):
    """Every record the real captures give has a precise kind, none a catch-all."""
    from tshark_util import CAPTURES

    records, stats = analyse(CAPTURES / name, objects=False)
    kinds = Counter(e.kind for r in records for e in ([r] if type(r) is ErrorRecord else getattr(r, "errors", [])))
    assert kinds and not [k for k in kinds if k.endswith(".other")], kinds
    assert dict(stats.anomalies) == dict(kinds)


def test_the_mmc20_gaps_are_counted_by_kind(capsys):
    from tshark_util import CAPTURES

    assert main(["stats", str(CAPTURES / "dcom_mmc20_application.pcapng"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["anomalies_by_kind"] == {"tcp.gap": 8} and d["anomalies_by_severity"] == {
        "error": 0, "warning": 8, "note": 0}
