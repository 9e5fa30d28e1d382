"""Memory stays bounded however long the traffic (issue 12): the tables that grow with
traffic stop at their bounds, and the short soak leaves nothing held at the end."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

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
