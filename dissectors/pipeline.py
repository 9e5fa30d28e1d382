"""The wire engine end to end: a capture file in, named and paired calls out.

    open_capture -> tcp_segment -> TcpReassembler -> DceRpcConnection -> DcomDecoder

Every stage reports into one `Stats` so that nothing is silently dropped: each
frame is TCP or not, each PDU is counted by type and by outcome (decoded,
encrypted, unknown interface, malformed), and each call likewise; the parts add
up to the totals (tests check it).
"""

from __future__ import annotations

import io
import os
import pickle
import re
import zlib
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Iterator

from wmiscope.spec.anomalies import BY_NAME, SEVERITIES

from .auth import AuthContexts
from .capture import Decapsulation, open_sources, tcp_segment
from .dcerpc import PTYPE_NAMES, DceRpcConnection
from .dcom import DcomDecoder
from .ipid_registry import IpidRegistry
from .operations import Operations
from .records import Call, ErrorRecord, Pdu, is_error
from .tcp import TcpReassembler
from .wmi import WmiDecoder

# A plausible connection-oriented DCE/RPC common header: rpc_vers 5, minor 0 or 1,
# a known PDU type (0..19), any flags, a data representation of little- or
# big-endian integers / ASCII / IEEE floats, then two zero octets.
_RPC_HEADER = re.compile(rb"\x05[\x00\x01][\x00-\x13][\x00-\xff][\x00\x10]\x00\x00\x00", re.S)

# How much of a connection we look at before deciding it is not DCE/RPC, and how
# much all undecided connections may hold together (past it, a connection still
# undecided is taken for what most traffic is: not DCE/RPC).
DETECT_LIMIT = 64 * 1024
UNDECIDED_BUDGET = 16 << 20

PDU_OUTCOMES = ("decoded", "encrypted", "unknown_interface", "malformed")

# A flood of one anomaly kind on one connection (a hostile stream can make one per
# segment) is shown this many times, then only counted; one `analysis.suppressed`
# record per (connection, kind) says how many were held back.
FLOOD_LIMIT = 50
# The (connection, kind) counts behind that are bounded too: past this many keys the
# summaries so far are emitted and the counts start again.
FLOOD_KEYS_MAX = 1 << 16
_CALL_PTYPES = frozenset((0, 2, 3))    # request, response, fault: PDUs that belong to a call


@dataclass
class Stats:
    frames: int = 0
    non_tcp_frames: int = 0
    tcp_flows: int = 0
    rpc_flows: int = 0
    other_flows: int = 0
    gaps: int = 0
    gap_bytes: int = 0
    pdus: int = 0
    pdus_by_type: Counter = field(default_factory=Counter)
    pdus_by_outcome: Counter = field(default_factory=Counter)
    calls: int = 0
    calls_by_outcome: Counter = field(default_factory=Counter)
    errors: int = 0
    errors_by_stage: Counter = field(default_factory=Counter)
    anomalies: Counter = field(default_factory=Counter)     # by catalog kind: every record, in calls too
    suppressed: int = 0             # records of a flood counted here but not shown
    tcp: dict = field(default_factory=dict)
    ip_fragments: dict | None = None    # dissectors/ipfrag.py counters, when the capture held fragments
    # Entries the bounded tables gave up (see the README's bounds), by table; shown when any.
    forgotten: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        d = {
            "frames": self.frames,
            "non_tcp_frames": self.non_tcp_frames,
            "tcp_flows": self.tcp_flows,
            "dcerpc_flows": self.rpc_flows,
            "other_flows": self.other_flows,
            "gaps": self.gaps,
            "gap_bytes": self.gap_bytes,
            "pdus": self.pdus,
            "pdus_by_type": {PTYPE_NAMES.get(k, str(k)): v for k, v in sorted(self.pdus_by_type.items())},
            "pdus_by_outcome": {k: self.pdus_by_outcome.get(k, 0) for k in PDU_OUTCOMES},
            "calls": self.calls,
            "calls_by_outcome": {k: self.calls_by_outcome.get(k, 0) for k in PDU_OUTCOMES},
            "errors": self.errors,
            # sorted, as the kinds are: a split run (dissectors.parallel) sums its shards'
            # counters, which do not keep the single run's order of first appearance
            "errors_by_stage": dict(sorted(self.errors_by_stage.items())),
            "anomalies_by_kind": dict(sorted(self.anomalies.items())),
            "anomalies_by_severity": {sev: sum(n for k, n in self.anomalies.items() if BY_NAME[k].severity == sev)
                                      for sev in SEVERITIES},
            "suppressed": self.suppressed,
            "tcp": self.tcp,
        }
        if self.ip_fragments:
            d["ip_fragments"] = self.ip_fragments
        forgotten = {k: n for k, n in sorted(self.forgotten.items()) if n}
        if forgotten:
            d["forgotten"] = forgotten
        return d


def call_outcome(call: Call) -> str:
    """One outcome per call, the most serious first, so the four counts add up. Only an
    anomaly of severity error makes a call malformed; warnings and notes ride along."""
    if call.errors and any(is_error(e) for e in call.errors):
        return "malformed"
    if call.req_encrypted or call.resp_encrypted:
        return "encrypted"
    if call.interface is None:
        return "unknown_interface"
    return "decoded"


# What other protocols that run beside WMI put at the start of a segment: a
# connection showing one of them is not DCE/RPC, whatever its payload carries
# (SMB2 writes and reads to named pipes hold whole DCE/RPC PDUs, for one).
_NOT_RPC = re.compile(
    rb"\x00[\x00-\xff]{3}[\xfe\xff\xfd]SMB"       # SMB1/2/3 over the NetBIOS session service (139, 445)
    rb"|(?:GET|POST|PUT|HEAD|OPTIONS|DELETE|CONNECT|PATCH|RPC_IN_DATA|RPC_OUT_DATA) |HTTP/1\."   # HTTP
    rb"|[\x14-\x17]\x03[\x00-\x04]"                # a TLS record (HTTPS, LDAPS, RDP with TLS ...)
    rb"|\x03\x00[\x00-\xff]{2}[\x02-\xff][\xe0\xd0\xf0]"   # TPKT + X.224 (RDP)
    rb"|\x00\x00[\x00-\xff]{2}[\x6a\x6b\x6c\x6d\x6e\x6f\x75\x76\x7e]"  # Kerberos over TCP: length, then KDC/AP message
    rb"|\x30[\x84\x82\x81][\x00-\xff]{1,4}\x02[\x01-\x04]",   # LDAP: a BER SEQUENCE starting with its messageID
    re.S)


class _Detector:
    """Stands in for a connection's handler until its bytes show whether it is DCE/RPC.

    A connection is DCE/RPC or it is not: decided once, from the starts of its
    segments (where a sender's messages begin), never from a header-like run of
    octets inside another protocol's payload. Non-RPC flows (SMB, HTTP, RDP,
    LDAP, Kerberos ...) are then dropped at the cost of one method call per
    segment and report nothing; their TCP gaps are counted in the stats but not
    reported as anomalies. RPC flows seen from their middle are handed over with
    every buffered byte (and gap), so the DCE/RPC layer reports the
    resynchronisation itself.
    """

    __slots__ = ("conn", "analysis", "chunks", "size", "handler", "from_start", "gaps")

    def __init__(self, conn, analysis: "Analysis"):
        self.conn = conn
        self.analysis = analysis
        self.chunks: list | None = []
        self.size = 0
        self.handler = None
        self.gaps: list = []        # gap records held until the connection is known to be DCE/RPC
        # True while the bytes seen are known to start at the connection's first byte.
        self.from_start = conn.client_known_by == "syn"
        self._count("tcp_flows")

    def _count(self, name: str) -> None:
        if self.conn.resumed:       # made again after the connection idled: counted once
            return
        stats = self.analysis.stats
        setattr(stats, name, getattr(stats, name) + 1)

    def on_data(self, direction: int, data: bytes, frame: int, ts: float) -> None:
        if self.handler is not None:
            self.handler.on_data(direction, data, frame, ts)
            return
        chunks = self.chunks
        if chunks is None:          # decided: not DCE/RPC
            return
        chunks.append((direction, data, frame, ts))
        self.size += len(data)
        analysis = self.analysis
        analysis._undecided += len(data)
        if analysis._undecided > UNDECIDED_BUDGET:
            self._not_rpc()
        elif self.from_start:
            # Seen from its handshake, a DCE/RPC connection starts with a header at
            # its very first byte (the client's bind); anything else (SMB, LDAP ...)
            # is not ours, however much a stray run of its bytes looks like one.
            first = b"".join(d for dr, d, _, _ in chunks if dr == chunks[0][0])
            if len(first) < 16:
                return
            if _RPC_HEADER.match(first) is not None:
                self._become_rpc()
            else:
                self._not_rpc()
        elif _NOT_RPC.match(data) is not None:
            self._not_rpc()
        elif _RPC_HEADER.match(data) is not None and _plausible_frag_len(data):
            # Seen from its middle: a PDU starts where a segment does.
            self._become_rpc()
        elif self.size > DETECT_LIMIT:
            self._not_rpc()

    def _not_rpc(self) -> None:
        self.analysis._undecided -= self.size
        self.chunks = None
        self.gaps = []
        self._count("other_flows")

    def on_gap(self, direction: int, missing: int | None, frame: int) -> None:
        analysis = self.analysis
        analysis.stats.gaps += 1
        analysis.stats.gap_bytes += missing or 0
        if self.handler is None and self.chunks is None:
            return                  # not DCE/RPC: counted, not reported
        # A gap is reported where it is found, so the analyst sees why the calls
        # around it are incomplete.
        side = "client->server" if direction == 0 else "server->client"
        size = f"{missing} bytes" if missing is not None else "an unknown number of bytes"
        rec = ErrorRecord("tcp", f"segment(s) not captured: {size} missing {side}", frame=frame, conn=self.conn.index,
                          kind="tcp.gap")
        if self.handler is not None:
            analysis.emit(rec)
            self.handler.on_gap(direction, missing, frame)
        else:
            self.gaps.append(rec)
            self.from_start = False     # what follows a hole can start anywhere in a PDU

    def on_close(self, frame: int) -> None:
        if self.handler is not None:
            self.handler.on_close(frame)
            if self.conn.tunnel is not None:
                self.analysis._tunnels.pop(self.conn.index, None)
        elif self.chunks is not None:
            self._not_rpc()

    def on_idle(self, frame: int) -> bool:
        """The connection has been idle long: what the DCE/RPC layer buffers is given back.
        True while it holds session state (contexts, keys, calls awaiting their response)."""
        on_idle = getattr(self.handler, "on_idle", None)
        return on_idle(frame) if on_idle is not None else False

    def set_aside(self, extra):
        """The connection idles with session state (on_idle said so): this detector and its
        DCE/RPC layer, with the TCP stage's `extra`, as a few hundred octets (see _SetAside).
        None while security contexts hold a key provider, whose derived keys and cipher
        states stay as they are."""
        auth = getattr(self.handler, "auth", None)
        if auth is not None and (auth.key_provider is not None
                                 or any(ctx.key_provider is not None for ctx in auth)):
            return None
        aside = self._asides()
        try:
            return aside, aside.dumps(extra, self)
        except (pickle.PicklingError, TypeError, AttributeError):
            return None             # something that does not pickle: kept as it is

    def _asides(self) -> "_SetAside":
        """The store this connection is set aside in: its first entry is the dictionary that
        the others are deflated against, so connections of one kind share one."""
        return self.analysis._aside

    def _become_rpc(self) -> None:
        analysis = self.analysis
        analysis._undecided -= self.size
        analysis.promote(self.conn.index)
        self._count("rpc_flows")
        chunks, self.chunks = self.chunks, None
        gaps, self.gaps = self.gaps, []
        self._attach(chunks, gaps)
        if type(self) is _Detector:     # it only passes the bytes on from now on
            analysis.route(self.conn.index, self.handler.on_data)

    def _attach(self, chunks: list, gaps: list) -> None:
        """The DCE/RPC stage takes over, with what was held while undecided."""
        analysis = self.analysis
        if self.conn.tunnel is not None:      # its calls will name the tunnel (sensor, VNI ...)
            analysis._tunnels[self.conn.index] = self.conn.tunnel
        self.handler = DceRpcConnection(self.conn, analysis.emit, auth=analysis.auth_contexts(self.conn),
                                        held=analysis._rpc_held)
        for rec in gaps:
            analysis.emit(rec)
        for direction, data, frame, ts in chunks:
            self.handler.on_data(direction, data, frame, ts)


def _plausible_frag_len(data: bytes) -> bool:
    """A common header's frag_len and auth_len agree with each other (MS-RPCE 2.2.2.1)."""
    if len(data) < 12:
        return True
    big = not data[4] & 0x10
    frag_len = int.from_bytes(data[8:10], "big" if big else "little")
    auth_len = int.from_bytes(data[10:12], "big" if big else "little")
    return frag_len >= 16 + auth_len


# Raw deflate with a 4 KB window (2**12): room for the dictionary (one connection's pickle,
# 1-2 KB) and the pickle after it; zlib's default 32 KB window and state cost about eight
# times as long to set up as the whole compression of a connection.
_ASIDE_WINDOW = 12


class _Pickler(pickle.Pickler):
    """Refuses the analysis: what a connection shares with it is taken off before pickling
    (_SetAside.dumps), and anything else that reaches it keeps the connection as it is."""

    def __init__(self, file, analysis: "Analysis"):
        super().__init__(file, pickle.HIGHEST_PROTOCOL)
        self.analysis = analysis

    def reducer_override(self, obj):
        # Asked for instances of classes only, not for ints, strings, tuples, lists, dicts.
        if obj is self.analysis:
            raise pickle.PicklingError("a connection's state reaches the analysis")
        return NotImplemented


class _SetAside:
    """Idle connections' state in a compact form: the detector, its DCE/RPC layer and
    security contexts pickled without what they share with the analysis (the analysis, its
    emit, the held-octets cell: put back when woken), then deflated with the first
    connection set aside as the dictionary. An idle sealed connection's 5 KB of objects
    (two TCP halves and their record, the DCE/RPC layer's direction buffers, presentation
    contexts, counters and auth context) become about 100 octets: names and class names
    repeat from connection to connection, what differs is a few numbers and a principal."""

    __slots__ = ("analysis", "zdict")

    def __init__(self, analysis: "Analysis"):
        self.analysis = analysis
        self.zdict: bytes | None = None

    def dumps(self, extra, detector: "_Detector") -> bytes:
        rpc = detector.handler if type(detector.handler) is DceRpcConnection else None
        detector.analysis = None
        if rpc is not None:
            rpc.emit = rpc._held = None
        try:
            out = io.BytesIO()
            _Pickler(out, self.analysis).dump((extra, detector))
        finally:
            self._attach(detector, rpc)
        raw = out.getvalue()
        if self.zdict is None:
            self.zdict = raw
        pack = zlib.compressobj(wbits=-_ASIDE_WINDOW, memLevel=5, zdict=self.zdict)
        return pack.compress(raw) + pack.flush()

    def _attach(self, detector: "_Detector", rpc: DceRpcConnection | None) -> None:
        analysis = detector.analysis = self.analysis
        if rpc is not None:
            rpc.emit, rpc._held = analysis.emit, analysis._rpc_held

    def __call__(self, state: bytes):
        """(handler, extra) as set_aside was given them."""
        unpack = zlib.decompressobj(wbits=-_ASIDE_WINDOW, zdict=self.zdict)
        extra, detector = pickle.loads(unpack.decompress(state) + unpack.flush())
        self._attach(detector, detector.handler if type(detector.handler) is DceRpcConnection else None)
        return detector, extra


class Analysis:
    """Runs a capture through the pipeline; iterate `run()` for the records.

    want_pdus: also yield every Pdu record (the tshark cross-check uses them).
    objects: decode the MS-WMIO objects inside calls (off for outputs that never show them).
    params: decode the WMI methods' parameters at all (off for the calls table, which prints
    none: calls are still named, paired and correlated from what the DCOM layer reads, but a
    stub malformed only inside its WMI parameters is not seen as malformed).
    credentials: the analyst's secrets (dissectors.credentials.Credentials): sealed
    stubs they open are decrypted and decoded like clear ones.
    """

    def __init__(self, *, want_pdus: bool = False, registry: IpidRegistry | None = None, credentials=None,
                 objects: bool = True, params: bool = True):
        self.stats = Stats()
        self.credentials = credentials
        self.want_pdus = want_pdus
        self.registry = registry or IpidRegistry()
        self.dcom = DcomDecoder(self.registry)
        self.operations = Operations()
        self.wmi = WmiDecoder(self.operations, objects=objects) if params else None
        self._out: deque = deque()
        self._call_pdus: dict[tuple[int, int], int] = {}
        self._flood: dict[tuple[int, str], int] = {}
        self._undecided = 0             # octets held by connections not yet known to be DCE/RPC or not
        self._rpc_held = [0]            # stub octets held by open calls, over all connections
        self._origin = None                             # CaptureSet.origin when several files
        self._tunnels: dict[int, tuple] = {}            # live connection index -> tunnel layers
        self._reassembler: TcpReassembler | None = None
        self._aside = _SetAside(self)                   # idle connections' state, compact

    def auth_contexts(self, conn) -> AuthContexts | None:
        """A connection's security contexts, able to unseal when credentials were given."""
        if not self.credentials:
            return None
        from .credentials import ConnectionKeys
        return AuthContexts(key_provider=ConnectionKeys(self.credentials, conn.index, self.emit))

    def emit(self, rec) -> None:
        stats = self.stats
        kind = type(rec)
        if kind is Pdu:
            stats.pdus += 1
            stats.pdus_by_type[rec.ptype] += 1
            if rec.ptype in _CALL_PTYPES:
                key = (rec.conn, rec.call_id)
                self._call_pdus[key] = self._call_pdus.get(key, 0) + 1
            else:
                stats.pdus_by_outcome["decoded"] += 1
            if self.want_pdus:
                self._out.append(rec)
        elif kind is Call:
            self.dcom.decode_call(rec)
            if self.wmi is not None:
                self.wmi.decode_call(rec)
            self.operations.observe(rec)
            if self._origin is not None or self._tunnels:
                self._place(rec)
            outcome = call_outcome(rec)
            for e in rec.errors:
                stats.anomalies[e.kind] += 1
            stats.calls += 1
            stats.calls_by_outcome[outcome] += 1
            # The PDUs (fragments) that made up this call share its outcome.
            stats.pdus_by_outcome[outcome] += self._call_pdus.pop((rec.conn, rec.call_id), 0)
            self._out.append(rec)
        elif kind is ErrorRecord:
            if self._origin is not None:
                self._place(rec)
            stats.anomalies[rec.kind] += 1
            if rec.conn is not None:
                key = (rec.conn, rec.kind)
                n = self._flood[key] = self._flood.get(key, 0) + 1
                if n > FLOOD_LIMIT:
                    stats.suppressed += 1
                    if len(self._flood) > FLOOD_KEYS_MAX:
                        self._flush_floods()
                    return
            stats.errors += 1
            stats.errors_by_stage[rec.stage] += 1
            self._out.append(rec)

    def _flush_floods(self) -> None:
        """One record per flood: how many of its kind on its connection were not shown."""
        floods, self._flood = self._flood, {}
        for (conn, kind), n in floods.items():
            if n > FLOOD_LIMIT:
                self.emit(ErrorRecord("analysis", f"{n - FLOOD_LIMIT} more '{kind}' records on this connection "
                                      f"were counted, not shown", conn=conn, kind="analysis.suppressed"))

    # Seams a split run (dissectors.parallel) narrows to its share of the host pairs.

    def end_of_frames(self) -> None:
        """Every frame has been read (what follows is flushed state)."""

    def stream_handler(self, conn):
        """The handler of a new TCP connection: DCE/RPC detection, then the pipeline."""
        return _Detector(conn, self)

    def promote(self, index: int) -> None:
        """Connection `index` carries DCE/RPC: the TCP stage keeps it among those that matter."""
        if self._reassembler is not None:
            self._reassembler.promote(index)

    def route(self, index: int, on_data) -> None:
        """Connection `index`'s bytes straight to `on_data` (its DCE/RPC layer's)."""
        if self._reassembler is not None:
            self._reassembler.route(index, on_data)

    def tcp_stats(self, reassembler: TcpReassembler) -> dict:
        """The TCP stage's counters, for Stats.tcp, once every connection is closed."""
        return dict(reassembler.stats)

    def tcp_error(self, rec: ErrorRecord) -> None:
        """An error record of the TCP reassembler (about one connection, or none)."""
        self.emit(rec)

    def decap_error(self, rec: ErrorRecord) -> None:
        """An error record of the decapsulation (IP fragments, tunnels): about frames."""
        self.emit(rec)

    def capture_errors(self, errors: list) -> None:
        """The capture reader's error records, reported once the frames are read."""
        for err in errors:
            self.emit(err)

    def run(self, source) -> Iterator[object]:
        """source: a capture file's path, a list of paths (folders, globs: a capture set),
        a `CaptureSet`, or any iterable of RawFrames (live_capture)."""
        stats = self.stats
        out = self._out
        reassembler = self._reassembler = TcpReassembler(self.stream_handler, errors=self.tcp_error)
        feed = reassembler.feed
        if isinstance(source, (str, bytes, os.PathLike)):
            source = open_sources([source])
        elif isinstance(source, (list, tuple)):
            source = open_sources(source)
        if getattr(source, "multi", False):      # a CaptureSet of several files (or a wrapper of one)
            self._origin = source.origin
        # IP fragments and tunnels: state the fast path never touches.
        decap = Decapsulation(self.decap_error)
        for frame, ts, linktype, data in source:
            stats.frames += 1
            seg = tcp_segment(linktype, data, decap, frame, ts)
            if seg is None:
                stats.non_tcp_frames += 1
            else:
                feed(frame, ts, seg)
            if out:
                yield from _drain(out)
        self.end_of_frames()
        decap.finish()
        reassembler.finish()
        stats.tcp = self.tcp_stats(reassembler)
        if decap.frag.stats["fragments"]:
            stats.ip_fragments = dict(decap.frag.stats)
        self._count_forgotten(stats.forgotten)
        self._flush_floods()
        self.capture_errors(getattr(source, "errors", ()))
        # PDUs whose call never completed (the DCE/RPC layer flushes open calls
        # at close, so this is a safety net that keeps the counts adding up).
        stats.pdus_by_outcome["malformed"] += sum(self._call_pdus.values())
        self._call_pdus.clear()
        yield from _drain(out)

    def _count_forgotten(self, forgotten: Counter) -> None:
        """What the bounded tables gave up over the run, by table."""
        tcp = self.stats.tcp
        forgotten["tcp_connections"] += tcp.get("evicted", 0)
        forgotten["tcp_other_connections"] += tcp.get("evicted_other", 0)
        forgotten["tcp_set_aside"] += tcp.get("dormant_forgotten", 0)
        forgotten["ipids_oxids"] += self.registry.forgotten
        for table, n in self.operations.forgotten.items():
            forgotten[f"operations_{table}"] += n

    def _place(self, rec) -> None:
        """Names the file (capture sets) and the tunnel (sensors) a record came from."""
        origin = self._origin
        if type(rec) is ErrorRecord:
            if origin is not None and rec.frame is not None and rec.file is None:
                rec.file, rec.file_frame = origin(rec.frame)
            return
        if self._tunnels:
            rec.tunnel = self._tunnels.get(rec.conn)
        if origin is not None:
            rec.origin = {
                half: [list(origin(frames[0])), list(origin(frames[1]))]
                for half, frames in (("request", rec.req_frames), ("response", rec.resp_frames)) if frames
            }

def _drain(out: deque) -> Iterator[object]:
    while out:
        yield out.popleft()


def analyse(path, **kwargs) -> tuple[list, Stats]:
    """Convenience for tests and small captures: every record in a list, and the stats."""
    analysis = Analysis(**kwargs)
    records = list(analysis.run(path))
    return records, analysis.stats
