"""Memory stays bounded however long the traffic (issue 12): the tables that grow with
traffic stop at their bounds, and the short soak leaves nothing held at the end."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import pytest

from wmiscope.dissectors import pipeline, tcp
from wmiscope.dissectors.dcerpc import DceRpcConnection
from wmiscope.dissectors.dcom import IpidRegistry
from wmiscope.dissectors.records import Call, ErrorRecord
from wmiscope.dissectors.tcp import TcpConnection

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("wmiscope_soak", ROOT / "scripts" / "soak.py")
soak = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(soak)


def test_ipid_registry_forgets_the_least_recently_used():
    reg = IpidRegistry(max_ipids=100, max_oxids=10)
    keep = "00000000-0000-0000-0000-0000000000ff"
    reg.learn_ipid(keep, "423ec01e-2e35-11d2-b604-00104b703efd")
    for i in range(1000):
        reg.learn_ipid(f"{i:08x}-0000-0000-0000-000000000001", oxid=i)
        reg.learn_oxid(i)
        reg.lookup(keep)                # in use: never the one forgotten
    assert len(reg.ipids) == 100 and len(reg.oxids) == 10 and reg.forgotten == 901 + 990
    assert reg.lookup(keep).iid == "423ec01e-2e35-11d2-b604-00104b703efd"


def request_fragment(call_id: int, stub: bytes, first: bool) -> bytes:
    """A request fragment without PFC_LAST_FRAG (the rest of the call never comes)."""
    return struct.pack("<BBBB4sHHIIHH", 5, 0, 0, 0x01 if first else 0, b"\x10\0\0\0", 24 + len(stub), 0, call_id,
                       len(stub), 0, 3) + stub


def test_open_calls_hold_at_most_their_budget_and_give_it_back():
    out = []
    held = [0]
    rpc = DceRpcConnection(TcpConnection(0, ("10.0.0.2", 50000), ("10.0.0.1", 135), 1, "syn"), out.append,
                           max_held_bytes=100_000, held=held)
    peak = 0
    for i in range(40):                 # 40 calls of 10 x 4000 octets, none finished
        for j in range(10):
            rpc.on_data(0, request_fragment(i + 1, bytes(4000), j == 0), i * 10 + j + 1, 0.0)
            peak = max(peak, held[0])
    assert peak <= 100_000
    dropped = [e for e in out if type(e) is ErrorRecord and "its data is dropped" in e.reason]
    assert dropped and all(e.kind == "dcerpc.stub_too_large" for e in dropped)
    rpc.on_close(1000)
    calls = [c for c in out if type(c) is Call]
    assert len(calls) == 40 and held == [0]         # every octet given back


def test_retransmission_memory_is_a_tail_not_a_segment():
    """What each live connection keeps to check retransmissions: a 2 KB tail, not the
    60 KB offloaded segment (10,000 live connections would hold over a gigabyte)."""
    from wmiscope.dissectors.capture import TcpSegment

    r = tcp.TcpReassembler(lambda conn: tcp.NullHandler())
    for seq in (1000, 61000):           # the first segment opens the flow, the second is in order
        r.feed(1, 0.0, TcpSegment("10.0.0.2", 50000, "10.0.0.1", 445, seq, 0, tcp.ACK, bytes(60000)))
    halves = list(r._flows.values())
    assert halves and all(len(h.last) <= tcp.LAST_KEPT for h in halves)


def test_a_short_soak_leaves_nothing_held():
    """20 MB of the soak's traffic (sessions, SMB2 bulk, hostile noise) through one
    analysis: calls decoded, noise reported, and at the end no stub octet held, no
    undecided octet, the IPID registry within its bound."""
    from wmiscope.dissectors.pipeline import Analysis

    analysis = Analysis(objects=False)
    records = list(analysis.run(soak.frames(20_000_000, seed=3)))
    s = analysis.stats
    assert s.calls > 500 and s.calls_by_outcome["decoded"] > 0 and sum(s.anomalies.values()) > 0
    assert s.other_flows > 0 and s.rpc_flows > 0
    assert analysis._rpc_held == [0] and analysis._undecided == 0
    assert len(analysis.registry.ipids) <= analysis.registry.max_ipids
    assert all(r.kind in pipeline.BY_NAME for r in records if type(r) is ErrorRecord)


# -- the connection tables (dissectors/tcp.py), through the whole pipeline, at their real bounds

def _rpc_request(call_id: int) -> bytes:
    """A whole request PDU (PFC_FIRST | PFC_LAST) with an 8-octet stub."""
    return struct.pack("<BBBB4sHHIIHH", 5, 0, 0, 3, b"\x10\0\0\0", 32, 0, call_id, 8, 0, 3) + bytes(8)


def _host(n: int, net: int = 10) -> bytes:
    return bytes((net, (n >> 16) & 255, (n >> 8) & 255, n & 255))


def test_each_connection_table_stops_at_its_bound():
    """More DCE/RPC connections than 10,000, more others than 1,024, more closed ones than
    8,192: each table holds at most its bound while the traffic flows, every DCE/RPC
    eviction has its record, the others' one per batch, and stats count them."""
    from wmiscope.dissectors.pipeline import Analysis

    analysis = Analysis(objects=False)
    seen = {}
    server = bytes((192, 0, 2, 1))

    def frames():
        n = 0

        def frame(data):
            nonlocal n
            n += 1
            return n, 1_700_000_000 + n * 1e-6, 1, data

        for i in range(10_500):             # DCE/RPC seen from its middle, never closed
            yield frame(soak._tcp_frame(_host(i), 50000, server, 135, 1, _rpc_request(i)))
        for i in range(1_500):              # half-open handshakes (a scan)
            yield frame(soak._tcp_frame(_host(i, 11), 40000, server, 445, 1, b"", 0x02))
        for i in range(9_000):              # short connections, closed by RST
            yield frame(soak._tcp_frame(_host(i, 12), 40000, server, 80, 1, b"GET / HTTP/1.1\r\n\r\n"))
            yield frame(soak._tcp_frame(server, 80, _host(i, 12), 40000, 1, b"", 0x04))
        r = analysis._reassembler
        seen.update(rpc=len(r._live), other=len(r._other), closed=len(r._closed), flows=len(r._flows))

    records = [rec for rec in analysis.run(frames()) if type(rec) is ErrorRecord]
    tcp_stats = analysis.stats.tcp
    assert 8_750 <= seen["rpc"] <= 10_000 and seen["other"] <= 1_024 and seen["closed"] == 8_192
    assert seen["flows"] == 2 * (seen["rpc"] + seen["other"])
    assert tcp_stats["evicted"] >= 500 and tcp_stats["evicted_other"] >= 1_500 - 1_024
    kinds = [rec.kind for rec in records]
    assert kinds.count("tcp.connection_evicted") == tcp_stats["evicted"]
    assert 0 < kinds.count("tcp.other_connections_evicted") < tcp_stats["evicted_other"] / 50
    forgotten = analysis.stats.as_dict()["forgotten"]
    assert forgotten["tcp_connections"] == tcp_stats["evicted"]
    assert forgotten["tcp_other_connections"] == tcp_stats["evicted_other"]


def test_an_idle_connection_gives_back_its_stubs_and_is_set_aside():
    """Requests whose last fragment never comes (the soak's hostile kind 2), then 80 s of
    capture time in which other connections open (idleness is noticed at the sweeps, made
    as connections open: within twice the 30 s): the held stubs are given back, each call
    given up with its record; holding no session state, the connections are set aside
    (their numbers and sequence numbers only)."""
    import random

    from wmiscope.dissectors.pipeline import Analysis

    analysis = Analysis(objects=False)
    rnd = random.Random(5)
    held = []

    def frames():
        n = 0
        for k in range(20):
            for data in soak._hostile(rnd, 5 * k + 2):
                n += 1
                yield n, 1000.0 + n * 1e-3, 1, data
        held.append(analysis._rpc_held[0])
        for i in range(800):                # from 40 s later, new connections open: the sweeps run then
            n += 1
            yield n, 1040.0 + i * 0.1, 1, soak._tcp_frame(_host(i, 11), 40000, bytes((192, 0, 2, 1)), 445, 1, b"", 2)
        held.append(analysis._rpc_held[0])
        held.append((len(analysis._reassembler._live), len(analysis._reassembler._dormant)))

    records = list(analysis.run(frames()))
    assert held == [20 * 12 * 1024, 0, (0, 40)]
    calls = [r for r in records if type(r) is Call]
    assert len(calls) == 20
    assert all([e.kind for e in c.errors][:2] == ["dcerpc.idle_released", "dcerpc.last_fragment_missing"]
               for c in calls)
    assert analysis.stats.tcp["idle_released"] == analysis.stats.tcp["dormant"] == 20


def _paused(path, pause_after: int, resumes: bool = True, pause_ends=None):
    """A sample's frames with an hour of silence after frame pause_after, while a scan opens
    200 connections (then pause_ends() is called); without what follows unless resumes."""
    from wmiscope.dissectors.capture import open_capture

    n = 0
    for frame, ts, linktype, data in open_capture(path):
        if frame > pause_after and not resumes:
            break
        n += 1
        yield n, ts + (3600 if frame > pause_after else 0), linktype, data
        if frame == pause_after:
            for i in range(200):
                n += 1
                yield n, ts + 10 + i * 15, 1, soak._tcp_frame(_host(i, 11), 40000, bytes((192, 0, 2, 1)), 445,
                                                             1, b"", 2)
            if pause_ends is not None:
                pause_ends()


def test_a_sealed_session_that_idles_an_hour_still_decrypts():
    """The NTLM-sealed sample with an hour of silence after its login, while a scan opens
    200 connections: the idle connection gave back its buffers but kept its security
    context and keys, so the calls after the pause decrypt as without it."""
    from session_util import sample_credentials

    from wmiscope.dissectors.pipeline import Analysis

    path = ROOT / "pcaps" / "wmi-process-create-ntlm-sealed.pcap"
    plain = [r for r in Analysis(credentials=sample_credentials()).run(path) if type(r) is Call]
    pause_after = plain[0].resp_frames[1]

    analysis = Analysis(credentials=sample_credentials())
    calls = [r for r in analysis.run(_paused(path, pause_after)) if type(r) is Call]
    assert analysis.stats.tcp["idle_released"] >= 1
    assert [(c.method, c.req_decrypted, c.resp_decrypted) for c in calls] == \
        [("NTLMLogin", True, True), ("GetObject", True, True), ("ExecMethod", True, True)]
    assert [(c.req_stub, c.resp_stub, c.errors) for c in calls] == [(c.req_stub, c.resp_stub, c.errors) for c in plain]


@pytest.mark.parametrize("sample", ["wmi-process-create.pcap", "wmi-process-create-ntlm-sealed.pcap",
                                    "wmi-process-create-kerberos-sealed.pcap"])
@pytest.mark.parametrize("resumes", [True, False])
def test_an_idle_connection_set_aside_compact_goes_on_as_before(monkeypatch, sample, resumes):
    """A connection that idles an hour after its first call, with its session state (bind,
    security context): set aside in its compact form (bytes in the live table, a hundred octets) while
    a scan opens 200 connections, then woken by its next segment (resumes) or by the end of
    the capture: every record and counter is what it is when it stays as it was."""
    from wmiscope.dissectors.pipeline import Analysis

    path = ROOT / "pcaps" / sample
    pause_after = next(r for r in Analysis().run(path) if type(r) is Call).resp_frames[1]
    resting = []

    def run():
        analysis = Analysis(want_pdus=True)

        def pause_ends():
            live = analysis._reassembler._live.values()
            resting.append([len(c) - tcp._REST.size for c in live if type(c) is bytes])

        records = [repr(r) for r in analysis.run(_paused(path, pause_after, resumes, pause_ends))]
        return records, analysis.stats.as_dict()

    compact = run()
    monkeypatch.setattr(pipeline._Detector, "set_aside", lambda self, extra: None)
    kept = run()
    assert len(resting[0]) == 1 and resting[0][0] < 400 and resting[1] == []
    assert compact == kept
    assert compact[1]["tcp"]["idle_released"] >= 1 and compact[1]["calls"] == (3 if resumes else 1)
