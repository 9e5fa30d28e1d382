"""Captures as sensors deliver them: IP fragments and tunnels decode as their originals.

Each real capture (and a sample) is rewritten by wmiscope.synth.sensor: fragmented
(IPv4, IPv6, out of order, duplicated), wrapped in VXLAN, Geneve, GRE, ERSPAN II/III,
MPLS, QinQ, IP-in-IP, and combinations. tshark must first find the same DCE/RPC PDUs
in the rewritten file as in the original (so the rewrite is what the RFCs say);
then wmiscope must give the same calls, values and transcript, frame numbers aside,
with the tunnel named on each call.
"""

from __future__ import annotations

import functools
import ipaddress
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tshark_util import CAPTURES, PCAPS, have_tshark
from wmiscope.dissectors.jsonl import call_dict
from wmiscope.dissectors.pipeline import analyse, call_outcome
from wmiscope.dissectors.records import Call, ErrorRecord
from wmiscope.dissectors.transcript import TranscriptRenderer
from wmiscope.synth import sensor

REAL = sorted(p for p in CAPTURES.glob("*") if p.suffix in (".pcap", ".pcapng", ".cap"))
SAMPLE = PCAPS / "wmi-process-create.pcap"
needs_tshark = pytest.mark.skipif(not have_tshark(), reason="tshark not installed")

# Every transformation on one real capture; on every other real capture one of the
# fragmentations the issue names (IPv4 reordered and duplicated, or IPv6), in turn;
# and a few on the clear sample whose Create command line must survive.
_OTHERS = [p.name for p in REAL if p.name != "impacket_wmiexec.pcapng"]
CASES = ([("impacket_wmiexec.pcapng", t) for t in sensor.SENSOR_TRANSFORMS]
         + [("wmi-process-create.pcap", t) for t in ("frag4-reverse-dup", "frag6", "mpls-ether", "erspan3-qinq-ipv6")]
         + [(name, ("frag6", "frag4-reverse-dup")[i % 2]) for i, name in enumerate(_OTHERS)])


def _path(name: str):
    p = CAPTURES / name
    return p if p.exists() else PCAPS / name


@functools.lru_cache(maxsize=None)
def tshark_pdus(path) -> list[str]:
    """The DCE/RPC PDUs tshark sees, without frame numbers: type, call id, opnum, length, stub."""
    out = subprocess.run(
        ["tshark", "-r", str(path), "-Y", "dcerpc", "-T", "fields", "-e", "dcerpc.pkt_type",
         "-e", "dcerpc.cn_call_id", "-e", "dcerpc.opnum", "-e", "dcerpc.cn_frag_len", "-e", "dcerpc.stub_data"],
        capture_output=True, text=True).stdout
    return out.splitlines()


def _unmap(text: str) -> str:
    """64:ff9b::a.b.c.d (sensor.to_ipv6) back to a.b.c.d, inside an endpoint's text."""
    if not text.startswith("[64:ff9b::"):
        return text
    host, port = text[1:].rsplit("]:", 1)
    return f"{ipaddress.IPv4Address(int(ipaddress.IPv6Address(host)) & 0xFFFFFFFF)}:{port}"


def comparable(records) -> tuple[list, list]:
    """Calls as JSON lines and errors, with what a transformation legitimately changes
    (frame numbers, the tunnel, IPv6 addresses of IPv4 hosts) taken out."""
    calls, errors = [], []
    for r in records:
        if type(r) is Call:
            d = call_dict(r, call_outcome(r))
            d.pop("tunnel", None)
            d["client"], d["server"] = _unmap(d["client"]), _unmap(d["server"])
            for half in ("request", "response"):
                if d[half]:
                    d[half] = {k: v for k, v in d[half].items() if k != "frames"}
            d["errors"] = [{k: v for k, v in e.items() if k != "frame"} for e in d["errors"]]
            d["operation"] = _without_frames(d["operation"])
            calls.append(d)
        elif type(r) is ErrorRecord and r.stage != "capture":   # a file's own damage is not rewritten
            errors.append((r.stage, r.kind, r.reason))
    return calls, errors


def _without_frames(v):
    if isinstance(v, dict):
        return {k: _without_frames(x) for k, x in v.items() if "frame" not in k}
    if isinstance(v, list):
        return [_without_frames(x) for x in v]
    return v


def transcript(records) -> list[str]:
    return [line for line in TranscriptRenderer(frames=False).render(records) if not line.startswith("! capture:")]


@functools.lru_cache(maxsize=None)
def original(name):
    records, stats = analyse(_path(name))
    return comparable(records), transcript(records), stats


@needs_tshark
@pytest.mark.parametrize("name,transform", CASES, ids=[f"{n}-{t}" for n, t in CASES])
def test_transformed_capture_decodes_as_the_original(name, transform, tmp_path):
    src = _path(name)
    dst = tmp_path / f"{transform}.pcap"
    sensor.transform_capture(src, dst, *sensor.steps(transform))
    # First, that the rewrite is sound: tshark reassembles and decapsulates it to the same PDUs.
    assert tshark_pdus(dst) == tshark_pdus(src) and tshark_pdus(src)
    (calls, errors), lines, stats = original(name)
    records, tstats = analyse(dst)
    t_calls, t_errors = comparable(records)
    assert t_calls == calls
    assert t_errors == errors               # no anomaly where the original had none
    assert transcript(records) == lines
    assert (tstats.calls, tstats.pdus) == (stats.calls, stats.pdus)
    tunnelled = [r.tunnel for r in records if type(r) is Call]
    if transform.startswith(("frag", "qinq")):
        assert not any(tunnelled)
    else:
        # Every call names the sensor it came through (outer addresses, VNI ...).
        assert all(tunnelled)
        outer = tunnelled[0][0]
        if outer["proto"] != "mpls":
            assert (outer["src"], outer["dst"]) == (sensor.SENSOR, sensor.COLLECTOR)


def test_fragmented_create_keeps_its_command_line(tmp_path):
    """The issue's example: Win32_Process.Create's command line crossed a fragment and was lost."""
    dst = tmp_path / "frag.pcap"
    sensor.transform_capture(SAMPLE, dst, *sensor.steps("frag4-reverse-dup"))
    records, stats = analyse(dst)
    create = [r for r in records if type(r) is Call and r.method == "ExecMethod"]
    assert create and "CommandLine" in str(create[0].decoded)
    assert stats.as_dict()["ip_fragments"]["reassembled"] > 0
    assert stats.as_dict()["ip_fragments"]["duplicates"] > 0


def test_tunnel_names_the_vni_and_gre_key_in_json_lines(tmp_path):
    dst = tmp_path / "v.pcap"
    sensor.transform_capture(SAMPLE, dst, sensor.gre_ether(key=99), sensor.vxlan(vni=31337))
    records, _ = analyse(dst)
    call = next(r for r in records if type(r) is Call)
    d = call_dict(call, call_outcome(call))
    assert [layer["proto"] for layer in d["tunnel"]] == ["vxlan", "gre"]
    assert d["tunnel"][0]["vni"] == 31337 and d["tunnel"][1]["key"] == 99
    assert d["client"].startswith("10.") or d["client"].startswith("192.168.")   # the inner host, not the sensor


def test_tunnels_nested_past_the_limit_are_refused_not_recursed():
    from wmiscope.dissectors.capture import Decapsulation, counters, open_capture, reset_counters, tcp_segment
    from wmiscope.dissectors.encap import MAX_DEPTH

    frame = bytes.fromhex("020000000001020000000002") + b"\x08\x00"
    inner = sensor._ip_packet(next(f for _, _, _, f in open_capture(SAMPLE) if len(f) > 100))
    for depth in (MAX_DEPTH, MAX_DEPTH + 1, 500):
        pkt = inner
        for _ in range(depth):
            pkt = sensor._ipv4_header(b"\1\1\1\1", b"\2\2\2\2", 4, len(pkt)) + pkt
        reset_counters()
        seg = tcp_segment(1, frame + pkt, Decapsulation(lambda e: None), 1, 0.0)
        assert (seg is not None) == (depth <= MAX_DEPTH)
        if seg is not None:
            assert len(seg.tunnel) == depth
        else:
            assert counters["not_tcp"] == 1


_FUZZ_BASE = None


def _fuzz_frames():
    """A few real frames of the clear sample, each through a tunnel or fragmentation."""
    global _FUZZ_BASE
    if _FUZZ_BASE is None:
        from wmiscope.dissectors.capture import open_capture
        plain = [d for _, _, _, d in open_capture(SAMPLE)][:8]
        out = []
        for name in ("frag4-reverse-dup", "frag6", "vxlan-fragmented", "erspan3-qinq-ipv6", "mpls-ether",
                     "gre-ether", "geneve", "ip6ip"):
            steps = sensor.steps(name)
            for frame in plain:
                frames = [frame]
                for step in steps:
                    frames = [o for f in frames for o in step(f)]
                out.extend(frames)
        _FUZZ_BASE = out
    return _FUZZ_BASE


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_tunnels_and_fragments_never_raise(data):
    """Flipped, cut and repeated octets in tunnel and fragment headers: tcp_segment
    returns a segment or None, anomalies are named records, nothing raises."""
    from wmiscope.dissectors.capture import Decapsulation, tcp_segment
    from wmiscope.dissectors.ipfrag import ANOMALIES

    base = _fuzz_frames()
    errors = []
    ctx = Decapsulation(errors.append, max_datagrams=4, max_bytes=20_000)
    for i in range(data.draw(st.integers(1, 12))):
        frame = bytearray(base[data.draw(st.integers(0, len(base) - 1))])
        for _ in range(data.draw(st.integers(0, 4))):
            frame[data.draw(st.integers(0, len(frame) - 1))] = data.draw(st.integers(0, 255))
        if data.draw(st.booleans()):
            frame = frame[:data.draw(st.integers(0, len(frame)))]
        seg = tcp_segment(1, bytes(frame), ctx, i + 1, float(data.draw(st.integers(0, 200))))
        assert seg is None or isinstance(seg.payload, bytes)
        assert ctx.frag.pending <= 4 and ctx.frag.pending_bytes <= 20_000
    ctx.finish()
    assert all(e.kind in ANOMALIES and e.frame for e in errors)
