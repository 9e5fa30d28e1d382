"""One analysis split by host pair over several processes, merged into the single run's output.

Everything the DCOM and WMI stages correlate stays between two hosts: the activation on
port 135 and the object exporter it names, the OXID and IPID state, the enumerators and
call results, and the server's callbacks to the client's sink (the same pair, the other
way). So shard k of N takes the TCP connections of the host pairs given to it and
analyses them alone.

Which shard takes a host pair: the one that has been handed the fewest TCP payload
octets so far when the pair's first connection opens (the lowest-numbered on a tie).
Every shard reassembles the same connections from the same frames, so every shard
counts the same octets and makes the same choice without asking the others; a pair
keeps its shard for the rest of the run. A hash of the pair (what the split did before)
leaves a capture of a few dozen busy pairs a third heavier on one side by chance; the
running balance keeps the shards within about one session of each other. Past
`PAIRS_MAX` distinct pairs the new ones fall back to the hash (`shard_of`), so the table
of choices stays bounded.

Local workers on one capture file do not pay what follows: one process reads the file
once for all of them and routes each DCE/RPC connection's events to its shard
(dissectors.routed, `RoutedShard`; LocalRun.ROUTED), with the same balance, keys and
output. On Dask and for a capture set of several files, every shard reads the whole
frame stream and runs the TCP reassembler over all of it, handing only its own
connections to the DCE/RPC layer. That is the split's price there: each
further shard pays it again (on clear traffic a small fraction of the decoding; on
sealed copies of small PDUs about a quarter of one process: 5.9 s of 23 s at 1 GB,
2.8 s of it reading and peeling the frames; docs/performance.md, "Sixth pass"). That
keeps what the single run numbers globally the same in every shard: frame numbers,
connection indices (tshark's tcp.stream order), the reassembler's counters and limits. The one number a shard cannot know is the WMI
operation's (`op-N`, counted over every pair): a shard names its operations with tokens
and announces each in its stream where it was made; the merge numbers them in merged
order.

A shard's records come out keyed by where the single run would have emitted them:
(0, frame) while the frames are read, (1, -1) for what the decapsulation flushes at the
end, (1, connection) while the connections still open at the end are flushed (in creation order, as the reassembler does), (2, 0) for the
capture reader's errors; within a key, in the shard's order. Merging the shards'
keyed streams (`merge_bytes`; on equal keys the lower shard first) is then the single
run's order.

Known differences from one process, all at limits no ordinary capture reaches: the
correlation state's LRU caps (1024 host pairs, ...) are per shard, so a split run
forgets later; connections evicted together past the reassembler's 10000 live ones
may report in another order; an IPID announced between two hosts and used between two
others (a multi-homed server reached by both addresses) is not recognised across
shards; a DCE/RPC connection that its owner sets aside when idle (its DCE/RPC layer
holding no context, key or call: seen from its middle, say) stays live in the other
shards, so that it counts against their live table's bound, and a SYN reusing its
5-tuple with its first initial sequence number would be numbered apart.

Why a shard does not skip the other shards' frames: what every output numbers (the
connection index) and counts (the TCP counters) comes out of the reassembler's state
over all connections: the closed-connection memory, SYN reuse, the bounded tables'
evictions of the least recently active (which need each connection's DCE/RPC
recognition from its first octets) and idle set-asides. A lighter record for foreign
connections would be a second copy of those rules; measured, skipping the foreign
segments altogether (not exact) would save nothing measurable on clear traffic and
about 0.15 s of 1.0 s per shard on 60 MB of sealed replicas (docs/performance.md).
"""

from __future__ import annotations

import os
import pickle
import struct
import zlib
from bisect import bisect_left, bisect_right
from collections import deque

from .pipeline import Analysis, Stats, _Detector, _SetAside
from .tcp import NullHandler

TEXT, OP, ODD = 0, 1, 2
# ODD: a record's text that strict UTF-8 cannot encode (a lone surrogate from a UTF-16
# string in the capture); it travels with surrogatepass and is written as text, so that
# the parent's stdout takes or refuses it as one process's would.
# An operation's stand-in id: ASCII, so that the text around it stays ASCII too (a single
# non-ASCII character makes Python store, pickle and scan a whole JSON line at two octets
# a character); the run's random nonce keeps a capture from forging one.
_OP_TOKEN = "op-~{nonce}.{shard}.{n}~"
PAIRS_MAX = 1 << 16
_NULL = NullHandler()


def shard_of(a: str, b: str, shards: int) -> int:
    """A hash of the host pair {a, b} over the shards: stable across processes and machines."""
    if a > b:
        a, b = b, a
    return zlib.crc32(f"{a}|{b}".encode()) % shards


class _ShardDetector(_Detector):
    """Counts this shard's octets, and its connections' closes, set-asides and resumptions
    (see ShardAnalysis.tcp_stats); notes, while the connections open at the end are
    flushed, whose records follow."""

    __slots__ = ()

    def on_data(self, direction: int, data: bytes, frame: int, ts: float) -> None:
        analysis = self.analysis
        analysis.load[analysis.shard] += len(data)
        if analysis.phase:
            analysis.where = self.conn.index
        handler = self.handler
        if handler is not None:         # DCE/RPC: straight on, one call fewer a segment
            handler.on_data(direction, data, frame, ts)
        else:
            _Detector.on_data(self, direction, data, frame, ts)

    def on_gap(self, direction: int, missing: int | None, frame: int) -> None:
        if self.analysis.phase:
            self.analysis.where = self.conn.index
        _Detector.on_gap(self, direction, missing, frame)

    def on_close(self, frame: int) -> None:
        analysis = self.analysis
        if analysis.phase == 1:
            analysis.where = self.conn.index
        analysis.own.discard(self.conn.index)
        analysis.owned["dormant" if self.conn.closed_by == "idle" else "closed"] += 1
        super().on_close(frame)


class _ForeignDetector(_Detector):
    """Another shard's connection, only recognised (DCE/RPC or not) as that shard does:
    every shard's TCP stage then keeps, promotes and evicts the same connections and
    numbers them alike. Nothing counted or reported but the octets that shard is handed,
    so that every shard balances new host pairs alike; once recognised, a segment costs
    one call and an addition."""

    __slots__ = ("target",)

    def __init__(self, conn, analysis: "ShardAnalysis", target: int):
        super().__init__(conn, analysis)
        self.target = target

    def on_data(self, direction: int, data: bytes, frame: int, ts: float) -> None:
        self.analysis.load[self.target] += len(data)
        if self.chunks is not None:     # not yet recognised
            _Detector.on_data(self, direction, data, frame, ts)

    def _count(self, name: str) -> None:
        pass

    def _attach(self, chunks: list, gaps: list) -> None:
        self.handler = _NULL

    def on_gap(self, direction: int, missing: int | None, frame: int) -> None:
        if self.handler is None and self.chunks is not None:
            self.from_start = False

    def _asides(self) -> "_SetAside":
        # Not the store of this shard's own connections: a foreign connection's pickle (no
        # DCE/RPC layer, 0.5 KB) set aside first became the dictionary of every own one,
        # which then deflated to 420 octets instead of 80 (200 MB of sealed copies, the
        # shard whose first idle connection was foreign: 784 KB of states against 143 KB).
        return self.analysis._foreign_aside

    def on_idle(self, frame: int) -> bool:
        # Whether the owner's DCE/RPC layer still holds session state (then the connection
        # stays) or not (then it is set aside, and resumes under its number) only the
        # owner knows. Kept here: as the owner does whenever a bind, a key or a call is
        # pending, which is nearly always; answering "not" made every shard but the
        # owner set aside every idle connection it did not own, so that a split run's
        # TCP counters (closed, dormant) differed from one process's. The set-asides
        # are counted by the owner (ShardAnalysis.tcp_stats).
        return True


class ShardAnalysis(Analysis):
    """The pipeline for the connections of one shard; `run` yields (key, record) pairs,
    and (key, _OpMade) where the WMI correlation made an operation."""

    OWNED_TCP = ("closed", "dormant", "resumed")

    def __init__(self, shard: int, shards: int, nonce: str, **kwargs):
        super().__init__(**kwargs)
        self.shard, self.shards, self.nonce = shard, shards, nonce
        self.own: set[int] = set()           # indices of this shard's live connections
        self.load = [0] * shards             # TCP payload octets handed to each shard's connections
        self.pair_shard: dict[str, int] = {}     # host pair ("a b", a < b) -> its shard
        # the TCP counters only a connection's own shard counts right (see tcp_stats)
        self.owned = dict.fromkeys(self.OWNED_TCP, 0)
        self._foreign_aside = _SetAside(self)     # other shards' idle connections (_ForeignDetector)
        self.phase = 0
        self.where = 0
        self.seq = 0
        self._emit = super().emit
        ops = self.operations
        made = ops._new_op

        def new_op(call, kind, namespace):
            op = made(call, kind, namespace)
            op.id = _OP_TOKEN.format(nonce=nonce, shard=shard, n=ops._next)
            self._out.append((self._key(), _OpMade(op.id)))
            return op

        ops._new_op = new_op

    def _key(self) -> tuple:
        self.seq += 1
        if self.phase:
            return (self.phase, self.where, self.seq)
        # While the frames are read, what a frame makes is keyed by its number: frames
        # are numbered 1, 2, ... as they are counted (one file, a capture set, live).
        return (0, self.stats.frames, self.seq)

    def emit(self, rec) -> None:
        out = self._out
        n = len(out)
        self._emit(rec)
        if len(out) > n and out[-1] is rec:
            out[-1] = (self._key(), rec)

    def shard_of_pair(self, a: str, b: str) -> int:
        """The shard of host pair {a, b}: the least loaded when it is first seen (see the module)."""
        # One string, not a tuple of the two addresses: past the capture reader's address
        # cache the table alone holds them (the resting connections' flow keys that shared
        # them are gone), and it grows with the pairs: 9,341 in 1 GB of sealed copies, about
        # 0.85 MB a shard against 1.8 MB as tuples of their own strings
        key = f"{a} {b}" if a < b else f"{b} {a}"
        k = self.pair_shard.get(key)
        if k is None:
            if len(self.pair_shard) >= PAIRS_MAX:
                return shard_of(a, b, self.shards)
            load = self.load
            k = load.index(min(load))
            self.pair_shard[key] = k
        return k

    def stream_handler(self, conn):
        k = self.shard_of_pair(conn.client[0], conn.server[0])
        if k != self.shard:
            return _ForeignDetector(conn, self, k)
        self.own.add(conn.index)
        if conn.resumed:
            self.owned["resumed"] += 1
        return _ShardDetector(conn, self)

    def tcp_stats(self, reassembler) -> dict:
        """The reassembler's counters, every shard's alike, but for what depends on a
        connection's DCE/RPC state (set aside when idle or kept: see
        _ForeignDetector.on_idle): closed, dormant, resumed are this shard's own
        connections', which merge_stats sums."""
        tcp = super().tcp_stats(reassembler)
        tcp.update(self.owned)
        return tcp

    def tcp_error(self, rec) -> None:
        # Every shard reassembles every connection: each reports its own connections'
        # errors, shard 0 those about none.
        mine = rec.conn in self.own if rec.conn is not None else self.shard == 0
        if mine:
            self.emit(rec)

    def decap_error(self, rec) -> None:
        if self.shard == 0:             # every shard decapsulates every frame
            self.emit(rec)

    def capture_errors(self, errors) -> None:
        self.phase, self.where = 2, 0
        if self.shard == 0:
            super().capture_errors(errors)

    def result(self):
        """What the shard ends with, for the parent's merge (merge_stats)."""
        return self.stats

    def end_of_frames(self) -> None:
        # What the end of the frames flushes (IP fragments never completed) comes before
        # the connections still open, which follow in index order.
        self.phase, self.where = 1, -1


class _OpMade:
    __slots__ = ("token",)

    def __init__(self, token: str):
        self.token = token


def shard_stream(source, shard: int, shards: int, nonce: str, analysis_kwargs: dict, make_renderer,
                 batch: int = 4096, size: int = 1 << 20, routed: tuple | None = None):
    """Shard `shard` of a run, as batches (items, blob): blob holds the UTF-8 text of the
    batch's records one after the other; items are (key, TEXT, start, end, where), the
    record's text being blob[start:end] and where the offsets in blob of its operation
    tokens (or None), and (key, OP, token) where an operation was made (token: the part of
    its stand-in id after the marker, as bytes). A batch ends at `batch` items or once its
    text reaches `size` octets.

    The text goes as encoded bytes because that is what the parent writes: one copy
    out of the pipe, none through pickle's strings and the text layer's encoder (70 MB
    of JSON lines per 60 MB of objects, all of it through the one parent).

    source: what `Analysis.run` takes (a capture's path), read whole by every shard;
    routed: instead, (events, answers), the shard's ends of the pipes from and to the
    process that reads the capture for every shard (dissectors.routed);
    make_renderer(): a function rendering one record to text ("" for nothing).
    The generator's return value (StopIteration.value) is the shard's Stats (routed: a
    routed.RoutedStats)."""
    if routed is None:
        analysis = ShardAnalysis(shard, shards, nonce, **analysis_kwargs)
        pairs = analysis.run(source)
    else:
        from .routed import RoutedShard, answerer, event_batches
        analysis = RoutedShard(shard, shards, nonce, answerer(routed[1]), **analysis_kwargs)
        pairs = analysis.consume(event_batches(routed[0]))
    render = make_renderer()
    marker = _op_marker(nonce)
    cut = len(marker)
    items, parts, at = [], [], 0
    for key, rec in pairs:
        if type(rec) is _OpMade:
            items.append((key, OP, rec.token[cut:].encode()))
            continue
        text = render(rec)
        if text:
            kind = TEXT
            try:
                data = text.encode()
            except UnicodeEncodeError:
                data, kind = text.encode("utf-8", "surrogatepass"), ODD
            end = at + len(data)
            where = _find_all(data, marker, at)
            items.append((key, kind, at, end, where))
            parts.append(data)
            at = end
            if at >= size or len(items) >= batch:
                yield items, b"".join(parts)
                items, parts, at = [], [], 0
    if items:
        yield items, b"".join(parts)
    return analysis.result()


def _op_marker(nonce: str) -> bytes:
    return f"op-~{nonce}.".encode()


def _find_all(data: bytes, marker: bytes, at: int) -> list | None:
    """Where marker occurs in data, as offsets from `at` on (None: nowhere)."""
    p = data.find(marker)
    if p < 0:
        return None
    where = []
    while p >= 0:
        where.append(at + p)
        p = data.find(marker, p + 1)
    return where


def merge_bytes(streams, nonce: str, records: bool = False):
    """The text of the shards' streams (iterables of batches) in the single run's order, as
    bytes-like pieces to write one after the other (str for an ODD record's): a run of one
    shard's records in a row is one slice of its batch, cut only around the operation
    tokens (records=True: one bytes object per record instead).

    The shards' keys are merged a run at a time: the shard with the least next key goes
    on up to the least next key of the others (bisect over its batch's keys), so the
    parent's work grows with how often the shards alternate, not with their octets."""
    numbers: dict[bytes, bytes] = {}        # token ("shard.n~") -> b"op-N"
    cut = len(_op_marker(nonce))
    iters = [iter(s) for s in streams]
    heads: list = []                        # per shard: [keys, items, blob, position] or None
    for it in iters:
        heads.append(_next_batch(it))
    while True:
        live = [i for i, h in enumerate(heads) if h is not None]
        if not live:
            return
        # the shard holding the least next key; ties go to the lower-numbered shard,
        # as heapq.merge of the shards in order would have it
        i = min(live, key=lambda j: (heads[j][0][heads[j][3]], j))
        keys, items, blob, pos = heads[i]
        others = [(heads[j][0][heads[j][3]], j) for j in live if j != i]
        if others:
            bound, j = min(others)
            stop = (bisect_right if i < j else bisect_left)(keys, bound, pos)
        else:
            stop = len(keys)
        view = memoryview(blob)
        start = None                        # where the pending slice of text starts
        end = 0
        for item in items[pos:stop]:
            kind = item[1]
            if kind == OP:
                numbers[item[2]] = b"op-%d" % (len(numbers) + 1)
                continue
            if records or kind == ODD:
                if start is not None:
                    yield view[start:end]
                    start = None
                piece = _numbered(blob, item[2], item[3], item[4], cut, numbers)
                yield piece.decode("utf-8", "surrogatepass") if kind == ODD else piece
                continue
            if start is None:
                start = item[2]
            if item[4]:
                # The shard found the tokens (it scans in parallel with the others); here
                # only the slices around them are cut.
                for p, after, number in _tokens(blob, item[4], cut, numbers):
                    yield view[start:p]
                    yield number
                    start = after
            end = item[3]
        if start is not None:
            yield view[start:end]
        if stop < len(keys):
            heads[i][3] = stop
        else:
            heads[i] = _next_batch(iters[i])


def _next_batch(it):
    for items, blob in it:
        if items:
            return [[item[0] for item in items], items, blob, 0]
    return None


def _numbered(blob, start: int, end: int, where: list | None, cut: int, numbers: dict) -> bytes:
    """blob[start:end] with its operation tokens numbered (where: their offsets, or None)."""
    if not where:
        return bytes(blob[start:end])
    out = []
    last = start
    for p, after, number in _tokens(blob, where, cut, numbers):
        out.append(blob[last:p])
        out.append(number)
        last = after
    out.append(blob[last:end])
    return b"".join(out)


def _tokens(blob, where: list, cut: int, numbers: dict):
    """(offset, end, b"op-N") of each stand-in token at `where` whose operation the merge has
    numbered (a token of an operation no record made is left as written)."""
    for p in where:
        after = blob.index(b"~", p + cut) + 1
        number = numbers.get(bytes(blob[p + cut:after]))
        if number is not None:
            yield p, after, number


def merge(streams, nonce: str):
    """Each record's text (str), in the single run's order: for a consumer that reads records."""
    for piece in merge_bytes(streams, nonce, records=True):
        yield piece if type(piece) is str else piece.decode()


def merge_stats(parts: list[Stats]) -> Stats:
    """Every shard read every frame and reassembled every connection: those counts are
    shard 0's; what the shards' pipelines counted is summed (in the single run's order)."""
    total = Stats()
    first = parts[0]
    total.frames, total.non_tcp_frames, total.tcp = first.frames, first.non_tcp_frames, dict(first.tcp)
    for name in ShardAnalysis.OWNED_TCP:        # counted by each connection's own shard
        if name in total.tcp:
            total.tcp[name] = sum(s.tcp[name] for s in parts)
    total.ip_fragments = first.ip_fragments
    for s in parts:
        for name in ("tcp_flows", "rpc_flows", "other_flows", "gaps", "gap_bytes", "pdus", "calls", "errors",
                     "suppressed"):
            setattr(total, name, getattr(total, name) + getattr(s, name))
        for name in ("pdus_by_type", "pdus_by_outcome", "calls_by_outcome", "errors_by_stage", "anomalies"):
            getattr(total, name).update(getattr(s, name))
        # the shards' own tables; the TCP ones (every shard's alike) are shard 0's
        total.forgotten.update({k: n for k, n in s.forgotten.items() if not k.startswith("tcp_") or s is first})
    return total


def new_nonce() -> str:
    import secrets
    return secrets.token_hex(6)


# -- local processes --------------------------------------------------------------------

def _child(fd, source, shard, shards, nonce, analysis_kwargs, make_renderer, routed=None, others=()):
    _close_all(others)
    out = _Outbox(fd)
    try:
        gen = shard_stream(source, shard, shards, nonce, analysis_kwargs, make_renderer, routed=routed)
        while True:
            try:
                items, blob = next(gen)
            except StopIteration as stop:
                out.send(pickle.dumps(("stats", stop.value, cache_stats()), pickle.HIGHEST_PROTOCOL), b"", 0)
                break
            out.send(pickle.dumps(items, pickle.HIGHEST_PROTOCOL), blob, 1)
    except BaseException as e:  # noqa: BLE001 - the parent reports it
        try:
            out.send(pickle.dumps(("error", f"{type(e).__name__}: {e}", None)), b"", 0)
        except Exception:  # noqa: BLE001
            pass
    finally:
        os.close(fd)


def _router(source, shards, events, answers, others):
    import gc
    from .routed import router_main
    _close_all(others)
    # What the parent had made (imported modules, compiled parsers) is never garbage: the
    # collector's full passes would read it all, and writing its counts would copy pages.
    gc.freeze()
    router_main(source, shards, events, answers)


def _close_all(fds) -> None:
    """A forked process lets go of the other processes' ends of the pipes, so that each end
    sees the other's close."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


# A message on a worker's pipe: this header, the pickled items (or, last, the final
# tuple), the batch's text. Plain os.writev/readv instead of multiprocessing's Connection:
# its receiving side gathers a large message in a BytesIO and copies it out again, and
# pickling the text would copy it twice more.
_HEADER = struct.Struct("<BQQ")


class _Outbox:
    """A worker's messages to the parent, written as far as the pipe takes them without
    waiting; the rest stays in memory and goes on after the next batch.

    A batch is about as large as the pipe (1 MB), so a blocking write of one lasted until
    the parent had been scheduled and had read it: on a busy machine the worker stood
    still for every batch. A worker waits only with more than `AHEAD` octets unsent (the
    parent not reading at all), and at its end."""

    AHEAD = 8 << 20

    __slots__ = ("fd", "parts", "pending")

    def __init__(self, fd: int):
        self.fd = fd
        os.set_blocking(fd, False)
        self.parts: deque = deque()
        self.pending = 0

    def send(self, meta: bytes, blob: bytes, more: int) -> None:
        for part in (_HEADER.pack(more, len(meta), len(blob)), meta, blob):
            if part:
                self.parts.append(memoryview(part))
                self.pending += len(part)
        self.flush(self.AHEAD if more else 0)

    def flush(self, ahead: int) -> None:
        """Writes what the pipe takes; waits while more than `ahead` octets are unsent."""
        parts = self.parts
        while parts:
            try:
                n = os.writev(self.fd, list(parts)[:64])
            except BlockingIOError:
                if self.pending <= ahead:
                    return
                self.wait()
                continue
            self.pending -= n
            while n and n >= len(parts[0]):
                n -= len(parts.popleft())
            if n:
                parts[0] = parts[0][n:]

    def wait(self) -> None:
        """Until the pipe has room (the parent read from it)."""
        import select
        poll = select.poll()
        poll.register(self.fd, select.POLLOUT)
        poll.poll()


class _Inbox:
    """One worker's messages as they come off its pipe, read whenever the parent waits for
    any worker, so that no worker waits for the merge.

    The merge can write a shard's record only once every other shard has passed its key.
    Read on demand, a worker ahead of the others (its host pairs light where another's are
    heavy) filled its pipe within a batch or two and stopped until the slow one caught
    up: the shards ran in lockstep, and local imbalances between them were lost time
    (1 GB of the mix: 330-350 sleeps a worker; replayed at the shards' own pace on idle
    cores, 0.35 s of 15 s, docs/performance.md). Here a waiting parent reads
    every pipe that has data; a message that would take the shard's messages in memory
    past `memory` octets goes to a temporary file, so the parent's memory stays bounded
    however far one shard runs ahead. The messages are kept in order as runs, each in
    memory or in the file (`segments`), and a message that finds room in memory again
    stays there, behind the ones in the file: when the file held every message after the
    first one spilled until it was read back whole, a shard ahead by a little more than
    `memory` for long sent nearly its whole output through the file (1 GB of objects at
    load 8: 350 MB of 580; 110 MB this way, the same run's arrivals replayed).
    Where the file cannot be written (no room in TMPDIR), the messages wait in memory up
    to twice `memory` octets, and then the pipe is left unread (`full`): the worker waits,
    as before, with a wider window."""

    __slots__ = ("fd", "parts", "want", "got", "segments", "queued", "spill", "spilled", "read_at", "closed",
                 "failed")

    def __init__(self, fd: int):
        self.fd = fd
        os.set_blocking(fd, False)
        self.parts: list = []                # the message being read: header, meta, blob
        self.want = bytearray(_HEADER.size)
        self.got = 0
        # complete messages, oldest first, as runs: a deque of (more, meta, blob) in memory,
        # or an int, the offset in the file where a run written there ends
        self.segments: deque = deque()
        self.queued = 0                      # octets of the messages in memory
        self.spill = None                    # the temporary file
        self.spilled = 0                     # its end
        self.read_at = 0                     # where its next unread message starts
        self.closed = False
        self.failed = False                  # the file could not be written

    def full(self, memory: int) -> bool:
        return self.failed and self.queued >= 2 * memory

    def read(self, memory: int) -> None:
        """Reads what the pipe holds now, without blocking."""
        fd = self.fd
        while not self.closed:
            if not self.parts and not self.got and self.full(memory):
                return
            want = self.want
            if self.got < len(want):
                try:
                    n = os.readv(fd, [memoryview(want)[self.got:]])
                except BlockingIOError:
                    return
                if n == 0:
                    self.closed = True
                    return
                self.got += n
                if self.got < len(want):
                    continue
            parts = self.parts
            parts.append(want)
            if len(parts) == 1:
                _, meta, size = _HEADER.unpack(want)
                self.want, self.got = bytearray(meta), 0
            elif len(parts) == 2:
                self.want, self.got = bytearray(_HEADER.unpack(parts[0])[2]), 0
            else:
                self._put(_HEADER.unpack(parts[0])[0], parts[1], parts[2], memory)
                self.parts = []
                self.want, self.got = bytearray(_HEADER.size), 0

    def _put(self, more: int, meta: bytearray, blob: bytearray, memory: int) -> None:
        size = len(meta) + len(blob)
        segments = self.segments
        if self.queued + size > memory and not self.failed and self._write(more, meta, blob):
            if segments and type(segments[-1]) is int:
                segments[-1] = self.spilled
            else:
                segments.append(self.spilled)
            return
        if not segments or type(segments[-1]) is int:
            segments.append(deque())
        segments[-1].append((more, meta, blob))
        self.queued += size

    def _write(self, more: int, meta: bytearray, blob: bytearray) -> bool:
        """Appends a message to the file; False if it cannot be written (then it never is)."""
        start = self.spilled
        try:
            if self.spill is None:
                import tempfile
                self.spill = tempfile.TemporaryFile(prefix="wmiscope-shard-")
            fd = self.spill.fileno()
            for part in (_HEADER.pack(more, len(meta), len(blob)), meta, blob):
                view = memoryview(part)
                while view:
                    n = os.pwrite(fd, view, self.spilled)
                    self.spilled += n
                    view = view[n:]
            return True
        except OSError:
            self.failed = True
            self.spilled = start
            return False

    def take(self):
        """The oldest complete message (more, meta, blob), or None."""
        segments = self.segments
        if not segments:
            return None
        run = segments[0]
        if type(run) is not int:
            message = run.popleft()
            self.queued -= len(message[1]) + len(message[2])
            if not run:
                segments.popleft()
            return message
        fd = self.spill.fileno()
        more, meta, size = _HEADER.unpack(_pread(fd, _HEADER.size, self.read_at))
        at = self.read_at + _HEADER.size
        message = (more, _pread(fd, meta, at), _pread(fd, size, at + meta))
        self.read_at = at + meta + size
        if self.read_at == run:
            segments.popleft()
            if self.read_at == self.spilled and not self.failed:    # all read back: the file starts over
                self.spill.truncate(0)
                self.read_at = self.spilled = 0
        return message


def _pread(fd: int, n: int, at: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = os.preadv(fd, [view[got:]], at + got)
        if k == 0:
            raise EOFError
        got += k
    return buf


def cache_stats() -> dict:
    """Hits and misses of this process's caches of decoded objects: whole objects by their
    bytes (wmi's payload cache) and MS-WMIO class parts by theirs."""
    from ..formats import wmio
    from . import interpreter
    p = interpreter._PAYLOADS
    hits, misses = wmio.cache_stats()
    return {"objects": (p.lookups - p.misses, p.misses), "class parts": (hits, misses)}


class LocalRun:
    """Runs the shards in forked local processes; iterate `text()`, then read `stats`."""

    # How many octets of one worker's messages the parent holds in memory before the rest
    # goes to a temporary file (see _Inbox): a few batches, a fraction of a worker's
    # size (55-75 MB). Replayed from the shards' CPU pace on 1 GB (scripts/bench_lockstep.py),
    # a shard held to 4 MB ahead of the merge lost 0.04-0.07 s, to 16 MB nothing; past
    # this the spill costs a write and a read of what it sets aside.
    MEMORY = 8 << 20
    # One capture file is read once, by a process of its own that feeds the shards
    # (dissectors.routed); a capture set of several files is read by every shard.
    ROUTED = True

    def __init__(self, source, workers: int, analysis_kwargs: dict, make_renderer):
        import multiprocessing as mp
        from ..formats import wmio
        # What every worker would otherwise do for itself after the fork: import the
        # renderer's modules and compile the MS-WMIO parsers (a tenth of a second each).
        make_renderer()
        wmio.compile_parsers()
        self.nonce = new_nonce()
        ctx = mp.get_context("fork")
        self.inboxes: list[_Inbox] = []
        self.procs = []
        self.stats: Stats | None = None
        self.cache = []
        paths = [source] if isinstance(source, (str, bytes, os.PathLike)) else list(source)
        self.routed = self.ROUTED and len(paths) == 1
        if self.routed:
            from . import routed  # noqa: F401 - imported once, before the fork, for every process
        outs = [os.pipe() for _ in range(workers)]          # shard -> this process: records
        ends = [fd for pair in outs for fd in pair]
        if self.routed:
            events = [os.pipe() for _ in range(workers)]    # reading process -> shard
            answers = [os.pipe() for _ in range(workers)]   # shard -> reading process
            ends += [fd for pair in events + answers for fd in pair]
        for shard in range(workers):
            recv, send = outs[shard]
            _widen(send)
            routed = mine = None
            if self.routed:
                routed = (events[shard][0], answers[shard][1])
                _widen(events[shard][1])
            mine = (send, *routed) if routed else (send,)
            p = ctx.Process(target=_child, args=(send, source, shard, workers, self.nonce, analysis_kwargs,
                                                 make_renderer, routed, [fd for fd in ends if fd not in mine]),
                            daemon=True)
            p.start()
            self.inboxes.append(_Inbox(recv))
            self.procs.append(p)
        if self.routed:
            mine = [w for _, w in events] + [r for r, _ in answers]
            p = ctx.Process(target=_router, args=(paths[0], workers, [w for _, w in events],
                                                  [r for r, _ in answers], [fd for fd in ends if fd not in mine]),
                            daemon=True)
            p.start()
            self.procs.append(p)
        _close_all([fd for fd in ends if fd not in {box.fd for box in self.inboxes}])

    def _pump(self, block: bool) -> None:
        """Reads every worker's pipe that holds data; block: first waits until one does."""
        import select
        live = [box for box in self.inboxes if not box.closed and not box.full(self.MEMORY)]
        if not live:
            return
        poll = select.poll()
        for box in live:
            poll.register(box.fd, select.POLLIN)
        ready = {fd for fd, _ in poll.poll(None if block else 0)}
        for box in live:
            if box.fd in ready:
                box.read(self.MEMORY)

    def _batches(self, i, finals):
        box = self.inboxes[i]
        while True:
            # what the others sent meanwhile is read too, so that none waits on a full pipe
            self._pump(False)
            message = box.take()
            while message is None:
                if box.closed:
                    raise RuntimeError(f"worker {i} ended without its results")
                self._pump(True)
                message = box.take()
            more, meta, blob = message
            meta = pickle.loads(meta)
            if not more:
                finals[i] = meta
                return
            yield meta, blob

    def chunks(self):
        """The merged output as bytes-like pieces (see merge_bytes); then `stats` is set."""
        finals: dict[int, tuple] = {}
        yield from merge_bytes([self._batches(i, finals) for i in range(len(self.inboxes))], self.nonce)
        self._finish(finals)

    def text(self):
        """The merged output record by record, as str; then `stats` is set."""
        finals: dict[int, tuple] = {}
        yield from merge([self._batches(i, finals) for i in range(len(self.inboxes))], self.nonce)
        self._finish(finals)

    def _finish(self, finals: dict) -> None:
        for p in self.procs:
            p.join()
        for i in range(len(self.inboxes)):
            kind, value, cache = finals[i]
            if kind == "error":
                raise RuntimeError(f"worker {i}: {value}")
            self.cache.append(cache)
        parts = [finals[i][1] for i in range(len(self.inboxes))]
        if self.routed:
            from .routed import merge_routed_stats
            self.stats = merge_routed_stats(parts)
        else:
            self.stats = merge_stats(parts)

    def close(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.terminate()
            p.join()
        for box in self.inboxes:
            try:
                os.close(box.fd)
            except OSError:
                pass
            if box.spill is not None:
                box.spill.close()
        self.inboxes = []


def _widen(fd: int) -> None:
    """A larger pipe lets a shard run ahead of the merge by a megabyte instead of 64 KB."""
    try:
        import fcntl
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except (OSError, ImportError, AttributeError):
        pass


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
