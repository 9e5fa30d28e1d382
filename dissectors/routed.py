"""The split run with the frames read once: one process reads, peels and reassembles the
capture and routes each DCE/RPC connection's events to its host pair's shard.

The reading process (`Router`) is what every shard of `dissectors.parallel` used to do
for itself: reading and peeling every frame, the TCP reassembler over every connection
(its numbering, counters, closed-connection memory, SYN reuse, bounded tables and
evictions), the recognition of DCE/RPC from a connection's first octets, and the
balance of new host pairs over the shards. It sends a shard only what the DCE/RPC layer
of that shard's connections is handed in one process: a connection's recognition
(ATTACH, with what was held while it was undecided), its in-order data, its gaps, its
close, and its idle check; and the records the reassembler and the decapsulation make
(REC). A connection that is not DCE/RPC reaches no shard at all.

Every event carries a number counted over the run, in the order the single run would
have met it; a shard keys its records by (event, record), so merging the shards' keyed
streams is the single run's order, also where one frame's consequences reach several
shards (an idle sweep or an eviction on a connection's opening).

The one answer the reading process cannot give itself is the idle check's (IDLE): whether
the DCE/RPC layer of an idle connection still holds session state (a bind, a key, a call
awaiting its response), so that it is set aside and kept, or not, so that it is closed
and resumes under its number if it speaks again. Only the owner knows it. The reading
process takes it as kept, goes on, and settles it when it gets the shard's answer, at
the latest before anything that could tell the two apart: a segment of that connection,
a connection opening when the memory of connections closed that way is near its bound,
an eviction from the full table of DCE/RPC connections, the end. The answers come in the order the
shard was asked, on a pipe of their own; settled in the order asked, a "not kept"
closes the connection as the single run would have at its idle check.

Known differences from one process: those of dissectors.parallel for the correlation
state's per-shard bounds (LRU caps, the octets held by open calls) and for summaries of
record floods; none in the TCP stage's numbering, counters or records.
"""

from __future__ import annotations

import os
import pickle
import select
from collections import deque

from .capture import Decapsulation, open_sources, tcp_segment
from .parallel import ShardAnalysis, _HEADER, _Outbox
from .pipeline import Stats, _Detector, _drain, _SetAside
from .records import ErrorRecord
from .tcp import TcpConnection, TcpReassembler, _asleep_name, _describe

# An event: (kind, number, connection, a, b, c, d).
DATA, GAP, ATTACH, CLOSE, IDLE, REC, FLOODS, END, FAIL = range(9)
_TCP_SUMS = ("handler_errors", "errors")     # counted where the handlers run: the shards


class _Route(_Detector):
    """A connection in the reading process: recognised as the single run does, then its
    events forwarded to its shard (`target`)."""

    __slots__ = ("target", "out", "blob", "index", "gone")

    def __init__(self, conn, router: "Router", target: int):
        super().__init__(conn, router)
        self.target = target
        self.out = router.out[target]
        self.blob = router.blobs[target]
        self.index = conn.index
        self.gone = False               # closed by its shard at an idle check

    def on_data(self, direction: int, data: bytes, frame: int, ts: float) -> None:
        router = self.analysis
        router.load[self.target] += len(data)
        if self.handler is not None:
            router.eseq = e = router.eseq + 1
            self.out.append((DATA, e, self.index, direction, len(data), frame, ts))
            self.blob.append(data)
            router.queued += len(data)
        elif self.chunks is not None:
            _Detector.on_data(self, direction, data, frame, ts)

    def _attach(self, chunks: list, gaps: list) -> None:
        router = self.analysis
        conn = self.conn
        self.handler = True
        router.eseq += 1
        frame = chunks[-1][2] if chunks else conn.first_frame
        self.out.append((ATTACH, router.eseq, self.index,
                         (conn.client, conn.server, conn.first_frame, conn.client_known_by, conn.tunnel,
                          conn.resumed), gaps, chunks, frame))
        router.queued += self.size

    def on_gap(self, direction: int, missing: int | None, frame: int) -> None:
        if self.handler is None:
            _Detector.on_gap(self, direction, missing, frame)
            return
        router = self.analysis
        router.stats.gaps += 1
        router.stats.gap_bytes += missing or 0
        router.eseq += 1
        self.out.append((GAP, router.eseq, self.index, direction, missing, frame, None))

    def on_close(self, frame: int) -> None:
        router = self.analysis
        router.conn_shard.pop(self.index, None)
        if self.handler is not None:
            if not self.gone:
                router.eseq += 1
                self.out.append((CLOSE, router.eseq, self.index, self.conn.closed_by, frame, None, None))
        elif self.chunks is not None:
            self._not_rpc()

    def on_idle(self, frame: int) -> bool:
        if self.handler is None:
            return False
        router = self.analysis
        router.eseq += 1
        self.out.append((IDLE, router.eseq, self.index, frame, None, None, None))
        router.reassembler.asked(self.index, self.target, frame)
        return True                     # until the shard says otherwise (see the module)

    def set_aside(self, extra):
        # In the compact form one process keeps (pipeline._SetAside: 1 GB of sealed copies
        # leaves 9,341 connections set aside, 1-2 KB each as objects): without the
        # router's lists of events, which it takes back when woken (_Resume).
        out, blob = self.out, self.blob
        self.out = self.blob = None
        try:
            got = _Detector.set_aside(self, extra)
        finally:
            self.out, self.blob = out, blob
        return (self.analysis._resume, got[1]) if got is not None else None


class _Resume:
    """Wakes a _Route set aside: the store's detector, given its shard's lists again."""

    __slots__ = ("store",)

    def __init__(self, store: _SetAside):
        self.store = store

    def __call__(self, state):
        det, extra = self.store(state)
        router = det.analysis
        det.out, det.blob = router.out[det.target], router.blobs[det.target]
        return det, extra


class _Reassembler(TcpReassembler):
    """The reassembler of the reading process: an idle connection's fate waits for its
    shard's answer until something could tell the two outcomes apart (see the module)."""

    def __init__(self, router: "Router", factory, **kwargs):
        super().__init__(factory, **kwargs)
        self.router = router
        self.pending: deque = deque()       # (index, shard, frame) of idle checks not yet settled
        self.pending_ids: set[int] = set()

    def asked(self, index: int, shard: int, frame: int) -> None:
        self.pending.append((index, shard, frame))
        self.pending_ids.add(index)

    def settle(self, through: int | None = None) -> None:
        """Settles the idle checks in the order asked, up to that of connection `through`
        (None: all of them)."""
        pending = self.pending
        while pending:
            index, shard, frame = pending.popleft()
            self.pending_ids.discard(index)
            if not self.router.links.answer(shard):
                conn = self._live[index]
                if type(conn) is bytes:         # set aside (TcpReassembler._set_aside)
                    conn = self._wake(index, conn)
                conn.handler.gone = True
                self._go_dormant(conn, frame)
            if index == through:
                return

    def _slow(self, frame, ts, seg, h) -> None:
        if h is None and self.pending_ids and self._asleep:
            index = self._asleep.get(_asleep_name(*seg[:4]))
            if index in self.pending_ids:
                self.settle(index)
        TcpReassembler._slow(self, frame, ts, seg, h)

    def _open(self, frame, ts, seg):
        # An opening takes its 5-tuple's entry from the memory of connections closed when
        # idle (never one still awaiting its answer: that one's segments wake it first).
        # Only past that memory's bound, where an entry is forgotten at each new one, could
        # the order of openings and settlements tell: then everything is settled first.
        if self.pending and len(self._dormant) + 2 * len(self.pending) > 2 * self.dormant_memory:
            self.settle()
        return TcpReassembler._open(self, frame, ts, seg)

    def promote(self, index: int) -> None:
        if self.pending and len(self._live) >= self.max_connections:
            self.settle()
        TcpReassembler.promote(self, index)

    def finish(self) -> None:
        self.settle()
        TcpReassembler.finish(self)


class Router:
    """Reads the capture once and routes its DCE/RPC connections' events to `shards`
    shards through `links` (_Links): see the module."""

    FLUSH = 256 << 10           # octets of data queued over all shards before the batches go

    def __init__(self, shards: int, links: "_Links"):
        self.shards = shards
        self.links = links
        self.stats = Stats()
        self._undecided = 0
        self.load = [0] * shards            # TCP payload octets handed to each shard's connections
        self.pair_shard: dict[str, int] = {}
        self.conn_shard: dict[int, int] = {}    # live connection -> its shard, for the TCP stage's records
        self.out: list[list] = [[] for _ in range(shards)]      # each shard's events
        self.blobs: list[list] = [[] for _ in range(shards)]    # and the octets of its DATA events
        self.queued = 0
        self.eseq = 0
        self.reassembler: _Reassembler | None = None
        self._aside = _SetAside(self)           # idle connections' state, compact
        self._resume = _Resume(self._aside)

    # The same balance over the same attributes (pair_shard, load, shards): the reading
    # process decides what each shard's own ShardAnalysis would have decided.
    shard_of_pair = ShardAnalysis.shard_of_pair

    def stream_handler(self, conn) -> _Route:
        k = self.shard_of_pair(conn.client[0], conn.server[0])
        self.conn_shard[conn.index] = k
        return _Route(conn, self, k)

    def promote(self, index: int) -> None:
        self.reassembler.promote(index)

    def send_rec(self, shard: int, rec) -> None:
        self.eseq += 1
        self.out[shard].append((REC, self.eseq, None, rec, None, None, None))

    def tcp_error(self, rec) -> None:
        self.send_rec(self.conn_shard.get(rec.conn, 0) if rec.conn is not None else 0, rec)

    def decap_error(self, rec) -> None:
        self.send_rec(0, rec)

    def flush(self, shard: int | None = None) -> None:
        """Sends the queued events (of one shard, or of all), one message a shard."""
        for k in range(self.shards) if shard is None else (shard,):
            events = self.out[k]
            if events:
                # The data apart from the pickle: pickling megabytes grows its buffer by
                # reallocation, and the fresh pages cost more in the kernel than the
                # pipe's own copy (0.6 s of system time per GB).
                blob = self.blobs[k]
                self.links.send(k, pickle.dumps(events, pickle.HIGHEST_PROTOCOL), b"".join(blob))
                events.clear()
                blob.clear()
        if shard is None:
            self.queued = 0

    def run(self, path) -> None:
        stats = self.stats
        reassembler = self.reassembler = _Reassembler(self, self.stream_handler, errors=self.tcp_error)
        self.links.flush_for = self.flush
        feed = reassembler.feed
        source = open_sources([path])
        decap = Decapsulation(self.decap_error)
        limit = self.FLUSH
        for frame, ts, linktype, data in source:
            stats.frames += 1
            seg = tcp_segment(linktype, data, decap, frame, ts)
            if seg is None:
                stats.non_tcp_frames += 1
            else:
                feed(frame, ts, seg)
                if self.queued >= limit:
                    self.flush()
        decap.finish()
        reassembler.finish()
        stats.tcp = dict(reassembler.stats)
        if decap.frag.stats["fragments"]:
            stats.ip_fragments = dict(decap.frag.stats)
        tcp = stats.tcp
        stats.forgotten["tcp_connections"] += tcp.get("evicted", 0)
        stats.forgotten["tcp_other_connections"] += tcp.get("evicted_other", 0)
        stats.forgotten["tcp_set_aside"] += tcp.get("dormant_forgotten", 0)
        for k in range(self.shards):        # in shard order, as the old split merged them
            self.eseq += 1
            self.out[k].append((FLOODS, self.eseq, None, None, None, None, None))
        for err in source.errors:
            self.send_rec(0, err)
        for k in range(self.shards):
            self.eseq += 1
            self.out[k].append((END, self.eseq, None, stats if k == 0 else None, None, None, None))
        self.flush()
        self.links.close()


class RoutedShard(ShardAnalysis):
    """A shard fed by the reading process: runs the DCE/RPC layer and everything above it
    for the connections routed to it; `consume(batches)` yields (key, record) pairs as
    ShardAnalysis.run does, keyed (event number, record number)."""

    def __init__(self, shard: int, shards: int, nonce: str, answer, **kwargs):
        super().__init__(shard, shards, nonce, **kwargs)
        self.answer = answer                # answer(keep): an idle check's answer to the reading process
        self.eseq = 0
        self.router_stats: Stats | None = None
        self.tcp_sums = dict.fromkeys(_TCP_SUMS, 0)

    def _key(self) -> tuple:
        self.seq += 1
        return (self.eseq, self.seq)

    def result(self):
        return RoutedStats(self.stats, self.router_stats, self.tcp_sums)

    def _failed(self, index: int, exc: Exception, frame) -> None:
        """What the TCP stage reports when a handler raises (TcpReassembler._handler_failed)."""
        for name in _TCP_SUMS:
            self.tcp_sums[name] += 1
        self.emit(ErrorRecord(stage="tcp", reason=f"stream handler raised {_describe(exc)}", frame=frame,
                              conn=index, kind="tcp.internal_error"))

    def consume(self, batches):
        live: dict[int, _Detector] = {}     # connections awake
        resting: dict[int, tuple] = {}      # connections set aside while idle: (store, state)
        out = self._out

        def wake(index: int) -> _Detector:
            store, state = resting.pop(index)
            det = live[index] = store(state)[0]
            return det

        for events, blob in batches:
            at = 0
            for kind, eseq, index, a, b, c, d in events:
                self.eseq = eseq
                if kind == DATA:
                    det = live.get(index) or wake(index)
                    data = blob[at:at + b]
                    at += b
                    try:
                        det.handler.on_data(a, data, c, d)
                    except Exception as exc:  # noqa: BLE001 - as the reassembler does
                        self._failed(index, exc, c)
                elif kind == GAP:
                    det = live.get(index) or wake(index)
                    try:
                        det.on_gap(a, b, c)
                    except Exception as exc:  # noqa: BLE001
                        self._failed(index, exc, c)
                elif kind == ATTACH:
                    client, server, first_frame, known_by, tunnel, resumed = a
                    conn = TcpConnection(index, client, server, first_frame, known_by, tunnel=tunnel,
                                         resumed=resumed)
                    det = live[index] = _Detector(conn, self)
                    try:
                        det._attach(c, b)
                    except Exception as exc:  # noqa: BLE001
                        self._failed(index, exc, d)
                elif kind == CLOSE:
                    det = live.pop(index, None) or wake(index)
                    live.pop(index, None)
                    det.conn.closed_by = a
                    try:
                        det.on_close(b)
                    except Exception as exc:  # noqa: BLE001
                        self._failed(index, exc, b)
                elif kind == IDLE:
                    self._idle(live.get(index) or wake(index), index, a, live, resting)
                elif kind == REC:
                    self.emit(a)
                elif kind == FLOODS:
                    self._flush_floods()
                elif kind == END:
                    self.router_stats = a
                    self._count_forgotten(self.stats.forgotten)
                    self.stats.pdus_by_outcome["malformed"] += sum(self._call_pdus.values())
                    self._call_pdus.clear()
                    yield from _drain(out)
                    return
                elif kind == FAIL:
                    raise RuntimeError(f"reading process: {a}")
                if out:
                    yield from _drain(out)
        raise RuntimeError("the reading process ended without its results")

    def _idle(self, det: _Detector, index: int, frame: int, live: dict, resting: dict) -> None:
        """The TCP stage's idle check (TcpReassembler._release) on this shard's side."""
        keep = True
        try:
            keep = det.on_idle(frame)
        except Exception as exc:  # noqa: BLE001
            self._failed(index, exc, frame)
        self.answer(keep)
        if keep:
            try:
                got = det.set_aside(None)
            except Exception as exc:  # noqa: BLE001
                self._failed(index, exc, frame)
                return
            if got is not None:
                del live[index]
                resting[index] = got
            return
        del live[index]
        det.conn.closed_by = "idle"
        try:
            det.on_close(frame)
        except Exception as exc:  # noqa: BLE001
            self._failed(index, exc, frame)


class RoutedStats:
    """What a routed shard ends with: its own Stats, the reading process's (shard 0's only)
    and the TCP counters of its handlers' failures."""

    __slots__ = ("stats", "router", "tcp_sums")

    def __init__(self, stats: Stats, router: Stats | None, tcp_sums: dict):
        self.stats, self.router, self.tcp_sums = stats, router, tcp_sums

    def __getstate__(self):
        return (self.stats, self.router, self.tcp_sums)

    def __setstate__(self, state):
        self.stats, self.router, self.tcp_sums = state


def merge_routed_stats(parts: list[RoutedStats]) -> Stats:
    """The reading process counted frames, connections, gaps and the TCP stage; the shards
    what their pipelines counted (summed, as dissectors.parallel.merge_stats does)."""
    router = parts[0].router
    total = Stats()
    total.frames, total.non_tcp_frames = router.frames, router.non_tcp_frames
    total.tcp = dict(router.tcp)
    for name in _TCP_SUMS:
        if name in total.tcp:
            total.tcp[name] += sum(p.tcp_sums[name] for p in parts)
    total.ip_fragments = router.ip_fragments
    for name in ("tcp_flows", "rpc_flows", "other_flows", "gaps", "gap_bytes"):
        setattr(total, name, getattr(router, name))
    total.forgotten.update(router.forgotten)
    for p in parts:
        s = p.stats
        for name in ("pdus", "calls", "errors", "suppressed"):
            setattr(total, name, getattr(total, name) + getattr(s, name))
        for name in ("pdus_by_type", "pdus_by_outcome", "calls_by_outcome", "errors_by_stage", "anomalies"):
            getattr(total, name).update(getattr(s, name))
        total.forgotten.update({k: n for k, n in s.forgotten.items() if not k.startswith("tcp_")})
    return total


# -- the pipes ----------------------------------------------------------------------------

class _Links:
    """The reading process's ends: one pipe of events to each shard, written as _Outbox does
    (without waiting, up to `AHEAD` octets unsent), and one pipe of idle-check answers from
    each, read whenever the reading process waits, so that neither side waits on the other's
    full pipe."""

    AHEAD = 1 << 20

    def __init__(self, events: list[int], answers: list[int]):
        self.boxes = [_RouteOut(fd, self) for fd in events]
        self.answer_fds = answers
        self.answers = [deque() for _ in answers]
        self.ended = [False] * len(answers)     # the shard closed its pipe of answers (it is done)
        self.flush_for = None
        for fd in answers:
            os.set_blocking(fd, False)

    def send(self, shard: int, meta: bytes, blob: bytes) -> None:
        self.drain()
        self.boxes[shard].send(meta, blob, 1)

    def drain(self) -> None:
        """Reads the answers there are, without waiting."""
        for k, fd in enumerate(self.answer_fds):
            if not self.ended[k]:
                self._read(k, fd)

    def _read(self, k: int, fd: int) -> None:
        while True:
            try:
                got = os.read(fd, 1 << 16)
            except BlockingIOError:
                return
            if not got:
                self.ended[k] = True
                return
            self.answers[k].extend(got)

    def wait(self, box: "_RouteOut | None", shard: int | None = None) -> None:
        """Until `box`'s pipe has room or shard `shard` has answered; reads answers meanwhile."""
        poll = select.poll()
        for k, fd in enumerate(self.answer_fds):
            if not self.ended[k]:
                poll.register(fd, select.POLLIN)
        for b in self.boxes:
            if b.parts:
                poll.register(b.fd, select.POLLOUT)
        ready = dict(poll.poll())
        for k, fd in enumerate(self.answer_fds):
            if fd in ready and not self.ended[k]:
                self._read(k, fd)
        for b in self.boxes:
            if b is not box and b.parts and b.fd in ready:
                b.flush(b.pending)      # what its pipe takes now

    def answer(self, shard: int) -> bool:
        """The next idle-check answer of `shard`, once its events up to it have been sent."""
        answers = self.answers[shard]
        if not answers:
            self.flush_for(shard)
            self.drain()
        while not answers:
            if self.ended[shard]:
                raise RuntimeError(f"shard {shard} ended before it answered")
            self.wait(None, shard)
        return bool(answers.popleft())

    def close(self) -> None:
        for b in self.boxes:
            b.flush(0)
            os.close(b.fd)


class _RouteOut(_Outbox):
    __slots__ = ("links",)

    AHEAD = _Links.AHEAD

    def __init__(self, fd: int, links: _Links):
        super().__init__(fd)
        self.links = links

    def wait(self) -> None:
        self.links.wait(self)


def router_main(path, shards: int, events: list[int], answers: list[int]) -> None:
    """The reading process of a LocalRun: reads `path` and feeds the shards; a failure is
    sent to every shard, which reports it."""
    links = _Links(events, answers)
    try:
        Router(shards, links).run(path)
    except BaseException as e:  # noqa: BLE001 - the shards report it
        message = pickle.dumps([(FAIL, 0, None, f"{type(e).__name__}: {e}", None, None, None)])
        for box in links.boxes:         # after whole messages: a box writes them in order
            try:
                box.send(message, b"", 0)
            except OSError:
                pass


def event_batches(fd: int):
    """A shard's side of its pipe of events: each message's (events, the octets of its DATA
    events), read into one buffer that is kept (a fresh one each time costs page faults)."""
    buf = bytearray(1 << 20)
    while True:
        if not _read_exact(fd, buf, _HEADER.size):
            break
        _, meta, size = _HEADER.unpack_from(buf)
        if len(buf) < meta + size:
            buf = bytearray(meta + size)
        if not _read_exact(fd, buf, meta + size):
            break
        view = memoryview(buf)
        yield pickle.loads(view[:meta]), bytes(view[meta:meta + size])
        del view
    raise RuntimeError("the reading process ended without its results")


def _read_exact(fd: int, buf: bytearray, n: int) -> bool:
    """Reads n octets into buf; False at the end of the pipe."""
    view = memoryview(buf)
    got = 0
    while got < n:
        k = os.readv(fd, [view[got:n]])
        if k == 0:
            return False
        got += k
    return True


def answerer(fd: int):
    """answer(keep): writes a shard's answer to an idle check."""
    def answer(keep: bool) -> None:
        os.write(fd, b"\x01" if keep else b"\x00")
    return answer
