"""Bidirectional TCP reassembly (RFC 9293 sequence space), holes marked as gaps.

`TcpReassembler.feed` takes the `TcpSegment`s of a capture in frame order and hands
each connection's two byte streams, in order and exactly once, to a
`StreamHandler` made for that connection. What it copes with:

* retransmissions and keep-alives (old bytes are dropped; a retransmission whose
  bytes differ from what was seen first is counted as an overlap conflict and
  reported, the first-seen bytes are kept),
* out-of-order segments (buffered until contiguous, at most ``max_pending_bytes``
  per direction),
* holes that will never be filled (a segment lost by the capture, not the network):
  the missing length goes to ``on_gap`` and delivery goes on after the hole. A hole
  is declared as soon as it is known to be final — the peer acknowledged bytes the
  capture never showed (tshark's "ACKed segment that wasn't captured") — or when
  the pending buffer overflows, when both sides have sent FIN, at RST, at eviction
  and at `finish`;
* captures that start mid-connection (no SYN: each direction starts at its first
  seen sequence number), 32-bit wraparound, SYN and FIN each taking one sequence
  number, and a 5-tuple reused by a new connection.

Connection numbering follows tshark's ``tcp.stream``: a new index for each 5-tuple
first seen, and again when a SYN (without ACK) arrives with an initial sequence
number other than the one the connection started with. After FIN/RST a
connection's state is released; its 5-tuple is remembered (a bounded number of
them) so that late ACKs and retransmissions are not taken for a new connection.

Which side is the client: the sender of a SYN (or the receiver of a SYN+ACK),
``client_known_by="syn"``. Without a handshake, ``client_known_by="heuristic"``,
decided in this order: the side on port 135 (the RPC endpoint mapper and DCOM
activation port) is the server; else, when the first payload is a connection-oriented
DCE/RPC PDU (C706 12.6), its type says who sent it (request, bind, alter_context,
auth3 come from the client; response, fault, bind_ack, bind_nak, alter_context_resp
from the server); else the side whose port is below 49152 (not in the IANA dynamic
range) while the other's is in it; else the lower port. A connection first seen
through a segment without payload is decided again on its first payload, before any
byte has been delivered.

Memory: per direction at most ``max_pending_bytes`` (and 4096 segments) of
buffered data, ``max_total_pending_bytes`` over all connections, and of a closed
connection only its 5-tuple. To judge a retransmission's bytes, only the tail of
the last payload delivered per direction is kept: an older conflicting
retransmission is dropped without comparison.

Live connections are kept in two tables, so that traffic which is not ours can
never push out state that is. A connection starts among the *others*
(``max_other_connections``): half-open handshakes, scans, noise, other protocols,
and connections not yet recognised. The layer above calls `promote` once a
connection has shown DCE/RPC; it then counts against ``max_connections``. Past
either bound the least recently active eighth of that table is closed: DCE/RPC
connections each with a record (``tcp.connection_evicted``), the others with one
record per batch (``tcp.other_connections_evicted``). A DCE/RPC connection idle
for ``idle_timeout`` seconds of capture time gives back what it buffers (segments
after a hole, the retransmission tails; its handler's ``on_idle``, if it has one,
releases the layer above's buffers) but stays, with its sequence numbers and the
session state above (bind and security contexts, keys), so a sealed session that
resumes after hours still decrypts; while silent it is held in the compact form its
handler makes of it (``set_aside``, about 100 octets), in its place in the live
table. A connection whose handler keeps no such state is closed, and only its number
and next sequence numbers are remembered
(``dormant_memory`` connections): when it speaks again it goes on under the same
number, a keep-alive is still known as one, and the layer above starts afresh.
Idleness is checked when connections open, at most every quarter of the timeout
and every 64 openings, so nothing is paid per segment; a connection is found idle
between one and two timeouts after its last segment.

Hot path: a segment of a known connection arriving exactly at the expected
sequence number with no buffered data costs one dict lookup, a few attribute
updates and the handler call.
"""

from __future__ import annotations

import struct
import traceback
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Callable, Protocol

from .capture import TcpSegment
from .dcerpc import CLIENT_PTYPES, SERVER_PTYPES
from .records import ErrorRecord

__all__ = ["TcpConnection", "StreamHandler", "NullHandler", "TcpReassembler", "FIN", "SYN", "RST", "PSH", "ACK"]

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
_CTL = FIN | SYN | RST
_MASK = 0xFFFFFFFF
_HALF = 1 << 31
_WRAP = 1 << 32

RPC_PORT = 135
DYNAMIC_PORTS = 49152          # IANA dynamic/private range starts here (RFC 6335)
IMPLAUSIBLE_GAP = 1 << 30      # a hole this large is reported with missing=None
# Retransmissions are compared with the tail of what was delivered last, this many
# octets: a whole (offloaded, 64 KB) segment kept per direction of 10,000 live
# connections would be over a gigabyte.
LAST_KEPT = 2048


@dataclass(slots=True)
class TcpConnection:
    """One TCP connection as the layers above see it.

    index: like tshark's tcp.stream (0-based). The counters at the end are final once
    the connection has been closed (FIN, RST, eviction or `finish`).
    """

    index: int
    client: tuple[str, int]
    server: tuple[str, int]
    first_frame: int
    client_known_by: str                    # "syn" | "heuristic"
    last_frame: int = 0
    closed_by: str | None = None            # "fin" | "rst" | "reused" | "evicted" | "idle" | "finish"
    bytes: list[int] = field(default_factory=lambda: [0, 0])       # delivered, per direction
    gaps: list[int] = field(default_factory=lambda: [0, 0])        # holes, per direction
    gap_bytes: list[int] = field(default_factory=lambda: [0, 0])   # known missing bytes, per direction
    tunnel: tuple | None = None             # the tunnels its first segment came through (TcpSegment.tunnel)
    resumed: int = 0                        # times its handler was made again after it idled (see on_idle)


class StreamHandler(Protocol):
    def on_data(self, direction: int, data: bytes, frame: int, ts: float) -> None:
        """In-order bytes; direction 0 client->server, 1 server->client."""

    def on_gap(self, direction: int, missing: int | None, frame: int) -> None:
        """Bytes known to be missing (None if unknown); the data that follows comes after the hole."""

    def on_close(self, frame: int) -> None:
        """The connection is over; nothing more is delivered."""

    # Optional: on_idle(frame) -> bool, told when the connection has been idle for the
    # reassembler's idle_timeout; it gives back its buffers and says whether it holds
    # state worth keeping. When not, the connection is closed (on_close) and set aside:
    # if it speaks again, a new handler gets it under the same number (conn.resumed).
    # A handler without on_idle is kept as it is.
    #
    # Optional: set_aside(extra) -> (resume, state) | None, asked when on_idle said to keep
    # the connection: its whole state, and `extra` (the TCP stage's own, which holds the
    # TcpConnection it was made for), in a compact form; resume(state) gives back
    # (handler, extra), the handler as it was. None: it cannot; it is kept as it is.


class NullHandler:
    """A StreamHandler that discards everything: the stand-in for a connection whose handler
    factory failed, and the no-op consumer that benchmarks time the reassembly with."""

    __slots__ = ()

    def on_data(self, direction, data, frame, ts):
        pass

    def on_gap(self, direction, missing, frame):
        pass

    def on_close(self, frame):
        pass


class _Half:
    """One direction of a connection: the byte stream one side sends.

    Positions (pos, pending starts, fin) count from the direction's first sequence
    number (position 0 at ``base``), unwrapped, so they only grow.
    """

    __slots__ = ("conn", "direction", "peer", "on_data", "base", "nraw", "pos", "skipped",
                 "pending", "pending_bytes", "acked", "fin", "done", "slow", "last", "last_frame")

    def __init__(self, conn: "_Conn", direction: int, on_data):
        self.conn = conn
        self.direction = direction
        self.peer: _Half = self
        self.on_data = on_data
        self.base: int | None = None    # raw sequence number of position 0; None until seen
        self.nraw: int | None = None    # raw sequence number expected next
        self.pos = 0                    # position expected next
        self.skipped = 0                # positions not delivered: SYN, FIN, gaps
        # sorted, non-overlapping (start, payload, frame, ts); a list once something is buffered
        self.pending: list | tuple = ()
        self.pending_bytes = 0
        self.acked: int | None = None   # latest acknowledgement number the peer sent for us
        self.fin: int | None = None     # position of our FIN, once seen
        self.done = False               # FIN reached in order: nothing more to deliver
        self.slow = True                # the fast path may not be taken (see _Half.update)
        self.last = b""                 # the tail (LAST_KEPT octets) of the last payload delivered; it ends at pos
        self.last_frame = 0

    def update(self) -> None:
        self.slow = (self.base is None or self.done or bool(self.pending)
                     or self.fin is not None or self.conn.tentative)


class _Conn:
    __slots__ = ("rec", "handler", "halves", "keys", "tentative", "rpc", "trimmed")

    def __init__(self, rec: TcpConnection, handler):
        self.rec = rec
        self.handler = handler
        self.keys: tuple = ()               # ((directional 4-tuple, the half it sends), ...)
        self.tentative = False
        self.rpc = 0                        # promoted: its rank in TcpReassembler._live (from 1), not in _other
        self.trimmed = -1                   # the last activity (frame) its buffers were released at
        self.halves: tuple[_Half, _Half] = ()  # type: ignore[assignment]


# An idle connection whose handler set its state aside (StreamHandler.set_aside) is one
# bytes object in its place in the live table: this header (the frame it was last active
# at, the octets delivered so far for `stats`, its rank in the live table (_Conn.rpc), which
# of the reassembler's `_resumes` makes it again), then the handler's state. Its two flow
# keys leave the flow table for one name of both directions in `_asleep` (_asleep_name).
# An object with six attributes, three integers and two 4-tuples in the flow table were
# about 750 octets beside a 70-octet state: past a few hundred MB of sealed traffic nearly
# every live connection rests, and every shard of a split run holds all of them.
_REST = struct.Struct("<QQQB")
_RESUMES_MAX = 255


def _asleep_name(src: str, sport: int, dst: str, dport: int) -> str:
    """One name for both directions of a connection (its flow keys either way round), about
    80 octets against two 4-tuples' 260-660 (the tuples, their port integers and, past the
    capture reader's cache, the two addresses)."""
    if (src, sport) > (dst, dport):
        return f"{dst} {dport} {src} {sport}"
    return f"{src} {sport} {dst} {dport}"


class TcpReassembler:
    """Feeds each connection's in-order bytes to a handler made by ``handler_factory``.

    max_pending_bytes: out-of-order bytes buffered per direction before the hole in
    front of them is declared a gap (at most 4096 buffered segments likewise);
    max_total_pending_bytes: the same bound over all connections. max_connections: live connections kept; beyond
    it the least recently active eighth is flushed, closed and reported (stage "tcp").
    max_other_connections: the same for connections never promoted (`promote`).
    idle_timeout: seconds of capture time after which an idle promoted connection
    gives back its buffers (see the module's docstring).
    closed_memory: how many closed connections' 5-tuples are remembered.
    dormant_memory: how many idle connections set aside are remembered (see on_idle).
    errors: receives ErrorRecords (stage "tcp"); without it they are kept in
    ``error_records`` (the first 1000). A handler that raises is reported there too,
    and the stream goes on.
    """

    def __init__(self, handler_factory: Callable[[TcpConnection], StreamHandler], *,
                 max_pending_bytes: int = 4 << 20,
                 errors: Callable[[ErrorRecord], None] | None = None,
                 max_connections: int = 10000,
                 closed_memory: int = 8192,
                 max_total_pending_bytes: int = 64 << 20,
                 max_other_connections: int = 1024,
                 idle_timeout: float = 30.0,
                 dormant_memory: int = 8192):
        self._factory = handler_factory
        self.max_pending_bytes = max_pending_bytes
        self.max_total_pending_bytes = max_total_pending_bytes
        self._pending_total = 0
        self.max_pending_segments = 4096
        self.max_connections = max_connections
        self.max_other_connections = max_other_connections
        self.idle_timeout = idle_timeout
        self.closed_memory = closed_memory
        self.dormant_memory = dormant_memory
        self._errors = errors
        self.error_records: list[ErrorRecord] = []
        self._flows: dict[tuple, _Half] = {}        # (src, sport, dst, dport) -> the half it sends
        self._live: dict[int, _Conn] = {}           # promoted (DCE/RPC) connections: index -> connection
        # those of them not set aside (bytes: see _REST), for the idle sweep: past a few hundred MB of
        # sealed traffic nearly every live one rests, and the sweep read the whole table
        self._awake: dict[int, _Conn] = {}
        self._promoted = 0
        self._asleep: dict[str, int] = {}          # _asleep_name -> index of a connection set aside
        self._resumes: list = []                    # the set_aside resume functions (few: one per store)
        self._other: dict[int, _Conn] = {}          # the rest, in creation order
        self._sweep_at = (float("-inf"), 0)         # (capture time, flows opened) of the next idle sweep
        self._marks: list = []                      # (frame, ts) of the sweeps: frames as of some time ago
        # closed connections: directional key -> its first sequence number (-1: none seen)
        self._closed: dict[tuple, int] = {}
        # idle connections set aside: directional key -> (index, direction, next raw seq, client_known_by)
        self._dormant: dict[tuple, tuple] = {}
        self._next_index = 0
        self._frames = 0
        self._payload_segments = 0
        self._c = dict.fromkeys((
            "flows", "closed", "evicted", "evicted_other", "idle_released", "dormant", "resumed",
            "dormant_forgotten", "reused", "retransmissions", "keepalives",
            "out_of_order", "overlaps", "overlap_conflicts", "gaps", "gap_bytes", "late_segments",
            "pending_overflows", "handler_errors", "errors"), 0)
        self._closed_bytes = 0

    # -- public -----------------------------------------------------------------------

    @property
    def stats(self) -> dict:
        """Counters: frames (segments fed), tcp_segments (those with payload), flows
        (connections opened), live, closed, evicted (promoted connections past
        max_connections), evicted_other (others past max_other_connections),
        idle_released (idle promoted connections whose buffers were given back), dormant (of
        those, set aside), resumed (set aside, then spoke again), dormant_forgotten (directions of
        connections set aside, forgotten past dormant_memory), reused (5-tuples reused), bytes
        (delivered), retransmissions, keepalives, out_of_order, overlaps (partly old
        segments), overlap_conflicts, gaps, gap_bytes, late_segments (after close),
        pending_overflows, handler_errors, errors."""
        out = {"frames": self._frames, "tcp_segments": self._payload_segments}
        out.update(self._c)
        live_bytes = 0
        for table in (self._live, self._other):
            for conn in table.values():
                if type(conn) is bytes:
                    live_bytes += _REST.unpack_from(conn)[1]
                    continue
                for h in conn.halves:
                    live_bytes += h.pos - h.skipped
        out["bytes"] = self._closed_bytes + live_bytes
        out["live"] = len(self._live) + len(self._other)
        return out

    def feed(self, frame: int, ts: float, seg: TcpSegment) -> None:
        self._frames += 1
        h = self._flows.get(seg[:4])
        if h is not None and seg[4] == h.nraw and not h.slow and not seg[6] & _CTL:
            # The common case: the next bytes of a connection with nothing buffered.
            if seg[6] & ACK:
                # The acknowledgement first: it may prove the peer's hole lost and
                # release the peer's buffered bytes, which the capture saw earlier.
                p = h.peer
                p.acked = seg[5]
                if p.slow:
                    self._peer_acked(p, frame)
            h.last_frame = frame
            payload = seg[7]
            if payload:
                self._payload_segments += 1
                n = len(payload)
                h.nraw = (h.nraw + n) & _MASK
                h.pos += n
                h.last = payload if n <= LAST_KEPT else payload[-LAST_KEPT:]
                try:
                    h.on_data(h.direction, payload, frame, ts)
                except Exception as exc:  # noqa: BLE001 - one bad handler must not end the run
                    self._handler_failed(h.conn, exc, frame)
            return
        self._slow(frame, ts, seg, h)

    def finish(self) -> None:
        """Flushes every live connection (pending data after a hole: on_gap then
        on_data) and closes it. Safe to call twice."""
        for index, conn in sorted((*self._live.items(), *self._other.items()), key=_first):
            if type(conn) is bytes:         # one at a time: the table's memory stays what it was
                conn = self._wake(index, conn)
            last = max(conn.halves[0].last_frame, conn.halves[1].last_frame, conn.rec.first_frame)
            self._close(conn, last, "finish", remember=True)

    # -- the slow path ----------------------------------------------------------------

    def _slow(self, frame: int, ts: float, seg: TcpSegment, h: _Half | None) -> None:
        src, sport, dst, dport, seq, ack, flags, payload = seg[:8]
        if h is None and self._asleep:
            index = self._asleep.get(_asleep_name(src, sport, dst, dport))
            if index is not None:
                self._wake(index, self._live[index])
                h = self._flows[seg[:4]]
        if h is None:
            gone = self._closed.get((src, sport, dst, dport))
            if gone is not None:
                # The 5-tuple of a closed connection: only a new SYN opens another.
                if flags & (SYN | ACK) != SYN or seq == gone:
                    self._c["late_segments"] += 1
                    return
                self._c["reused"] += 1
            h = self._open(frame, ts, seg)
        elif flags & (SYN | ACK) == SYN and h.base is not None and seq != h.base:
            # A SYN with another initial sequence number: the 5-tuple is reused.
            self._c["reused"] += 1
            self._close(h.conn, frame, "reused", remember=False)
            h = self._open(frame, ts, seg)
        conn = h.conn
        h.last_frame = frame
        if payload:
            self._payload_segments += 1
            if conn.tentative:
                self._decide_again(conn, h, payload)

        if h.base is None:
            # First segment of this direction: its sequence number starts the stream.
            h.base = h.nraw = seq
            h.pos = 0
        delta = (seq - h.nraw) & _MASK
        if delta >= _HALF:
            delta -= _WRAP
        start = h.pos + delta
        if flags & SYN:
            if start == h.pos and h.pos == 0 and not h.skipped:
                h.skipped = 1               # the SYN's own sequence number
                h.pos = 1
                h.nraw = (h.base + 1) & _MASK
            start += 1

        if flags & RST:
            self._close(conn, frame, "rst", remember=True)
            return

        if flags & ACK:
            # Before this segment's bytes: see the fast path.
            p = h.peer
            p.acked = ack
            if p is not h:
                self._peer_acked(p, frame)

        if payload and not h.done:
            self._accept(h, start, payload, frame, ts)
        elif payload:
            self._c["late_segments"] += 1

        if flags & FIN and h.fin is None and not h.done:
            h.fin = start + len(payload)
            if h.fin < h.pos:               # a FIN for bytes already delivered: take it here
                h.fin = h.pos
            self._reach_fin(h)

        a, b = conn.halves
        if a.fin is not None and b.fin is not None:
            # Both sides have said they are done: whatever is still missing stays missing.
            self._close(conn, frame, "fin", remember=True)
            return
        a.update()
        b.update()

    def _accept(self, h: _Half, start: int, payload: bytes, frame: int, ts: float) -> None:
        n = len(payload)
        end = start + n
        pos = h.pos
        if end <= pos:
            # Entirely old: a keep-alive (one octet just below the window, whose value
            # means nothing) or a retransmission.
            if n == 1 and end == pos:
                self._c["keepalives"] += 1
            else:
                self._c["retransmissions"] += 1
                self._compare_delivered(h, start, payload, frame)
            return
        if start < pos:
            self._c["overlaps"] += 1
            self._compare_delivered(h, start, payload, frame)
            payload = payload[pos - start:]
            start = pos
        if start == pos and not h.pending:
            self._deliver(h, payload, frame, ts)
        else:
            self._buffer(h, start, payload, frame, ts)
            self._drain(h)
            self._settle(h, frame)
        self._reach_fin(h)

    def _compare_delivered(self, h: _Half, start: int, payload: bytes, frame: int) -> None:
        """Old bytes against the last delivered payload, the ones we still hold."""
        last = h.last
        lo = h.pos - len(last)
        a = max(start, lo)
        b = min(start + len(payload), h.pos)
        if a < b and payload[a - start:b - start] != last[a - lo:b - lo]:
            self._conflict(h, frame, b - a)

    def _conflict(self, h: _Half, frame: int, n: int) -> None:
        self._c["overlap_conflicts"] += 1
        self._error(f"{n} retransmitted octets differ from the first-seen ones "
                    f"(direction {h.direction}); the first-seen bytes are kept", frame, h.conn,
                    kind="tcp.retransmission_conflict")

    def _buffer(self, h: _Half, start: int, payload: bytes, frame: int, ts: float) -> None:
        """Keeps the parts of [start, start+len) not yet buffered (first-seen bytes win)."""
        pend = h.pending
        if not pend:
            pend = h.pending = []
        end = start + len(payload)
        i = bisect_right(pend, start, key=_start) - 1
        if i < 0 or pend[i][0] + len(pend[i][1]) <= start:
            i += 1
        pieces = []
        cur = start
        j = i
        overlapped = False
        while j < len(pend) and pend[j][0] < end:
            s, p = pend[j][0], pend[j][1]
            e = s + len(p)
            if s > cur:
                pieces.append((cur, min(s, end)))
            lo, hi = max(cur, s), min(end, e)
            if lo < hi:
                overlapped = True
                if payload[lo - start:hi - start] != p[lo - s:hi - s]:
                    self._conflict(h, frame, hi - lo)
            cur = max(cur, e)
            j += 1
        if cur < end:
            pieces.append((cur, end))
        if overlapped:
            if not pieces:
                self._c["retransmissions"] += 1
                return
            self._c["overlaps"] += 1
        elif start > h.pos:
            self._c["out_of_order"] += 1
        for s, e in pieces:
            piece = payload if (s == start and e == end) else payload[s - start:e - start]
            k = bisect_right(pend, s, key=_start)
            pend.insert(k, (s, piece, frame, ts))
            h.pending_bytes += e - s
            self._pending_total += e - s
        if (h.pending_bytes > self.max_pending_bytes or len(pend) > self.max_pending_segments
                or self._pending_total > self.max_total_pending_bytes):
            # Bounded memory: the hole in front is taken as lost until the buffer fits
            # (all of this direction's buffer when the reassembler's total is exceeded).
            self._c["pending_overflows"] += 1
            over_total = self._pending_total > self.max_total_pending_bytes
            while pend and (over_total or h.pending_bytes > self.max_pending_bytes
                            or len(pend) > self.max_pending_segments):
                self._gap(h, pend[0][0] - h.pos, frame)
                self._drain(h)

    def _drain(self, h: _Half) -> None:
        """Delivers buffered segments that have become contiguous."""
        pend = h.pending
        while pend and pend[0][0] <= h.pos:
            s, payload, frame, ts = pend.pop(0)
            h.pending_bytes -= len(payload)
            self._pending_total -= len(payload)
            if s < h.pos:
                if s + len(payload) <= h.pos:
                    continue
                payload = payload[h.pos - s:]
            self._deliver(h, payload, frame, ts)

    def _deliver(self, h: _Half, payload: bytes, frame: int, ts: float) -> None:
        n = len(payload)
        h.pos += n
        h.nraw = (h.nraw + n) & _MASK
        h.last = payload if n <= LAST_KEPT else payload[-LAST_KEPT:]
        try:
            h.on_data(h.direction, payload, frame, ts)
        except Exception as exc:  # noqa: BLE001
            self._handler_failed(h.conn, exc, frame)

    def _gap(self, h: _Half, missing: int, frame: int) -> None:
        if missing <= 0:
            return
        h.pos += missing
        h.skipped += missing
        h.nraw = (h.nraw + missing) & _MASK
        h.last = b""
        rec = h.conn.rec
        self._c["gaps"] += 1
        rec.gaps[h.direction] += 1
        # A jump this large is no lost segment but sequence numbers that make no
        # sense (a connection seen from its middle reusing its 5-tuple, garbage):
        # how much is missing is unknown.
        known = missing < IMPLAUSIBLE_GAP
        if known:
            self._c["gap_bytes"] += missing
            rec.gap_bytes[h.direction] += missing
        try:
            h.conn.handler.on_gap(h.direction, missing if known else None, frame)
        except Exception as exc:  # noqa: BLE001
            self._handler_failed(h.conn, exc, frame)

    def _next_hole_end(self, h: _Half) -> int | None:
        """Where the bytes after the hole at pos start: the first buffered segment, or the FIN."""
        ends = []
        if h.pending:
            ends.append(h.pending[0][0])
        if h.fin is not None and not h.done:
            ends.append(h.fin)
        return min(ends) if ends else None

    def _settle(self, h: _Half, frame: int) -> None:
        """Declares the part of the hole at pos that the peer has acknowledged: the
        capture missed those bytes, no retransmission will bring them."""
        if h.acked is None or h.nraw is None:
            return
        delta = (h.acked - h.nraw) & _MASK
        if delta == 0 or delta >= _HALF:
            return
        acked = h.pos + delta
        while True:
            nxt = self._next_hole_end(h)
            if nxt is None or nxt <= h.pos or acked <= h.pos:
                break
            self._gap(h, min(acked, nxt) - h.pos, frame)
            self._drain(h)
        self._reach_fin(h)

    def _peer_acked(self, h: _Half, frame: int) -> None:
        if h.pending or (h.fin is not None and not h.done):
            self._settle(h, frame)

    def _reach_fin(self, h: _Half) -> None:
        if h.fin is not None and not h.done and h.pos >= h.fin and not h.pending:
            h.done = True
            h.pos += 1                      # the FIN's own sequence number
            h.skipped += 1
            h.nraw = (h.nraw + 1) & _MASK

    def _flush(self, h: _Half, frame: int) -> None:
        """Takes every remaining hole as lost and delivers what was buffered after it."""
        while h.pending:
            self._gap(h, h.pending[0][0] - h.pos, frame)
            self._drain(h)
        if h.fin is not None and not h.done and h.fin > h.pos:
            self._gap(h, h.fin - h.pos, frame)
        self._reach_fin(h)

    # -- connections ----------------------------------------------------------------------

    def _open(self, frame: int, ts: float, seg: TcpSegment) -> _Half:
        src, sport, dst, dport, seq, ack, flags, payload = seg[:8]
        fwd, rev = (src, sport, dst, dport), (dst, dport, src, sport)
        tentative = False
        back = there = None
        if self._dormant:
            back, there = self._dormant.pop(fwd, None), self._dormant.pop(rev, None)
            if flags & SYN:                 # a new connection on the 5-tuple, not the one set aside
                back = there = None
            elif back is None and there is not None:
                back, there = (there[0], 1 - there[1], None, there[3]), there
        if back is not None:
            sender_is_client = back[1] == 0
            known_by = back[3]
        elif flags & SYN:
            sender_is_client = not flags & ACK
            known_by = "syn"
        else:
            sender_is_client = _sender_is_client(sport, dport, payload)
            known_by = "heuristic"
            tentative = not payload and sport != RPC_PORT and dport != RPC_PORT
        if sender_is_client:
            client, server = (src, sport), (dst, dport)
        else:
            client, server = (dst, dport), (src, sport)
        if back is None:
            rec = TcpConnection(self._next_index, client, server, frame, known_by, tunnel=seg.tunnel)
            self._next_index += 1
            self._c["flows"] += 1
        else:                               # set aside when idle: it goes on under its number
            rec = TcpConnection(back[0], client, server, frame, known_by, tunnel=seg.tunnel, resumed=1)
            self._c["resumed"] += 1
        try:
            handler = self._factory(rec)
        except Exception as exc:  # noqa: BLE001
            handler = NullHandler()
            self._error(f"stream handler factory raised {_describe(exc)}", frame, rec.index, kind="tcp.internal_error")
        conn = _Conn(rec, handler)
        conn.tentative = tentative
        on_data = handler.on_data
        sent = _Half(conn, 0 if sender_is_client else 1, on_data)
        if fwd == rev:                      # a socket connected to itself: one stream
            sent.peer = sent
            conn.halves = (sent, sent)
            conn.keys = ((fwd, sent),)
            self._flows[fwd] = sent
        else:
            received = _Half(conn, 1 - sent.direction, on_data)
            sent.peer, received.peer = received, sent
            conn.halves = (sent, received) if sender_is_client else (received, sent)
            conn.keys = ((fwd, sent), (rev, received))
            self._flows[fwd] = sent
            self._flows[rev] = received
        self._closed.pop(fwd, None)
        self._closed.pop(rev, None)
        if back is not None:                # positions start again where the stream was
            for h, b in ((sent, back), (sent.peer, there)):
                if b is not None and b[2] is not None:
                    h.base = h.nraw = b[2]
        sent.last_frame = frame
        if ts >= self._sweep_at[0] and self._c["flows"] >= self._sweep_at[1]:
            self._sweep(frame, ts)
        if len(self._other) >= self.max_other_connections:
            self._evict_other(frame)
        self._other[rec.index] = conn
        return sent

    def promote(self, index: int) -> None:
        """The layer above found connection `index` to carry DCE/RPC: from now on it is
        kept apart from the others, among the ``max_connections`` that matter."""
        conn = self._other.pop(index, None)
        if conn is None:
            return
        if len(self._live) >= self.max_connections:
            self._evict(max(conn.halves[0].last_frame, conn.halves[1].last_frame))
        self._promoted += 1
        conn.rpc = self._promoted
        self._live[index] = self._awake[index] = conn

    def route(self, index: int, on_data) -> None:
        """Connection `index`'s bytes go to `on_data` from now on instead of its handler's
        own on_data (which, the layer above knows, would only pass them on there): one call
        fewer a segment. A connection made again after it rested goes through its handler."""
        conn = self._live.get(index) or self._other.get(index)
        if type(conn) is _Conn:
            for h in conn.halves:
                h.on_data = on_data

    def _sweep(self, frame: int, ts: float) -> None:
        """Gives back the buffers of the promoted connections idle for idle_timeout."""
        self._sweep_at = (ts + self.idle_timeout / 4, self._c["flows"] + 64)
        marks = self._marks
        marks.append((frame, ts))
        # The frame seen last idle_timeout ago: connections quiet since are idle.
        old = [i for i, (_, t) in enumerate(marks) if t <= ts - self.idle_timeout]
        if not old:
            return
        del marks[:old[-1]]
        since = marks[0][0]
        # in the live table's order (promotion), which _awake does not keep across wakes
        idle = [c for c in self._awake.values() if _last(c) < since and c.trimmed != _last(c)]
        for conn in sorted(idle, key=_rank):
            self._release(conn, frame)

    def _release(self, conn: _Conn, frame: int) -> None:
        """An idle connection keeps its sequence numbers and its handler's session
        state, not its buffers: a hole still open is taken as lost."""
        conn.trimmed = _last(conn)
        self._c["idle_released"] += 1
        for h in conn.halves:
            self._flush(h, frame)
            h.pending = ()
            h.last = b""
        on_idle = getattr(conn.handler, "on_idle", None)
        keep = True
        if on_idle is not None:
            try:
                keep = on_idle(frame)
            except Exception as exc:  # noqa: BLE001
                self._handler_failed(conn, exc, frame)
        if keep:
            for h in conn.halves:
                h.update()
            self._set_aside(conn, frame)
            return
        self._go_dormant(conn, frame)

    def _go_dormant(self, conn: _Conn, frame: int) -> None:
        """Nothing above worth keeping: only what lets the connection go on if it speaks again."""
        self._c["dormant"] += 1
        self._close(conn, frame, "idle", remember=False)
        dormant = self._dormant
        for key, h in conn.keys:
            dormant[key] = (conn.rec.index, h.direction, h.nraw, conn.rec.client_known_by)
        while len(dormant) > 2 * self.dormant_memory:
            del dormant[next(iter(dormant))]
            self._c["dormant_forgotten"] += 1

    def _set_aside(self, conn: _Conn, frame: int) -> None:
        """An idle connection that keeps session state, in the compact form its handler makes
        of it (StreamHandler.set_aside), with what TCP needs to go on: its record and each
        direction's sequence numbers and positions (its buffers are empty by now)."""
        aside = getattr(conn.handler, "set_aside", None)
        a, b = conn.halves
        if aside is None or a.pending_bytes or b.pending_bytes:
            return
        extra = (conn.rec, conn.trimmed, conn.tentative, conn.keys[0][1] is a,
                 tuple((h.direction, h.base, h.nraw, h.pos, h.skipped, h.acked, h.fin, h.done, h.last_frame)
                       for h in (a, b)))
        try:
            got = aside(extra)
        except Exception as exc:  # noqa: BLE001
            self._handler_failed(conn, exc, frame)
            return
        if got is None:
            return
        resume, state = got
        resumes = self._resumes
        for store, known in enumerate(resumes):
            if known is resume:
                break
        else:
            if len(resumes) >= _RESUMES_MAX:
                return                      # a handler making a resume function per connection: kept as it is
            store = len(resumes)
            resumes.append(resume)
        delivered = sum(h.pos - h.skipped for h in conn.halves)
        rec = conn.rec
        index = rec.index
        self._live[index] = _REST.pack(_last(conn), delivered, conn.rpc, store) + state
        del self._awake[index]
        flows = self._flows
        for key, h in conn.keys:
            if flows.get(key) is h:
                del flows[key]
        self._asleep[_asleep_name(*rec.client, *rec.server)] = index
        _unlink(conn)

    def _wake(self, index: int, rest: bytes) -> _Conn:
        """A connection set aside, as it was before (in the same place of the live table)."""
        _, _, rank, store = _REST.unpack_from(rest)
        handler, (rec, trimmed, tentative, client_first, states) = self._resumes[store](rest[_REST.size:])
        del self._asleep[_asleep_name(*rec.client, *rec.server)]
        conn = _Conn(rec, handler)
        conn.rpc = rank
        conn.trimmed = trimmed
        conn.tentative = tentative
        on_data = handler.on_data
        fwd, rev = (*rec.client, *rec.server), (*rec.server, *rec.client)
        halves = []
        for st in states[:1 if fwd == rev else 2]:
            h = _Half(conn, st[0], on_data)
            h.base, h.nraw, h.pos, h.skipped, h.acked, h.fin, h.done, h.last_frame = st[1:]
            halves.append(h)
        if len(halves) == 1:                # a socket connected to itself
            a = b = halves[0]
            conn.keys = ((fwd, a),)
        else:
            a, b = halves
            a.peer, b.peer = b, a
            conn.keys = ((fwd, a), (rev, b)) if client_first else ((rev, b), (fwd, a))
        conn.halves = (a, b)
        flows = self._flows
        for key, h in conn.keys:
            flows[key] = h
            h.update()
        self._live[index] = self._awake[index] = conn
        return conn

    def _decide_again(self, conn: _Conn, h: _Half, payload: bytes) -> None:
        """A connection opened on an empty segment: its first payload may tell the roles."""
        conn.tentative = False
        sender_is_client = _rpc_sender_is_client(payload)
        if sender_is_client is None or sender_is_client == (h.direction == 0):
            return
        rec = conn.rec
        rec.client, rec.server = rec.server, rec.client
        a, b = conn.halves
        if a is b:
            return
        a.direction, b.direction = 1, 0
        conn.halves = (b, a)

    def _close(self, conn: _Conn, frame: int, why: str, remember: bool) -> None:
        if (self._live if conn.rpc else self._other).pop(conn.rec.index, None) is None:
            return
        if conn.rpc:
            self._awake.pop(conn.rec.index, None)
        for h in conn.halves:
            self._flush(h, frame)
        rec = conn.rec
        rec.closed_by = why
        rec.last_frame = max(frame, conn.halves[0].last_frame, conn.halves[1].last_frame)
        for h in set(conn.halves):
            delivered = h.pos - h.skipped
            rec.bytes[h.direction] = delivered
            self._closed_bytes += delivered
        if why != "idle":
            self._c["closed"] += 1
        try:
            conn.handler.on_close(frame)
        except Exception as exc:  # noqa: BLE001
            self._handler_failed(conn, exc, frame)
        flows = self._flows
        closed = self._closed
        for key, h in conn.keys:
            if flows.get(key) is h:
                del flows[key]
            if remember:
                closed[key] = -1 if h.base is None else h.base
        while len(closed) > self.closed_memory:
            del closed[next(iter(closed))]
        for h in conn.halves:               # release the buffers at once
            self._pending_total -= h.pending_bytes
            h.pending_bytes = 0
            h.pending = ()
            h.last = b""
            h.on_data = None
        _unlink(conn)

    def _evict(self, frame: int) -> None:
        """Room for one more promoted connection: close the least recently active eighth."""
        for index, conn in _least_recent(self._live):
            if type(conn) is bytes:
                conn = self._wake(index, conn)
            self._c["evicted"] += 1
            self._error(f"more than {self.max_connections} live DCE/RPC connections: connection "
                        f"{conn.rec.index} evicted (idle since frame {_last(conn)})",
                        frame, conn.rec.index, kind="tcp.connection_evicted")
            self._close(conn, frame, "evicted", remember=False)

    def _evict_other(self, frame: int) -> None:
        """Room for one more connection not (yet) DCE/RPC: the least recently active
        eighth is closed, and said in one record. Their later segments open new ones."""
        victims = [conn for _, conn in _least_recent(self._other)]
        self._c["evicted_other"] += len(victims)
        self._error(f"more than {self.max_other_connections} live connections that showed no DCE/RPC: "
                    f"the {len(victims)} least recently active closed (idle since frame {_last(victims[-1])} "
                    f"or longer; {self._c['evicted_other']} in all)", frame, None,
                    kind="tcp.other_connections_evicted")
        for conn in victims:
            self._close(conn, frame, "evicted", remember=False)

    # -- errors -------------------------------------------------------------------------

    def _error(self, reason: str, frame: int, conn, kind: str = "tcp.other") -> None:
        index = conn.rec.index if isinstance(conn, _Conn) else conn
        rec = ErrorRecord(stage="tcp", reason=reason, frame=frame, conn=index, kind=kind)
        self._c["errors"] += 1
        if self._errors is not None:
            self._errors(rec)
        elif len(self.error_records) < 1000:
            self.error_records.append(rec)

    def _handler_failed(self, conn: _Conn, exc: Exception, frame: int) -> None:
        self._c["handler_errors"] += 1
        self._error(f"stream handler raised {_describe(exc)}", frame, conn, kind="tcp.internal_error")


def _start(entry) -> int:
    return entry[0]


def _unlink(conn: _Conn) -> None:
    """Breaks a connection's reference cycles (its halves point at it and at each other) once
    it is closed or set aside, so that it goes, with its handler and record, when the tables
    let go of it, not at the cyclic collector's next pass: 56,000 connections of 1 GB of
    sealed copies left about 45,000 objects of cyclic garbage at each of its full passes,
    and the collector took 1.5 s of a shard's 8 s of reassembly. What the idle path reads
    after the close (each half's direction and next sequence number) stays."""
    for h in conn.halves:
        h.peer = h.conn = None


def _rank(conn: _Conn) -> int:
    return conn.rpc


def _first(item: tuple):
    return item[0]


def _last(conn: _Conn | bytes) -> int:
    """The frame a connection (or one set aside) was last active at."""
    if type(conn) is bytes:
        return _REST.unpack_from(conn)[0]
    return max(conn.halves[0].last_frame, conn.halves[1].last_frame)


def _last_of(item: tuple) -> int:
    return _last(item[1])


def _least_recent(table: dict) -> list:
    """The least recently active eighth of a table of connections (at least one), as
    (index, connection) items."""
    items = sorted(table.items(), key=_last_of)
    return items[:max(1, len(items) // 8)]


def _describe(exc: Exception) -> str:
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    at = f" at {where.filename.rsplit('/', 1)[-1]}:{where.lineno}" if where else ""
    return f"{type(exc).__name__}: {exc}{at}"


def _rpc_sender_is_client(payload: bytes) -> bool | None:
    """The role a connection-oriented DCE/RPC common header (rpc_vers 5) implies, if any."""
    if len(payload) >= 16 and payload[0] == 5 and payload[1] <= 1:
        ptype = payload[2]
        if ptype in CLIENT_PTYPES:
            return True
        if ptype in SERVER_PTYPES:
            return False
    return None


def _sender_is_client(sport: int, dport: int, payload: bytes) -> bool:
    if dport == RPC_PORT:
        return True
    if sport == RPC_PORT:
        return False
    by_rpc = _rpc_sender_is_client(payload)
    if by_rpc is not None:
        return by_rpc
    if (sport < DYNAMIC_PORTS) != (dport < DYNAMIC_PORTS):
        return dport < DYNAMIC_PORTS
    return dport < sport
