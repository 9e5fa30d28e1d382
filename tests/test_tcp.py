"""TCP reassembly: the byte streams a StreamHandler receives.

The real captures are checked against tshark connection by connection (tcp.stream
numbering, bytes per direction, bytes missing) and byte for byte against
``tshark -z follow,tcp,raw``; a synthetic capture with every awkward case is
checked against tshark the same way; the rest are unit cases and two
property tests.
"""

from __future__ import annotations

import functools
import random
import re
import subprocess
from collections import OrderedDict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tshark_util import CAPTURES, have_tshark
from wmiscope.dissectors.capture import TcpSegment, open_capture, tcp_segment
from wmiscope.dissectors.tcp import ACK, FIN, PSH, RST, SYN, TcpReassembler
from wmiscope.synth import PcapWriter, ipv4_tcp_frame

REAL = sorted(p.name for p in CAPTURES.glob("*") if p.suffix in (".pcap", ".pcapng", ".cap"))
needs_tshark = pytest.mark.skipif(not have_tshark(), reason="tshark not installed")
MASK = 0xFFFFFFFF


class Recorder:
    """A StreamHandler that remembers everything it is told."""

    def __init__(self, conn):
        self.conn = conn
        self.events = []
        self.data = [bytearray(), bytearray()]
        self.closed = None

    def on_data(self, direction, data, frame, ts):
        self.events.append(("data", direction, frame, bytes(data)))
        self.data[direction] += data

    def on_gap(self, direction, missing, frame):
        self.events.append(("gap", direction, missing, frame))

    def on_close(self, frame):
        self.closed = frame


def reassemble(source, recorder=Recorder, finish=True, **kw):
    """source: a capture path, or (frame, TcpSegment) pairs. Returns (reassembler, recorders)."""
    recorders = []
    errors = []

    def factory(conn):
        recorders.append(recorder(conn))
        return recorders[-1]

    r = TcpReassembler(factory, errors=errors.append, **kw)
    recorder.reassembler = r
    r.errors_seen = errors
    if isinstance(source, list):
        for frame, seg in source:
            r.feed(frame, float(frame), seg)
    else:
        for frame, ts, linktype, data in open_capture(source):
            seg = tcp_segment(linktype, data)
            if seg is not None:
                r.feed(frame, ts, seg)
    if finish:
        r.finish()
    return r, recorders


@functools.lru_cache(maxsize=None)
def tshark_flows(path):
    """tcp.stream -> first frame, and (stream, ip, port) -> (bytes seen, bytes missing).

    Bytes seen: the union of the [seq, seq+len) ranges of a direction from its
    first sequence number on; missing: the holes between them up to the last byte
    or the FIN.
    """
    out = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.number", "-e", "tcp.stream",
         "-e", "ip.src", "-e", "ipv6.src", "-e", "tcp.srcport", "-e", "tcp.seq_raw", "-e", "tcp.len",
         "-e", "tcp.flags"], capture_output=True, text=True).stdout
    firsts, per = {}, OrderedDict()
    for line in out.splitlines():
        f = line.split("\t")
        if not f[1]:
            continue
        stream, src, port = int(f[1]), f[2] or f[3], int(f[4])
        seq, length, flags = int(f[5]), int(f[6]), int(f[7], 16)
        firsts.setdefault(stream, int(f[0]))
        d = per.setdefault((stream, src, port), {"first": None, "ranges": [], "fin": None})
        if d["first"] is None:
            d["first"] = (seq + 1) & MASK if flags & SYN else seq
        rel = (seq - d["first"]) & MASK
        if rel >= 1 << 31:
            rel -= 1 << 32
        if flags & SYN:
            rel += 1
        if length:
            d["ranges"].append((rel, rel + length))
        if flags & FIN and d["fin"] is None:
            d["fin"] = rel + length
    result = {}
    for key, d in per.items():
        seen, cur, last = 0, 0, 0
        for a, b in sorted(d["ranges"]):
            a = max(a, cur)
            if b > a:
                seen += b - a
                cur = b
            last = max(last, b)
        if d["fin"] is not None:
            last = max(last, d["fin"])
        result[key] = (seen, last - seen)
    return firsts, result


HEX_LINE = re.compile(r"\t?[0-9a-f]+")


def follow(path, streams):
    """Per stream, the bytes each node sent, as ``tshark -z follow,tcp,raw`` shows them."""
    args = ["tshark", "-r", str(path), "-q"]
    for s in streams:
        args += ["-z", f"follow,tcp,raw,{s}"]
    out = subprocess.run(args, capture_output=True, text=True).stdout
    result, cur = {}, None
    for line in out.splitlines():
        if line.startswith("Filter: tcp.stream eq "):
            cur = {"nodes": [], "data": [bytearray(), bytearray()]}
            result[int(line.split()[-1])] = cur
        elif line.startswith("Node "):
            host, _, port = line.split(": ", 1)[1].rpartition(":")
            cur["nodes"].append((host, int(port)))
        elif cur is not None and HEX_LINE.fullmatch(line):
            node = 1 if line.startswith("\t") else 0
            cur["data"][node] += bytes.fromhex(line.strip())
    return result


def check_against_tshark(path, recorders):
    firsts, flows = tshark_flows(path)
    assert [(h.conn.index, h.conn.first_frame) for h in recorders] == sorted(firsts.items())
    for h in recorders:
        c = h.conn
        for d, (ip, port) in enumerate((c.client, c.server)):
            assert (len(h.data[d]), c.gap_bytes[d]) == flows.get((c.index, ip, port), (0, 0)), (c, d)
            assert c.bytes[d] == len(h.data[d])


# --- real captures ---------------------------------------------------------------

@needs_tshark
@pytest.mark.parametrize("name", REAL)
def test_real_captures_match_tshark_streams(name):
    r, recorders = reassemble(CAPTURES / name)
    check_against_tshark(CAPTURES / name, recorders)
    assert all(h.closed is not None for h in recorders)
    assert r.stats["live"] == 0 and r.stats["handler_errors"] == 0
    assert r.stats["bytes"] == sum(len(h.data[0]) + len(h.data[1]) for h in recorders)


@needs_tshark
@pytest.mark.parametrize("name", ["wmiexecpro-create-start-service.pcap", "wmimplant.pcap",
                                  "dcom_mmc20_application.pcapng"])
def test_real_stream_contents_match_tshark_follow(name):
    r, recorders = reassemble(CAPTURES / name)
    followed = follow(CAPTURES / name, [h.conn.index for h in recorders])
    for h in recorders:
        f = followed[h.conn.index]
        # tshark writes a hole as "[N bytes missing in capture file]" and a NUL.
        shown = [bytearray(), bytearray()]
        for ev in h.events:
            if ev[0] == "data":
                shown[ev[1]] += ev[3]
            else:
                shown[ev[1]] += b"[%d bytes missing in capture file]\0" % ev[2]
        for node, endpoint in enumerate(f["nodes"]):
            d = 0 if endpoint == h.conn.client else 1
            assert bytes(shown[d]) == bytes(f["data"][node]), (h.conn, node)


def test_wmiexecpro_offload_copies_are_retransmissions():
    """The capturing host saw each large send twice: as one TSO segment and as MSS pieces."""
    r, recorders = reassemble(CAPTURES / "wmiexecpro-create-start-service.pcap")
    assert r.stats["retransmissions"] == 111 and r.stats["gaps"] == 0
    conn1 = recorders[1]
    assert (conn1.conn.client, conn1.conn.server) == (("10.0.0.217", 35620), ("10.0.0.2", 49154))
    assert conn1.conn.client_known_by == "syn" and conn1.conn.closed_by == "fin"
    assert len(conn1.data[1]) == 66338 and len(conn1.data[0]) == 11222
    assert conn1.data[1][:3] == b"\x05\x00\x0c"         # bind_ack


def test_mmc20_starts_mid_connection_and_reports_its_gaps():
    r, recorders = reassemble(CAPTURES / "dcom_mmc20_application.pcapng")
    assert r.stats["gaps"] == 8 and r.stats["gap_bytes"] == 1140
    rpc = recorders[1]
    c = rpc.conn
    # No handshake: the DCE/RPC request type tells the client, not the (ephemeral) ports.
    assert c.client_known_by == "heuristic"
    assert c.client == ("172.16.66.1", 51662) and c.server == ("172.16.66.36", 60283)
    assert c.gaps == [4, 4] and c.gap_bytes == [580, 560]
    assert (len(rpc.data[0]), len(rpc.data[1])) == (5216, 5360)
    # Whole PDUs were lost: after each hole the stream resumes on a PDU header, and
    # the bytes reach the handler in capture order across both directions.
    events = rpc.events
    for i, ev in enumerate(events):
        if ev[0] == "gap":
            nxt = next(e for e in events[i + 1:] if e[0] == "data" and e[1] == ev[1])
            assert nxt[3][:2] == b"\x05\x00"
    frames = [e[2] for e in events if e[0] == "data"]
    assert frames == sorted(frames)
    assert ("gap", 0, 364, 6) in events                  # declared when frame 6 ACKs past it


# --- a synthetic capture of awkward cases, read by tshark too ---------------------------

class Wire:
    """Writes segments of TCP connections into a pcap, sequence numbers relative to each ISN."""

    def __init__(self, path):
        self.w = PcapWriter(path)
        self.t = 1_700_000_000.0
        self.frames = 0

    def seg(self, c, s, d, seq, ack, flags, payload=b""):
        src, dst = (c, s) if d == 0 else (s, c)
        self.t += 0.001
        self.frames = self.w.write(self.t, ipv4_tcp_frame(src[0], src[1], dst[0], dst[1],
                                                          seq & MASK, ack & MASK, flags, payload))
        return self.frames


class Conn:
    def __init__(self, wire, c, s, isn_c, isn_s):
        self.wire, self.c, self.s, self.isn = wire, c, s, [isn_c, isn_s]

    def handshake(self):
        self.wire.seg(self.c, self.s, 0, self.isn[0], 0, SYN)
        self.wire.seg(self.c, self.s, 1, self.isn[1], self.isn[0] + 1, SYN | ACK)
        self.wire.seg(self.c, self.s, 0, self.isn[0] + 1, self.isn[1] + 1, ACK)

    def data(self, d, off, payload, ack_off=0, flags=ACK | PSH):
        return self.wire.seg(self.c, self.s, d, self.isn[d] + 1 + off,
                             self.isn[1 - d] + 1 + ack_off, flags, payload)

    def ack(self, d, ack_off, off=0):
        return self.wire.seg(self.c, self.s, d, self.isn[d] + 1 + off, self.isn[1 - d] + 1 + ack_off, ACK)

    def fin(self, d, off, ack_off):
        return self.wire.seg(self.c, self.s, d, self.isn[d] + 1 + off, self.isn[1 - d] + 1 + ack_off,
                             FIN | ACK)


STREAM = bytes(random.Random(7).randrange(256) for _ in range(6000))


def build_scenarios(path):
    w = Wire(path)
    A, B = ("10.9.0.1", 135), ("10.9.0.2", 135)
    marks = {}
    # 0: out of order, retransmitted and overlapping segments, all bytes eventually present.
    c = Conn(w, ("10.9.0.1", 50001), A, 1000, 900000)
    c.handshake()
    c.data(0, 0, STREAM[0:1000])
    c.data(0, 2000, STREAM[2000:3000])                      # ahead of a hole
    c.data(0, 1000, STREAM[1000:2000])                      # fills it
    c.data(0, 1000, STREAM[1000:2000])                      # retransmission
    c.data(0, 2500, STREAM[2500:3500])                      # overlaps the end
    c.ack(1, 3500)
    c.data(1, 0, b"reply")
    c.fin(0, 3500, 5)
    c.fin(1, 5, 3501)
    c.ack(0, 6, 3501)
    # 1: a segment the capture missed: the peer ACKs past it.
    c = Conn(w, ("10.9.0.1", 50002), A, 5000, 600000)
    c.handshake()
    c.data(0, 0, STREAM[:500])
    c.data(0, 800, STREAM[800:1200])                        # 500..800 never captured
    marks["acked_past"] = c.ack(1, 1200)
    c.data(1, 0, b"ok")
    c.fin(0, 1200, 2)
    c.fin(1, 2, 1201)
    # 2: a hole nobody acknowledges, closed by FIN from both sides.
    c = Conn(w, ("10.9.0.1", 50003), A, 7000, 700000)
    c.handshake()
    c.data(0, 0, STREAM[:300])
    c.data(0, 400, STREAM[400:700])
    c.fin(0, 700, 0)
    marks["closing_fin"] = c.fin(1, 0, 300)
    # 3: sequence numbers wrap around 2**32, with reordering across the wrap.
    c = Conn(w, ("10.9.0.1", 50004), B, MASK - 1500, MASK - 10)
    c.handshake()
    c.data(0, 0, STREAM[:1000])
    c.data(0, 2000, STREAM[2000:3000])
    c.data(0, 1000, STREAM[1000:2000])
    c.data(1, 0, STREAM[:100], ack_off=3000)
    c.data(1, 100, STREAM[100:200], ack_off=3000)
    c.fin(0, 3000, 200)
    c.fin(1, 200, 3001)
    # 4 and 5: one 5-tuple, closed, then reused with a new ISN; 6: reused again, no FIN before.
    for isn in (100, 200000):
        c = Conn(w, ("10.9.0.1", 50005), B, isn, isn + 7)
        c.handshake()
        c.data(0, 0, b"first" if isn == 100 else b"second")
        c.fin(0, 5 if isn == 100 else 6, 0)
        c.fin(1, 0, 6 if isn == 100 else 7)
        c.ack(0, 1, 6 if isn == 100 else 7)
    c = Conn(w, ("10.9.0.1", 50005), B, 900000, 42)
    c.handshake()
    c.data(0, 0, b"third")
    marks["retransmitted_syn"] = w.seg(c.c, c.s, 0, 900000, 0, SYN)     # same ISN: the same connection
    # 7: the same 5-tuple with a SYN of another ISN while still open: a new connection (8).
    c2 = Conn(w, ("10.9.0.1", 50005), B, 123456, 654321)
    c2.handshake()
    c2.data(0, 0, b"fourth")
    # 8 -> index 8; then 9: seen from its middle, keep-alive and a zero-window probe.
    c = Conn(w, ("10.9.0.3", 49999), ("10.9.0.4", 55000), 3000, 4000)
    c.data(0, 0, b"\x05\x00\x00\x03" + bytes(12) + b"request")      # DCE/RPC request: client
    c.data(1, 0, b"\x05\x00\x02\x03" + bytes(12) + b"response", ack_off=23)
    w.seg(c.c, c.s, 0, 3000 + 1 + 22, 4000 + 1 + 24, ACK, b"t")    # keep-alive: one old octet
    c.data(0, 23, b"Z", ack_off=24)                                  # zero-window probe: new octet
    c.data(0, 23, b"Zmore", ack_off=24)                              # then the real segment
    w.w.close()
    return marks


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory):
    path = tmp_path_factory.mktemp("tcp") / "scenarios.pcap"
    marks = build_scenarios(path)
    r, recorders = reassemble(path)
    return path, marks, r, recorders


@needs_tshark
def test_synthetic_cases_match_tshark(scenarios):
    path, _, _, recorders = scenarios
    check_against_tshark(path, recorders)


def test_synthetic_cases(scenarios):
    _, marks, r, rec = scenarios
    assert len(rec) == 9
    # out of order / retransmitted / overlapping: every byte once, in order
    assert bytes(rec[0].data[0]) == STREAM[:3500] and bytes(rec[0].data[1]) == b"reply"
    assert [e[0] for e in rec[0].events].count("gap") == 0
    assert rec[0].conn.closed_by == "fin"
    # missing segment proved lost by the ACK: the gap comes at that frame, data goes on
    gaps = [e for e in rec[1].events if e[0] == "gap"]
    assert gaps == [("gap", 0, 300, marks["acked_past"])]
    assert bytes(rec[1].data[0]) == STREAM[:500] + STREAM[800:1200]
    # hole closed by the FINs
    assert [e for e in rec[2].events if e[0] == "gap"] == [("gap", 0, 100, marks["closing_fin"])]
    assert bytes(rec[2].data[0]) == STREAM[:300] + STREAM[400:700]
    # wraparound
    assert bytes(rec[3].data[0]) == STREAM[:3000] and bytes(rec[3].data[1]) == STREAM[:200]
    # reuse of one 5-tuple: four connections
    assert [bytes(h.data[0]) for h in rec[4:8]] == [b"first", b"second", b"third", b"fourth"]
    assert [h.conn.closed_by for h in rec[4:8]] == ["fin", "fin", "reused", "finish"]
    assert r.stats["reused"] == 3
    # mid-connection, keep-alive, zero-window probe
    mid = rec[8]
    assert mid.conn.client == ("10.9.0.3", 49999) and mid.conn.client_known_by == "heuristic"
    assert bytes(mid.data[0]).endswith(b"requestZmore") and bytes(mid.data[1]).endswith(b"response")
    assert r.stats["keepalives"] == 1
    assert r.stats["overlap_conflicts"] == 0            # a keep-alive's octet is no conflict


# --- unit cases -----------------------------------------------------------------------

CLIENT, SERVER = ("192.0.2.1", 49800), ("192.0.2.2", 135)


def seg(d, seq, payload=b"", flags=ACK, ack=0, client=CLIENT, server=SERVER):
    (src, sport), (dst, dport) = (client, server) if d == 0 else (server, client)
    return TcpSegment(src, sport, dst, dport, seq & MASK, ack & MASK, flags, payload)


def numbered(*segs):
    return [(i + 1, s) for i, s in enumerate(segs)]


def test_in_order_stream_takes_the_fast_path_and_sees_fin_close():
    r, (h,) = reassemble(numbered(
        seg(0, 10, flags=SYN), seg(1, 50, flags=SYN | ACK, ack=11), seg(0, 11, ack=51),
        seg(0, 11, b"abc", ack=51), seg(0, 14, b"def", ack=51), seg(1, 51, b"xyz", ack=17),
        seg(0, 17, flags=FIN | ACK, ack=54), seg(1, 54, flags=FIN | ACK, ack=18), seg(0, 18, ack=55)))
    assert h.events == [("data", 0, 4, b"abc"), ("data", 0, 5, b"def"), ("data", 1, 6, b"xyz")]
    assert h.closed == 8 and h.conn.closed_by == "fin" and h.conn.client_known_by == "syn"
    assert r.stats["late_segments"] == 1                # the last ACK, after the close
    assert r.stats["flows"] == 1 and r._flows == {} and r._live == {}


def test_overlap_conflict_keeps_first_bytes_and_is_reported():
    r, (h,) = reassemble(numbered(
        seg(0, 100, b"AAAA"), seg(0, 108, b"CCCC"), seg(0, 104, b"BBBBXXXX"),   # XXXX clashes with CCCC
        seg(0, 108, b"CCZZ")))                                     # clashes with the last delivered
    assert bytes(h.data[0]) == b"AAAABBBBCCCC"
    assert r.stats["overlap_conflicts"] == 2
    assert all(e.stage == "tcp" and "differ" in e.reason for e in r.errors_seen)
    assert [e.frame for e in r.errors_seen] == [3, 4]


def test_pending_limit_declares_the_hole_and_skips_ahead():
    segs = [seg(0, 0, b"x" * 100)] + [seg(0, 200 + 100 * i, b"y" * 100) for i in range(12)]
    r, (h,) = reassemble(numbered(*segs), max_pending_bytes=1000)
    assert h.events[1] == ("gap", 0, 100, 12)           # the 11th buffered segment overflows
    assert len(h.data[0]) == 1300 and r.stats["pending_overflows"] == 1


def test_pending_bytes_are_bounded_over_all_connections():
    segs = []
    for i in range(4):
        c = ("10.0.0.1", 50000 + i)
        segs += [seg(0, 0, b"a", client=c), seg(0, 100, b"z" * 200, client=c)]
    r, recs = reassemble(numbered(*segs), max_total_pending_bytes=500)
    # the third connection's buffer tips the total over 500: its hole is given up at once
    assert [h.events[1][:3] for h in recs[2:3]] == [("gap", 0, 99)]
    assert r.stats["pending_overflows"] == 2 and all(len(h.data[0]) == 201 for h in recs)


def test_hole_still_open_at_finish_is_a_gap_then_the_data():
    r, (h,) = reassemble(numbered(seg(0, 0, b"head"), seg(0, 10, b"tail")))
    assert h.events == [("data", 0, 1, b"head"), ("gap", 0, 6, 2), ("data", 0, 2, b"tail")]
    assert h.conn.closed_by == "finish" and h.conn.gap_bytes == [6, 0]


def test_rst_flushes_closes_and_releases():
    r, (h,) = reassemble(numbered(seg(0, 0, b"ab"), seg(0, 5, b"cd"), seg(1, 9, flags=RST | ACK)))
    assert h.events[-2:] == [("gap", 0, 3, 3), ("data", 0, 2, b"cd")]
    assert h.closed == 3 and h.conn.closed_by == "rst" and r._live == {}


def test_late_packets_of_a_closed_connection_open_nothing():
    r, recs = reassemble(numbered(
        seg(0, 0, flags=SYN), seg(1, 0, flags=SYN | ACK, ack=1), seg(0, 1, b"q", flags=ACK | FIN),
        seg(1, 1, flags=FIN | ACK, ack=3), seg(0, 1, b"q", flags=ACK | FIN), seg(0, 3, ack=2)))
    assert len(recs) == 1 and r.stats["late_segments"] == 2


def test_heuristic_roles_without_handshake():
    def roles(*segs, client=("10.0.0.1", 50000), server=("10.0.0.2", 51000)):
        r, (h,) = reassemble(numbered(*[seg(d, s, p, client=client, server=server) for d, s, p in segs]))
        return h.conn.client, h.conn.client_known_by
    # port 135 wins over everything
    assert roles((1, 0, b"\x05\x00\x00\x03" + bytes(20)), client=("10.0.0.1", 60000),
                 server=("10.0.0.2", 135)) == (("10.0.0.1", 60000), "heuristic")
    # the DCE/RPC packet type of the first payload: a response is sent by the server
    assert roles((0, 0, b"\x05\x00\x02\x03" + bytes(20)))[0] == ("10.0.0.2", 51000)
    # registered vs dynamic port
    assert roles((0, 0, b"data"), client=("10.0.0.1", 50000), server=("10.0.0.2", 445))[0] == \
        ("10.0.0.1", 50000)
    # an empty first segment: decided again on the first payload
    assert roles((0, 0, b""), (1, 0, b"\x05\x00\x00\x03" + bytes(20)))[0] == ("10.0.0.2", 51000)


def test_connections_never_promoted_are_evicted_apart_in_batches():
    segs = [seg(0, 0, b"a", client=("10.0.0.1", 50000 + i)) for i in range(100)]
    segs.append(seg(0, 1, b"b", client=("10.0.0.1", 50099)))
    r, recs = reassemble(numbered(*segs), max_other_connections=16)
    assert r.stats["evicted_other"] >= 84 and r.stats["evicted"] == 0 and r.stats["live"] == 0
    assert recs[0].conn.closed_by == "evicted" and recs[0].closed is not None
    assert recs[99].conn.closed_by == "finish" and bytes(recs[99].data[0]) == b"ab"
    # one record per batch, about no single connection
    batches = [e for e in r.errors_seen if e.kind == "tcp.other_connections_evicted"]
    assert batches and len(batches) < r.stats["evicted_other"] and all(e.conn is None for e in batches)


class Promoting(Recorder):
    """A layer above that recognises its protocol in every connection whose first octet is 'R'."""

    reassembler = None
    keep = True

    def on_data(self, direction, data, frame, ts):
        if not self.data[0] and not self.data[1] and data[:1] == b"R":
            self.reassembler.promote(self.conn.index)
        super().on_data(direction, data, frame, ts)

    def on_idle(self, frame):
        self.events.append(("idle", frame))
        return self.keep


def promoting(source, **kw):
    r, recs = reassemble(source, recorder=Promoting, finish=False, **kw)
    return r, recs, r.errors_seen


def test_noise_never_evicts_promoted_connections_and_those_have_their_own_bound():
    rpc = [seg(0, 0, b"R", client=("10.0.0.1", 40000 + i)) for i in range(12)]
    noise = [seg(0, 0, b"x", client=("10.0.9.9", 1024 + i)) for i in range(5000)]
    r, recs, errors = promoting(numbered(*rpc, *noise), max_connections=8, max_other_connections=64)
    assert len(r._live) <= 8 and len(r._other) <= 64
    assert r.stats["evicted"] == 4 and r.stats["evicted_other"] >= 5000 - 64
    evicted = [e for e in errors if e.kind == "tcp.connection_evicted"]
    assert [e.conn for e in evicted] == [0, 1, 2, 3]          # one record each, the least recently active
    assert all(h.conn.closed_by is None for h in recs[4:12])  # 5000 noise connections later


def test_an_idle_promoted_connection_gives_back_its_buffers_and_keeps_its_state():
    # A promoted connection with a hole (octets 1..4 never captured) at frames 1-2, then
    # 200 other connections opening one a second: after 60 s of capture time its
    # buffer is given back (the hole a gap) and its handler told, the connection stays.
    first = [seg(0, 0, b"R"), seg(0, 5, b"later")]
    others = [seg(0, 0, b"x", client=("10.0.9.9", 1024 + i)) for i in range(200)]
    r, recs, _ = promoting(numbered(*first, *others), max_other_connections=64)
    h = recs[0]
    assert h.events[1][:3] == ("gap", 0, 4) and h.events[2] == ("data", 0, 2, b"later") and h.events[1][3] > 60
    assert any(e[0] == "idle" for e in h.events) and h.conn.closed_by is None
    assert r.stats["idle_released"] == 1 and r._pending_total == 0
    half = r._live[0].halves[0]
    assert not half.pending and half.last == b""
    # it resumes where it was: same connection, same handler, the next octets in order
    r.feed(999, 999.0, seg(0, 10, b"more"))
    assert h.events[-1] == ("data", 0, 999, b"more")


def test_an_idle_connection_whose_handler_keeps_nothing_is_set_aside_and_goes_on_under_its_number():
    Promoting.keep = False
    try:
        first = [seg(0, 0, b"R"), seg(1, 0, b"r")]
        others = [seg(0, 0, b"x", client=("10.0.9.9", 1024 + i)) for i in range(200)]
        r, recs, _ = promoting(numbered(*first, *others), max_other_connections=64)
    finally:
        Promoting.keep = True
    h = recs[0]
    assert h.closed is not None and h.conn.closed_by == "idle" and r._live == {}
    assert r.stats["dormant"] == 1 and len(r._dormant) == 2
    # a keep-alive (the octet before the next) is still one; then the stream goes on
    r.feed(998, 998.0, seg(0, 0, b"k"))
    r.feed(999, 999.0, seg(0, 1, b"again"))
    again = recs[-1]
    assert again is not h and again.conn.index == h.conn.index and again.conn.resumed == 1
    assert again.conn.client == h.conn.client
    assert again.events == [("data", 0, 999, b"again")]
    assert r.stats["keepalives"] == 1 and r.stats["resumed"] == 1 and r._dormant == {}
    # a SYN on that 5-tuple is another connection
    Promoting.keep = False
    try:
        r2, recs2, _ = promoting(numbered(*first, *others), max_other_connections=64)
    finally:
        Promoting.keep = True
    assert len(r2._dormant) == 2
    r2.feed(999, 999.0, seg(0, 500, flags=SYN))
    assert recs2[-1].conn.index == 201 and recs2[-1].conn.resumed == 0 and r2._dormant == {}


def test_a_failing_handler_is_reported_and_the_run_goes_on():
    class Boom(Recorder):
        def on_data(self, direction, data, frame, ts):
            if data == b"bad":
                raise ValueError("cannot")
            super().on_data(direction, data, frame, ts)

    errors = []
    hs = []
    r = TcpReassembler(lambda c: hs.append(Boom(c)) or hs[-1], errors=errors.append)
    for i, s in enumerate([seg(0, 0, b"ok"), seg(0, 2, b"bad"), seg(0, 5, b"fine")], 1):
        r.feed(i, 0.0, s)
    r.finish()
    assert bytes(hs[0].data[0]) == b"okfine"
    assert len(errors) == 1 and "ValueError: cannot" in errors[0].reason and errors[0].frame == 2


# --- properties -----------------------------------------------------------------------

@st.composite
def cut_stream(draw):
    data = draw(st.binary(min_size=1, max_size=3000))
    cuts = sorted(set(draw(st.lists(st.integers(1, len(data)), max_size=40))) | {0, len(data)})
    pieces = [(a, data[a:b]) for a, b in zip(cuts, cuts[1:])]
    # some segments re-sent, some re-sent as overlapping merges of neighbours
    extra = draw(st.lists(st.integers(0, len(pieces) - 1), max_size=20))
    for i in extra:
        a = pieces[i][0]
        b = pieces[min(i + 1, len(pieces) - 1)]
        pieces.append((a, data[a:b[0] + len(b[1])]))
    order = draw(st.permutations(range(len(pieces))))
    isn = draw(st.one_of(st.just(MASK - 500), st.integers(0, MASK)))
    return data, [pieces[i] for i in order], isn


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cut_stream())
def test_shuffled_duplicated_segments_are_delivered_once_in_order(case):
    data, pieces, isn = case
    r, (h,) = reassemble(numbered(seg(0, isn, flags=SYN),
                                  *[seg(0, isn + 1 + off, p) for off, p in pieces]))
    assert bytes(h.data[0]) == data
    assert r.stats["gaps"] == 0 and r.stats["overlap_conflicts"] == 0


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=2, max_size=2000), st.data())
def test_dropped_segments_become_gaps_of_the_right_size(data, draw):
    cuts = sorted(set(draw.draw(st.lists(st.integers(1, len(data) - 1), max_size=30))) | {0, len(data)})
    pieces = [(a, data[a:b]) for a, b in zip(cuts, cuts[1:])]
    keep = draw.draw(st.lists(st.booleans(), min_size=len(pieces), max_size=len(pieces)))
    keep[0] = True                                     # the stream starts at the first segment seen
    kept = [p for p, k in zip(pieces, keep) if k]
    order = draw.draw(st.permutations(range(len(kept))))
    segs = [seg(0, kept[0][0], kept[0][1])] + [seg(0, kept[i][0], kept[i][1]) for i in order if i]
    r, (h,) = reassemble(numbered(*segs))
    expected = b"".join(p for _, p in kept)
    end = kept[-1][0] + len(kept[-1][1])
    assert bytes(h.data[0]) == expected
    assert h.conn.gap_bytes[0] == end - len(expected)
    last_kept = max(i for i, k in enumerate(keep) if k)
    holes = sum(1 for i in range(1, last_kept) if not keep[i] and keep[i - 1])
    assert len([e for e in h.events if e[0] == "gap"]) == holes


def test_connections_set_aside_stop_at_their_bound():
    Promoting.keep = False
    try:
        idle = [seg(0, 0, b"R", client=("10.0.0.1", 40000 + i)) for i in range(20)]
        others = [seg(0, 0, b"x", client=("10.0.9.9", 1024 + i)) for i in range(200)]
        r, recs, _ = promoting(numbered(*idle, *others), max_other_connections=64, dormant_memory=4)
    finally:
        Promoting.keep = True
    assert r.stats["dormant"] == 20 and len(r._dormant) == 2 * 4
    assert r.stats["dormant_forgotten"] == 2 * 16
