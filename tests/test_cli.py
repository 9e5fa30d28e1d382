"""The commands as a user runs them: wmiscope --help, calls, stats, on real captures."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

from tshark_util import CAPTURES, PCAPS
from wmiscope import synth
from wmiscope.dissectors.pipeline import analyse
from wmiscope.dissectors.records import Call, ErrorRecord

LM = CAPTURES / "LM_WMI_ProcessCallCreate.pcapng"


def wmiscope(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "wmiscope", *args], capture_output=True, text=True,
                          check=True, env={**os.environ, "PYTHONIOENCODING": "utf-8"}).stdout


def test_help_lists_the_subcommands():
    out = wmiscope("--help")
    for name in ("calls", "stats", "decode"):
        assert f"    {name} " in out


def test_calls_jsonl_names_sealed_calls_and_principals():
    calls = [json.loads(line) for line in wmiscope("calls", str(LM), "--format", "jsonl").splitlines()]
    calls = [c for c in calls if c["type"] == "call"]
    by_method = {c["method"]: c for c in calls}
    get_object = by_method["GetObject"]
    assert get_object["interface"] == "IWbemServices" and get_object["interface_source"] == "ipid"
    assert get_object["encrypted"] and get_object["outcome"] == "encrypted"
    assert get_object["auth"]["principal"] == "3B\\lgreen" and get_object["auth"]["level_name"] == "privacy"
    assert get_object["response"]["frames"] == [54, 120] and get_object["response"]["stub_len"] == 79068
    login = by_method["NTLMLogin"]
    assert login["auth"]["type_name"] == "SPNEGO" and "THREEBEESCO.COM" in login["auth"]["principal"]
    assert by_method["ExecMethod"]["request"]["frames"] == [123, 126]   # four TCP segments
    assert [c["method"] for c in calls].count("RemRelease") == 2


def test_calls_table_is_readable():
    out = wmiscope("calls", str(PCAPS / "wmi-process-create.pcap"))
    assert "IWbemServices::ExecMethod" in out
    assert out.rstrip().endswith("18 frames")


def test_stats_report_gaps_and_parts_add_up():
    d = json.loads(wmiscope("stats", str(CAPTURES / "dcom_mmc20_application.pcapng"), "--json"))
    assert (d["gaps"], d["gap_bytes"]) == (8, 1140)
    assert d["frames"] == 74 and d["pdus"] == 74
    assert sum(d["calls_by_outcome"].values()) == d["calls"] == 37
    assert d["calls_by_outcome"]["malformed"] == 0
    assert d["errors_by_stage"] == {"tcp": 8}       # one located record per gap


def test_naming_neither_capture_nor_interface_is_refused():
    proc = subprocess.run([sys.executable, "-m", "wmiscope", "calls"], capture_output=True, text=True)
    assert proc.returncode != 0 and "CAPTURE" in proc.stderr


def test_hostile_traffic_beside_a_real_session_leaves_it_intact(tmp_path):
    """Random bytes, bogus frag lengths and endless fragments on other connections
    give error records; the genuine session in the same capture still decodes."""
    rnd = random.Random(7)
    path = tmp_path / "hostile.pcap"
    clock = synth.Clock()
    with synth.PcapWriter(path) as pcap:
        for i in range(6):
            tcp = synth.TcpSession(pcap, clock, ("10.9.9.9", 40000 + i), ("10.9.9.1", 135))
            tcp.open()
            if i % 3 == 0:      # a plausible header, then garbage
                tcp.send(0, synth.bind(1, [(0, "000001a0-0000-0000-c000-000000000046", (0, 0))])[:10]
                         + bytes(rnd.randrange(256) for _ in range(3000)))
            elif i % 3 == 1:    # frag_len 65535 and nothing behind it
                tcp.send(0, b"\x05\x00\x00\x03\x10\x00\x00\x00\xff\xff\x00\x00\x01\x00\x00\x00" + b"A" * 500)
            else:               # endless first fragments of one call
                for _ in range(40):
                    tcp.send(0, synth.request(9, 0, 3, b"B" * 2000, max_frag=1024)[0])
            tcp.close()
        good = synth.TcpSession(pcap, clock, ("10.9.9.8", 50000), ("10.9.9.1", 49700))
        good.open()
        good.send(0, synth.bind(1, [(0, "f309ad18-d86a-11d0-a075-00c04fb68820", (0, 0))]))
        good.send(1, synth.bind_ack(1, 1))
        for pdu in synth.request(2, 0, 6, b"\x05\x00\x07\x00" + bytes(28) + b"\0" * 16):
            good.send(0, pdu)
        for pdu in synth.response(2, 0, bytes(8) + b"\0" * 8):
            good.send(1, pdu)
        good.close()
    records, stats = analyse(path)
    calls = [r for r in records if type(r) is Call]
    assert any(c.interface == "IWbemLevel1Login" and c.method == "NTLMLogin" and c.server[1] == 49700
               for c in calls)
    errors = [r for r in records if type(r) is ErrorRecord]
    assert errors and all(e.frame is not None for e in errors)
    d = stats.as_dict()
    assert sum(d["pdus_by_outcome"].values()) == d["pdus"]
    assert sum(d["calls_by_outcome"].values()) == d["calls"]


def test_non_wmi_dcom_captures_are_never_called_wmi():
    from wmiscope.spec import interfaces

    for name, named in (("dcom_mmc20_application.pcapng", {"IDispatch", "ITypeInfo"}),
                        ("impacket_dcomexec.pcapng", {"IRemoteSCMActivator", "IDispatch"})):
        records, _ = analyse(CAPTURES / name)
        calls = [r for r in records if type(r) is Call]
        groups = {(interfaces.interface_by_uuid(c.interface_uuid) or {}).get("group") for c in calls}
        assert "wmi" not in groups, name
        assert {c.interface for c in calls if c.interface} == named, name


def test_other_tcp_traffic_is_not_taken_for_dce_rpc():
    """wmimplant.pcap carries SMB2 and LDAP beside WMI; a stray DCE/RPC-looking run of
    bytes inside a negotiation must not turn SMB into a stream of dcerpc errors."""
    _, stats = analyse(CAPTURES / "wmimplant.pcap")
    d = stats.as_dict()
    assert d["errors"] == 0 and d["other_flows"] >= 1
    assert d["calls_by_outcome"] == {"decoded": 102, "encrypted": 12, "unknown_interface": 0, "malformed": 0}
