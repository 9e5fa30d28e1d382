"""IP fragment reassembly (dissectors/ipfrag.py): the RFC rules, hostile fragments, bounded memory."""

from __future__ import annotations

import random
import socket
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from wmiscope.dissectors.jsonl import error_dict
from wmiscope.dissectors.capture import Decapsulation, tcp_segment
from wmiscope.dissectors.ipfrag import ANOMALIES, FragmentReassembler
from wmiscope.dissectors.pipeline import analyse
from wmiscope.synth.wire import PcapWriter

A, B = socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2")
KEY4 = (4, A + B, 6, 77)
KEY6 = (6, b"\x20" * 32, 99)


def collect():
    errors = []
    return FragmentReassembler(errors.append), errors


def kinds(errors):
    return [e.kind for e in errors]


def test_out_of_order_and_duplicate_fragments_reassemble():
    r, errors = collect()
    data = bytes(range(256)) * 3
    assert r.add(KEY4, False, 1, 0.0, 512, False, data[512:], 20) is None
    assert r.add(KEY4, False, 2, 0.0, 0, True, data[:256], 20) is None
    assert r.add(KEY4, False, 3, 0.0, 0, True, data[:256], 20) is None       # exact duplicate
    assert r.add(KEY4, False, 4, 0.0, 256, True, data[256:512], 20) == data
    assert r.add(KEY4, False, 5, 0.1, 256, True, data[256:512], 20) is None  # a copy after completion
    assert errors == [] and r.stats["duplicates"] == 2 and r.pending == 0


def test_ipv4_overlap_with_different_octets_keeps_the_first_and_is_named():
    r, errors = collect()
    assert r.add(KEY4, False, 1, 0.0, 0, True, b"A" * 16, 20) is None
    whole = r.add(KEY4, False, 2, 0.0, 8, False, b"B" * 16, 20)
    assert whole == b"A" * 16 + b"B" * 8
    assert kinds(errors) == ["ip.frag_overlap"] and errors[0].frame == 2 and errors[0].stage == "ip"
    assert error_dict(errors[0])["kind"] == "ip.frag_overlap"


def test_ipv6_overlap_discards_the_datagram_and_its_later_fragments():
    r, errors = collect()
    assert r.add(KEY6, True, 1, 0.0, 0, True, b"A" * 16, 0) is None
    assert r.add(KEY6, True, 2, 0.0, 8, True, b"A" * 16, 0) is None          # overlaps, even with equal octets
    assert r.add(KEY6, True, 3, 0.0, 24, False, b"C" * 8, 0) is None         # would have completed it
    assert r.add(KEY6, True, 4, 0.0, 16, True, b"D" * 8, 0) is None
    assert kinds(errors) == ["ip.frag_overlap_dropped"] and r.pending == 0


def test_too_big_bad_length_and_inconsistent_end():
    r, errors = collect()
    assert r.add(KEY4, False, 1, 0.0, 65528, False, b"x" * 16, 20) is None
    assert r.add(KEY6, True, 2, 0.0, 0, True, b"x" * 13, 0) is None
    k = (4, A + B, 17, 5)
    r.add(k, False, 3, 0.0, 0, True, b"y" * 64, 20)
    assert r.add(k, False, 4, 0.0, 16, False, b"y" * 8, 20) is None          # ends before held octets
    assert kinds(errors) == ["ip.frag_too_big", "ip.frag_bad_length", "ip.frag_inconsistent_end"]
    # The id was reused (segmentation offload, wrap-round): the newcomer starts the datagram afresh.
    assert r.add(k, False, 5, 0.0, 0, True, b"z" * 16, 20) == b"z" * 16 + b"y" * 8
    assert all(e.kind in ANOMALIES for e in errors)


def test_timeouts_in_capture_time():
    r, errors = collect()
    r.add(KEY4, False, 1, 100.0, 0, True, b"x" * 8, 20)
    r.add(KEY6, True, 2, 130.0, 0, True, b"x" * 8, 0)
    r.add((4, A + B, 6, 1), False, 3, 161.0, 0, True, b"x" * 8, 20)          # the first one's 60 s passed
    assert kinds(errors) == ["ip.frag_timeout"] and errors[0].frame == 1
    assert r.add(KEY4, False, 4, 161.0, 8, False, b"y" * 8, 20) is None      # its rest starts afresh
    r.add((4, A + B, 6, 2), False, 5, 191.0, 0, True, b"x" * 8, 20)
    assert kinds(errors) == ["ip.frag_timeout"] * 2 and errors[1].frame == 2
    r.finish()
    assert kinds(errors)[2:] == ["ip.frag_incomplete"] * 3 and r.pending == 0


def test_thousands_of_never_completed_datagrams_stay_bounded():
    r, errors = collect()
    for i in range(10_000):
        r.add((4, A + B, 6, i), False, i + 1, i * 0.001, 0, True, b"z" * 1480, 20)
        assert r.pending <= r.max_datagrams
    assert r.pending == r.max_datagrams and r.pending_bytes == r.max_datagrams * 1480
    assert kinds(errors) == ["ip.frag_pending_limit"] * (10_000 - r.max_datagrams)
    small = FragmentReassembler(errors.append, max_bytes=100_000)
    for i in range(1000):
        small.add((4, A + B, 6, i), False, i, 0.0, 0, True, b"z" * 1480, 20)
        assert small.pending_bytes <= 100_000


def test_too_many_fragments_in_one_datagram():
    r, errors = collect()
    for i in range(r.max_fragments + 1):
        r.add(KEY4, False, i, 0.0, i * 8, True, b"q" * 8, 20)
    assert kinds(errors) == ["ip.frag_too_many"] and r.pending == 0


@settings(max_examples=150, deadline=None)
@given(payload=st.binary(min_size=1, max_size=3000), cut=st.integers(1, 200), seed=st.integers(0, 2**32),
       v6=st.booleans())
def test_any_fragmentation_in_any_order_reassembles(payload, cut, seed, v6):
    chunk = cut * 8
    pieces = [(off, payload[off:off + chunk]) for off in range(0, len(payload), chunk)]
    random.Random(seed).shuffle(pieces)
    r, errors = collect()
    key = KEY6 if v6 else KEY4
    results = [r.add(key, v6, i, 0.0, off, off + len(p) < len(payload), p, 0) for i, (off, p) in enumerate(pieces)]
    assert results[-1] == payload and not any(results[:-1]) and errors == []


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.booleans(), st.integers(0, 70000), st.booleans(),
                          st.binary(max_size=64), st.floats(0, 200)), max_size=60))
def test_hostile_fragments_never_raise_and_keep_the_books(frags):
    r, errors = collect()
    r.max_datagrams, r.max_fragments = 3, 8
    for ident, v6, offset, more, data, ts in frags:
        whole = r.add((6 if v6 else 4, b"k", ident), v6, 1, ts, offset, more, data, 0 if v6 else 20)
        assert whole is None or len(whole) <= 65535
        assert r.pending <= 3
        assert r.pending_bytes == sum(dg.size for dg in r._pending.values())
    assert all(e.kind in ANOMALIES and e.frame is not None for e in errors)


def _ipv4_frag(ident, offset, more, payload, proto=6):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, (0x2000 if more else 0) | offset >> 3,
                    64, proto, 0, A, B)
    return b"\x02" * 12 + b"\x08\x00" + h + payload


def test_the_pipeline_reports_hostile_fragments_as_located_records(tmp_path):
    tcp = struct.pack("!HHIIBBHHH", 50000, 135, 1, 0, 0x50, 0x18, 8192, 0, 0)
    p = tmp_path / "hostile.pcap"
    with PcapWriter(p) as w:
        w.write(1.0, _ipv4_frag(1, 0, True, tcp + b"A" * 20))
        w.write(1.1, _ipv4_frag(1, 8, False, b"B" * 40))               # rewrites octets 8..40
        w.write(1.2, _ipv4_frag(2, 65528, False, b"C" * 16))
        w.write(1.3, _ipv4_frag(3, 0, True, tcp + b"D" * 20))         # never completed
    records, stats = analyse(p)
    errors = [(e.kind, e.frame) for e in records if type(e).__name__ == "ErrorRecord" and e.stage == "ip"]
    assert errors == [("ip.frag_overlap", 2), ("ip.frag_too_big", 3), ("ip.frag_incomplete", 4)]
    assert stats.as_dict()["ip_fragments"]["reassembled"] == 1


def test_decapsulation_without_state_keeps_the_old_first_fragment_behaviour():
    first = _ipv4_frag(9, 0, True, struct.pack("!HHIIBBHHH", 1, 2, 3, 0, 0x50, 0x18, 1, 0, 0) + b"xyz")
    assert tcp_segment(1, first).payload == b"xyz"
    ctx = Decapsulation(lambda e: None)
    assert tcp_segment(1, first, ctx, 1, 0.0) is None and ctx.frag.pending == 1
