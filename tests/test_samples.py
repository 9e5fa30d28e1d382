"""The bundled sample captures: current, readable by tshark, decodable by impacket.

Our encoder and decoder must not share a misunderstanding, so each sample is
also read by independent implementations: tshark for everything up to the
DCE/RPC stubs, impacket's MS-WMIO decoder for the objects inside them.
"""

from __future__ import annotations

import subprocess

import pytest

from tshark_util import PCAPS, encoding_units, generator, stubs
from wmiscope.dissectors.pipeline import analyse
from wmiscope.dissectors.records import Call

SAMPLES = sorted(p.name for p in PCAPS.glob("*.pcap"))
WARNING = 0x600000   # Wireshark expert severity: chat < note < warning < error


def test_samples_exist():
    assert "wmi-process-create.pcap" in SAMPLES


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_is_what_the_generator_writes(name, tmp_path):
    gen = generator()
    gen.SAMPLES[name](tmp_path / name)
    assert (tmp_path / name).read_bytes() == (PCAPS / name).read_bytes(), \
        "pcaps/ is stale: run `python pcaps/generate.py`"


@pytest.mark.parametrize("name", SAMPLES)
def test_tshark_reads_sample_without_complaint(name):
    out = subprocess.run(
        ["tshark", "-r", str(PCAPS / name), "-T", "fields", "-e", "frame.number",
         "-e", "_ws.expert.severity", "-e", "_ws.expert.message", "-e", "_ws.malformed"],
        capture_output=True, text=True, check=True).stdout
    bad = []
    for line in out.splitlines():
        frame, severities, message, malformed = (line.split("\t") + ["", "", ""])[:4]
        if malformed or any(int(s) >= WARNING for s in severities.split(",") if s):
            bad.append((frame, message))
    assert not bad


def test_impacket_decodes_the_objects_we_encoded():
    from impacket.dcerpc.v5.dcom import wmi

    units = [eu for frame_stubs in stubs("wmi-process-create.pcap").values()
             for s in frame_stubs for eu in encoding_units(s)]
    assert len(units) == 3          # the class, Create's in-params, its out-params
    def decoded(unit):
        ob = wmi.ENCODING_UNIT(unit)["ObjectBlock"]
        ob.parseObject()
        return ob.ctCurrent

    cls = decoded(units[0])
    assert cls["name"].split() == ["Win32_Process", ":", "CIM_Process"]   # impacket names a derived class so
    props = cls["properties"]
    assert {"Handle", "CommandLine", "ProcessId"} <= set(props)
    assert props["Handle"]["qualifiers"]["key"] == "True"
    assert list(cls["methods"]) == ["Create", "Terminate"]
    assert list(cls["methods"]["Create"]["InParams"]) == ["CommandLine", "CurrentDirectory",
                                                          "ProcessStartupInformation"]
    assert decoded(units[1])["properties"]["CommandLine"]["value"] == \
        "cmd.exe /c whoami > C:\\Windows\\Temp\\o.txt"
    out = decoded(units[2])["properties"]
    assert (out["ProcessId"]["value"], out["ReturnValue"]["value"]) == (4242, 0)


def test_our_pipeline_names_every_call_of_the_sample():
    records, stats = analyse(PCAPS / "wmi-process-create.pcap")
    calls = [r for r in records if type(r) is Call]
    assert [(c.interface, c.method) for c in calls] == [
        ("IWbemLevel1Login", "NTLMLogin"), ("IWbemServices", "GetObject"), ("IWbemServices", "ExecMethod")]
    # The IWbemServices IPID is learned from the OBJREF in NTLMLogin's reply.
    assert [c.interface_source for c in calls[1:]] == ["ipid", "ipid"]
    assert calls[1].resp_frames[0] < calls[1].resp_frames[1]      # fragmented reply reassembled
    assert stats.errors == 0 and stats.calls_by_outcome["decoded"] == 3
