"""Connection-oriented DCE/RPC: PDUs cut out of a TCP byte stream, calls paired.

C706 chapter 12 (connection-oriented PDUs) with the MS-RPCE 2.2.2 extensions:
bind-time feature negotiation (2.2.2.14, 3.3.1.5.3), security context
multiplexing (3.3.1.5.4), the sec_trailer (2.2.2.11).

One `DceRpcConnection` per TCP connection receives in-order bytes per direction
(the TCP stage's StreamHandler protocol) and emits, in stream order: every `Pdu`,
every `Call` (a request paired with its response or fault, fragments reassembled)
and `ErrorRecord`s for whatever could not be decoded. A bad header or a TCP gap
makes it hunt for the next plausible header; memory is bounded (one PDU of at most
65535 octets per direction, `max_call_bytes` per reassembled stub, `max_open_calls`,
and `max_held_bytes` of stubs held by open calls in all, shared by the connections
that are given the same `held` cell: an Analysis gives one to all of its connections).
"""

from __future__ import annotations

import struct
from typing import Callable

from .auth import AuthContexts
from ..spec.interfaces import TRANSFER_SYNTAXES
from .ndr import GUID_NULL, guid_text
from .records import AuthVerifier, Call, ErrorRecord, Pdu, PresentationContext

from ..formats.errors import DecodeError

# C706 12.6.4 PTYPE values (MS-RPCE 2.2.2.1 names 16 rpc_auth_3)
PTYPE_NAMES: dict[int, str] = {
    0: "request", 1: "ping", 2: "response", 3: "fault", 4: "working", 5: "nocall",
    6: "reject", 7: "ack", 8: "cl_cancel", 9: "fack", 10: "cancel_ack", 11: "bind",
    12: "bind_ack", 13: "bind_nak", 14: "alter_context", 15: "alter_context_resp",
    16: "auth3", 17: "shutdown", 18: "co_cancel", 19: "orphaned",
}
REQUEST, RESPONSE, FAULT = 0, 2, 3
BIND, BIND_ACK, BIND_NAK, ALTER_CONTEXT, ALTER_CONTEXT_RESP = 11, 12, 13, 14, 15
AUTH3, SHUTDOWN, CO_CANCEL, ORPHANED = 16, 17, 18, 19

# the connection-oriented PTYPEs and the smallest frag_length each can have
_MIN_LEN = {
    REQUEST: 24, RESPONSE: 24, FAULT: 32, BIND: 28, BIND_ACK: 26, BIND_NAK: 18,
    ALTER_CONTEXT: 28, ALTER_CONTEXT_RESP: 26, AUTH3: 16, SHUTDOWN: 16,
    CO_CANCEL: 16, ORPHANED: 16,
}
# who sends each of them (C706 12.6.4): the TCP stage tells client from server by them too
CLIENT_PTYPES = frozenset((REQUEST, BIND, ALTER_CONTEXT, AUTH3, CO_CANCEL, ORPHANED))
SERVER_PTYPES = frozenset((RESPONSE, FAULT, BIND_ACK, BIND_NAK, ALTER_CONTEXT_RESP, SHUTDOWN))

# C706 12.6.3.1 pfc_flags
PFC_FIRST_FRAG = 0x01
PFC_LAST_FRAG = 0x02
PFC_PENDING_CANCEL = 0x04
PFC_SUPPORT_HEADER_SIGN = 0x04  # MS-RPCE 2.2.2.3: the same bit in bind / alter_context
PFC_CONC_MPX = 0x10
PFC_DID_NOT_EXECUTE = 0x20
PFC_MAYBE = 0x40
PFC_OBJECT_UUID = 0x80

# C706 12.6.3.1 p_cont_def_result_t, MS-RPCE 2.2.2.4 (negotiate_ack)
RESULT_NAMES = {0: "acceptance", 1: "user_rejection", 2: "provider_rejection", 3: "negotiate_ack"}
# C706 12.6.3.1 p_provider_reason_t
PROVIDER_REASON_NAMES = {
    0: "reason_not_specified", 1: "abstract_syntax_not_supported",
    2: "proposed_transfer_syntaxes_not_supported", 3: "local_limit_exceeded",
}
# C706 12.6.4.5 / MS-RPCE 2.2.2.5 bind_nak reject reasons
BIND_NAK_REASON_NAMES = {
    0: "reason_not_specified", 1: "temporary_congestion", 2: "local_limit_exceeded",
    3: "called_paddr_unknown", 4: "protocol_version_not_supported",
    5: "default_context_not_supported", 6: "user_data_not_readable", 7: "no_psap_available",
    8: "authentication_type_not_recognized", 9: "invalid_checksum",
}
# the transfer syntaxes, from the interface table
_SYNTAX = {t["name"]: t for t in TRANSFER_SYNTAXES}
NDR_SYNTAX = _SYNTAX["NDR"]["uuid"]
NDR64_SYNTAX = _SYNTAX["NDR64"]["uuid"]
BIND_TIME_FEATURE_PREFIX = _SYNTAX["Bind time feature negotiation"]["uuid_prefix"]   # MS-RPCE 3.3.1.5.3

MAX_FRAG_LEN = 0xFFFF


class _Layout:
    """The PDU structures in one byte order (the drep's integer representation)."""

    def __init__(self, e: str):
        self.uuids: dict[bytes, str] = {}                    # raw octets -> text; IPIDs and syntaxes repeat
        self.header = struct.Struct(e + "BBBBB3xHHI")       # C706 12.6.3.1 common header (drep's first octet)
        self.request = struct.Struct(e + "IHH")              # alloc_hint, p_cont_id, opnum
        self.response = struct.Struct(e + "IHB")             # alloc_hint, p_cont_id, cancel_count
        self.fault = struct.Struct(e + "IHBxI")              # ... + status
        self.bind = struct.Struct(e + "HHIB")                # max_xmit, max_recv, assoc_group, n_context_elem
        self.cont_elem = struct.Struct(e + "HB")             # p_cont_id, n_transfer_syn
        self.version = struct.Struct(e + "HH")               # if_version major, minor
        self.bind_ack = struct.Struct(e + "HHIH")            # ..., sec_addr length
        self.result = struct.Struct(e + "HH")                # result, reason
        self.u16 = struct.Struct(e + "H")
        self.sec_trailer = struct.Struct(e + "BBBBI")        # MS-RPCE 2.2.2.11


_LE = _Layout("<")
_BE = _Layout(">")


def _uuid(buf, off: int, lay: _Layout) -> str:
    """A UUID (C706 appendix A) as lower-case canonical text, its first three fields in drep order."""
    key = bytes(buf[off:off + 16])
    cache = lay.uuids
    text = cache.get(key)
    if text is None:
        text = guid_text(key, 0, lay is _LE)
        if len(cache) >= 8192:
            cache.clear()
        cache[key] = text
    return text


def bind_time_features(syntax: str | None) -> int | None:
    """The BindTimeFeatureNegotiationBitmask (MS-RPCE 2.2.2.14) in a transfer syntax UUID, else None."""
    if syntax and syntax.startswith(BIND_TIME_FEATURE_PREFIX):
        return int(syntax[19:21], 16)
    return None


# rpc_vers, minor, PTYPE, flags, the four drep octets, frag_length, auth_length (as if little-endian)
_HEAD = struct.Struct("<8BHH")


def _header_ok(buf, off: int, strict: bool, limit: int = MAX_FRAG_LEN) -> int:
    """frag_length of a plausible common header at off (16 octets available), else 0.

    limit: the largest fragment the association negotiated (C706 12.6.3.1 max_xmit_frag /
    max_recv_frag); request, response and fault PDUs above it are refused.
    """
    vers, minor, ptype, _, d0, d1, d2, d3, frag_len, auth_len = _HEAD.unpack_from(buf, off)
    if vers != 5 or minor > 1:
        return 0
    minimum = _MIN_LEN.get(ptype)
    if minimum is None or d0 & 0xEE:
        return 0
    if strict and (d1 > 3 or d2 or d3):
        return 0
    if not d0 & 0x10:                           # big-endian integers
        frag_len = (frag_len & 0xFF) << 8 | frag_len >> 8
        auth_len = (auth_len & 0xFF) << 8 | auth_len >> 8
    if frag_len < minimum or (auth_len and auth_len + 8 > frag_len - 16):
        return 0
    if frag_len > limit and ptype <= FAULT:
        return 0
    return frag_len


def _header_problem(buf, off: int, limit: int = MAX_FRAG_LEN) -> tuple[str, str]:
    """Why the common header at off was refused: (anomaly kind, reason) for the error record."""
    if buf[off] != 5 or buf[off + 1] > 1:
        return "dcerpc.bad_version", f"rpc_vers {buf[off]}.{buf[off + 1]}, expected 5.0 or 5.1"
    ptype = buf[off + 2]
    if ptype not in _MIN_LEN:
        return "dcerpc.bad_ptype", f"PTYPE {ptype} is not a connection-oriented PDU type"
    if buf[off + 4] & 0xEE:
        return ("dcerpc.bad_drep",
                f"packed_drep 0x{bytes(buf[off + 4:off + 8]).hex()} names no known integer/character representation")
    lay = _LE if buf[off + 4] & 0x10 else _BE
    _, _, _, _, _, frag_len, auth_len, _ = lay.header.unpack_from(buf, off)
    if frag_len > limit and ptype <= FAULT and frag_len >= _MIN_LEN[ptype]:
        return "dcerpc.frag_len_exceeds_max", f"frag_length {frag_len} exceeds the {limit} octets negotiated at bind time"
    return ("dcerpc.frag_len_short", f"frag_length {frag_len} / auth_length {auth_len} impossible for a "
            f"{PTYPE_NAMES[ptype]} PDU (at least {_MIN_LEN[ptype]} octets)")


def _octets(buf, start: int, end: int) -> bytes:
    """buf[start:end] as bytes, copied once: a PDU that came in several segments is cut out
    of the direction's bytearray, whose slice would be a bytearray copied again by bytes()."""
    if type(buf) is bytes:
        return buf[start:end]
    with memoryview(buf) as view:
        return bytes(view[start:end])


def _decode(buf, off: int, conn: int, direction: int, first_frame: int, frame: int,
            ts: float) -> tuple[Pdu, tuple[int, int] | None]:
    """Decode the complete PDU at buf[off:off+frag_len] -> (Pdu, stub span or None).

    Offsets in DecodeErrors are relative to the PDU's first octet.
    """
    lay = _LE if buf[off + 4] & 0x10 else _BE
    try:
        _v, _m, ptype, flags, drep, frag_len, auth_len, call_id = lay.header.unpack_from(buf, off)
        end = off + frag_len
        auth = None
        body_end = end
        if auth_len:
            tr = end - auth_len - 8
            if tr < off + 16:
                raise DecodeError("sec_trailer", tr - off, f"auth_length {auth_len} leaves no room for the sec_trailer")
            auth_type, auth_level, pad, _res, actx = lay.sec_trailer.unpack_from(buf, tr)
            auth = AuthVerifier(auth_type, auth_level, pad, actx, bytes(buf[tr + 8:end]))
            body_end = tr - pad
        if ptype == REQUEST:
            # the hot path: one constructor call, no attribute stores
            alloc_hint, ctx_id, opnum = lay.request.unpack_from(buf, off + 16)
            start = off + 24
            obj = None
            if flags & PFC_OBJECT_UUID:
                if start + 16 > body_end:
                    raise DecodeError("request.object", 24, "object UUID runs into the sec_trailer")
                obj = _uuid(buf, start, lay)
                start += 16
            if body_end < start:
                raise DecodeError("sec_trailer.auth_pad_length", body_end - off,
                                  f"auth_pad_length {auth.pad_len} exceeds the stub")
            stub = _octets(buf, start, body_end)
            return (Pdu(conn, direction, first_frame, frame, ts, ptype, flags, drep, frag_len, auth_len,
                        call_id, ctx_id, opnum, obj, alloc_hint, None, stub, auth),
                    (start - off, body_end - off))
        if ptype == RESPONSE:
            alloc_hint, ctx_id, cancel = lay.response.unpack_from(buf, off + 16)
            start = off + 24
            if body_end < start:
                raise DecodeError("sec_trailer.auth_pad_length", body_end - off,
                                  f"auth_pad_length {auth.pad_len} exceeds the stub")
            stub = _octets(buf, start, body_end)
            pdu = Pdu(conn, direction, first_frame, frame, ts, ptype, flags, drep, frag_len, auth_len,
                      call_id, ctx_id, None, None, alloc_hint, None, stub, auth)
            if cancel:
                pdu.extra = {"cancel_count": cancel}
            return pdu, (start - off, body_end - off)
        pdu = Pdu(conn, direction, first_frame, frame, ts, ptype, flags, drep, frag_len, auth_len, call_id)
        pdu.auth = auth
        if auth is not None:
            body_end += auth.pad_len           # for the other PDU types the trailer bounds the body
        if ptype == FAULT:
            pdu.alloc_hint, pdu.ctx_id, cancel, pdu.status = lay.fault.unpack_from(buf, off + 16)
            if cancel:
                pdu.extra = {"cancel_count": cancel}
            stop = body_end - auth.pad_len if auth is not None else body_end
            if stop > off + 32:
                pdu.stub = bytes(buf[off + 32:stop])    # MS-RPCE 2.2.2.9: extended error information
            return pdu, None
        if ptype == BIND or ptype == ALTER_CONTEXT:
            _decode_bind(buf, off, body_end, lay, pdu)
        elif ptype == BIND_ACK or ptype == ALTER_CONTEXT_RESP:
            _decode_bind_ack(buf, off, body_end, lay, pdu)
        elif ptype == BIND_NAK:
            (pdu.status,) = lay.u16.unpack_from(buf, off + 16)     # provider_reject_reason
            versions = []
            if off + 19 <= body_end:
                n = buf[off + 18]
                if off + 19 + 2 * n > body_end:
                    raise DecodeError("bind_nak.versions", 18, f"{n} versions run past the PDU")
                versions = [f"{buf[off + 19 + 2 * i]}.{buf[off + 20 + 2 * i]}" for i in range(n)]
            pdu.extra = {"versions": versions}
        return pdu, None
    except struct.error as exc:
        raise DecodeError(PTYPE_NAMES.get(buf[off + 2], "PDU"), 16, f"truncated: {exc}") from None


def _decode_bind(buf, off: int, body_end: int, lay: _Layout, pdu: Pdu) -> None:
    """C706 12.6.4.3 bind / 12.6.4.1 alter_context: p_cont_list_t."""
    max_xmit, max_recv, pdu.assoc_group, n = lay.bind.unpack_from(buf, off + 16)
    pdu.extra = {"max_xmit_frag": max_xmit, "max_recv_frag": max_recv}
    p = off + 28
    contexts = []
    for i in range(n):
        if p + 24 > body_end:
            raise DecodeError("p_cont_elem_t", p - off, f"context {i} of {n} runs past the PDU")
        ctx_id, n_syn = lay.cont_elem.unpack_from(buf, p)
        major, minor = lay.version.unpack_from(buf, p + 20)
        if p + 24 + 20 * n_syn > body_end:
            raise DecodeError("p_cont_elem_t.transfer_syntaxes", p - off,
                              f"{n_syn} transfer syntaxes run past the PDU")
        syntaxes = [_uuid(buf, p + 24 + 20 * k, lay) for k in range(n_syn)]
        contexts.append(PresentationContext(ctx_id, _uuid(buf, p + 4, lay), f"{major}.{minor}", syntaxes))
        p += 24 + 20 * n_syn
    pdu.contexts = contexts


def _decode_bind_ack(buf, off: int, body_end: int, lay: _Layout, pdu: Pdu) -> None:
    """C706 12.6.4.4 bind_ack / 12.6.4.2 alter_context_resp: port_any_t sec_addr + p_result_list_t."""
    max_xmit, max_recv, pdu.assoc_group, addr_len = lay.bind_ack.unpack_from(buf, off + 16)
    pdu.extra = {"max_xmit_frag": max_xmit, "max_recv_frag": max_recv}
    p = off + 26
    if p + addr_len > body_end:
        raise DecodeError("port_any_t", 24, f"sec_addr of {addr_len} octets runs past the PDU")
    pdu.sec_addr = bytes(buf[p:p + addr_len]).split(b"\x00", 1)[0].decode("latin-1") if addr_len else None
    p += addr_len
    p += (-(p - off)) & 3                      # p_result_list is 4-octet aligned in the PDU
    if p + 4 > body_end:
        raise DecodeError("p_result_list_t", p - off, "result list runs past the PDU")
    n = buf[p]
    p += 4
    if p + 24 * n > body_end:
        raise DecodeError("p_result_t", p - off, f"{n} results run past the PDU")
    out = []
    for i in range(n):
        result, reason = lay.result.unpack_from(buf, p)
        syntax = _uuid(buf, p + 4, lay)
        out.append(PresentationContext(-1, "", "", [], result,
                                       reason if result else None,
                                       syntax if syntax != GUID_NULL else None))
        p += 24
    pdu.contexts = out


def parse_pdu(buf: bytes | memoryview, offset: int = 0) -> Pdu:
    """Decode the single PDU at buf[offset:] (for tests and tools). Raises DecodeError.

    conn is -1, frames 0; direction follows from the PTYPE (0 for what a client sends).
    bind_ack results carry ctx_id -1 and no abstract syntax: pairing with the bind
    is the connection's business.
    """
    try:
        if len(buf) - offset < 16:
            raise DecodeError("common header", offset, f"{len(buf) - offset} octets, a PDU has 16 at least")
        frag_len = _header_ok(buf, offset, False)
        if not frag_len:
            raise DecodeError("common header", offset, _header_problem(buf, offset)[1])
        if offset + frag_len > len(buf):
            raise DecodeError("common header", offset,
                              f"frag_length {frag_len} but only {len(buf) - offset} octets")
        ptype = buf[offset + 2]
        pdu, _ = _decode(buf, offset, -1, 0 if ptype in CLIENT_PTYPES else 1, 0, 0, 0.0)
        return pdu
    except DecodeError:
        raise
    except (IndexError, ValueError, struct.error) as exc:
        raise DecodeError("PDU", offset, f"{type(exc).__name__}: {exc}") from None


# --------------------------------------------------------------------------
# the per-connection state machine


class _Direction:
    __slots__ = ("buf", "base", "segs", "hunting", "hunt_start", "need")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.base = 0            # stream offset of buf[0]
        self.segs: list = []     # [end stream offset, frame, ts] of the segments still in buf
        self.hunting = False
        self.hunt_start = 0      # stream offset where the hunt for a header began
        # The frag_length of the PDU whose header begins buf, as the last cut found it
        # too short: segments that do not complete it are only appended (a PDU of a big
        # stub comes in many). 0 when unknown; reset when the negotiated limit changes.
        self.need = 0


class _Half:
    """One side (request or response) of a call being reassembled."""
    __slots__ = ("data", "size", "sealed", "dropped", "done", "first_frame", "last_frame", "ts", "frags", "gap",
                 "decrypted", "verified")

    def __init__(self, first_frame: int) -> None:
        # The stub so far: its one fragment's octets, or a list of them when there are more
        # (joined once, when the call is finished: a bytearray grown fragment by fragment
        # copied the whole stub again each time it was reallocated).
        self.data: list | bytes | None = None
        self.size = 0
        self.sealed = False
        self.dropped = False
        self.done = False
        self.first_frame = first_frame
        self.last_frame = first_frame
        self.ts = 0.0
        self.frags = 0
        self.gap = False
        self.decrypted = False      # some fragment was sealed and decrypted with the analyst's keys
        self.verified: bool | None = None   # level 5: every fragment's signature verified / one did not


class _CallState:
    __slots__ = ("call", "req", "resp")

    def __init__(self, call: Call) -> None:
        self.call = call
        self.req: _Half | None = None
        self.resp: _Half | None = None


class DceRpcConnection:
    """DCE/RPC over one TCP connection (a StreamHandler of the TCP stage).

    conn: the TCP stage's connection (.index, .client, .server); emit: receives the
    Pdu, Call and ErrorRecord records in stream order; auth: the connection's
    security contexts (a fresh AuthContexts when None; pass one built with a
    key_provider (dissectors.credentials.ConnectionKeys) to have sealed stubs decrypted
    and the signatures of packet-integrity PDUs verified: calls then say
    req_decrypted / resp_decrypted and req_verified / resp_verified).

    A Call is emitted when its response's last fragment or a fault arrives; a
    response whose request was not captured is emitted at once (its request can no
    longer come); unanswered requests at on_close. req_ts / resp_ts are the times of
    the frames completing each side. ErrorRecords about the byte stream carry the
    octet offset in that direction's stream; those about a PDU body, the offset in the PDU.
    """

    def __init__(self, conn, emit: Callable[[object], None], *, auth: AuthContexts | None = None,
                 max_call_bytes: int = 16 << 20, max_open_calls: int = 1024,
                 max_held_bytes: int = 128 << 20, held: list | None = None):
        self.conn = conn
        self.index = getattr(conn, "index", -1)
        self.client = tuple(getattr(conn, "client", ("", 0)))
        self.server = tuple(getattr(conn, "server", ("", 0)))
        self.emit = emit
        self.auth = auth if auth is not None else AuthContexts()
        self.max_call_bytes = max_call_bytes
        self.max_open_calls = max_open_calls
        self.max_held_bytes = max_held_bytes
        self._held = held if held is not None else [0]        # stub octets held by open calls
        self.contexts: dict[int, PresentationContext] = {}   # p_cont_id -> context with the server's result
        self.assoc_group: int | None = None
        self.bind_time_features: int | None = None           # negotiated bitmask (MS-RPCE 2.2.2.14)
        self.frag_limit = MAX_FRAG_LEN                        # largest fragment negotiated at bind time
        self._bind_frags = 0
        self._pending_binds: dict[int, list[PresentationContext]] = {}
        self._calls: dict[int, _CallState] = {}
        self._dirs = (_Direction(), _Direction())
        self.closed = False
        self.stats = {"pdus": 0, "bytes": 0, "fragments": 0, "calls": 0, "resyncs": 0,
                      "bytes_skipped": 0, "gaps": 0, "malformed": 0, "sealed_pdus": 0,
                      "dropped_calls": 0}

    # ---- StreamHandler

    def on_data(self, direction: int, data: bytes, frame: int, ts: float) -> None:
        if not data or self.closed:
            return
        d = self._dirs[direction]
        if not isinstance(data, (bytes, bytearray)):
            data = bytes(data)
        self.stats["bytes"] += len(data)
        if d.buf:
            d.buf += data
            src = d.buf
            if len(src) < d.need:
                d.segs.append((d.base + len(src), frame, ts))
                return
        else:
            src = data
        d.segs.append((d.base + len(src), frame, ts))
        try:
            pos = self._cut(d, direction, src)
        except Exception as exc:  # never let a bug stop the run: report, drop the buffer, hunt
            self._error(f"internal error while cutting PDUs: {type(exc).__name__}: {exc}", frame,
                        "dcerpc", d.base, kind="dcerpc.internal_error")
            pos = len(src)
            d.hunting = True
            d.hunt_start = d.base + pos
        if src is data and pos == len(data):     # the segment cut whole: nothing stays
            d.base += pos
            d.segs.clear()
            return
        if pos:
            d.base += pos
            if src is d.buf:
                del d.buf[:pos]
            segs = d.segs
            k = 0
            while k < len(segs) and segs[k][0] <= d.base:
                k += 1
            if k:
                del segs[:k]
        if src is not d.buf and pos < len(src):
            d.buf = bytearray(src[pos:])

    def on_gap(self, direction: int, missing: int | None, frame: int) -> None:
        if self.closed:
            return
        d = self._dirs[direction]
        self.stats["gaps"] += 1
        pending = len(d.buf)
        if pending and not d.hunting:
            self._error(f"TCP gap ({missing if missing is not None else 'unknown'} octets lost) inside a PDU: "
                        f"{pending} octets of it dropped; hunting for the next header", frame, "common header",
                        d.base, kind="dcerpc.gap_in_pdu")
        self.stats["bytes_skipped"] += pending
        d.base += pending + (missing or 0)
        d.buf = bytearray()
        d.segs = []
        d.hunting = True
        d.hunt_start = d.base
        # a fragmented stub under way in this direction may have lost a fragment
        for st in self._calls.values():
            half = st.req if direction == 0 else st.resp
            if half is not None and not half.done:
                half.gap = True

    def on_close(self, frame: int) -> None:
        if self.closed:
            return
        for direction, d in enumerate(self._dirs):
            if d.buf:
                if d.hunting:
                    self.stats["bytes_skipped"] += len(d.buf)
                    self._error(f"{d.base + len(d.buf) - d.hunt_start} octets without a plausible header "
                                f"up to the end of the stream", frame, "common header", d.hunt_start,
                                kind="dcerpc.no_header")
                else:
                    self._error(f"stream ends inside a PDU: {len(d.buf)} octets of an incomplete PDU "
                                f"({'client' if direction == 0 else 'server'} side)", frame, "common header",
                                d.base, kind="dcerpc.stream_ends_in_pdu")
                d.buf = bytearray()
            elif d.hunting and d.base > d.hunt_start:
                self._error(f"{d.base - d.hunt_start} octets without a plausible header up to the end of "
                            f"the stream", frame, "common header", d.hunt_start, kind="dcerpc.no_header")
        for cid in list(self._calls):
            self._finish(self._calls.pop(cid), None)
        self.closed = True

    def on_idle(self, frame: int) -> bool:
        """The connection has been idle for the TCP stage's idle timeout: a PDU or a
        fragmented stub still incomplete is given up (the PDU's octets dropped, then
        hunting; the call emitted as incomplete). The bind and security contexts, their
        keys, and the calls that await their response stay: True when there are any."""
        if self.closed:
            return False
        for d in self._dirs:
            if d.buf and not d.hunting:
                self._error(f"connection idle inside a PDU: its {len(d.buf)} octets dropped; hunting for the "
                            f"next header", frame, "common header", d.base, kind="dcerpc.idle_released")
                self.stats["bytes_skipped"] += len(d.buf)
                d.base += len(d.buf)
                d.buf = bytearray()
                d.segs = []
                d.hunting = True
                d.hunt_start = d.base
        for cid in [cid for cid, st in self._calls.items()
                    if (st.req is not None and not st.req.done) or (st.resp is not None and not st.resp.done)]:
            st = self._calls.pop(cid)
            st.call.errors.append(ErrorRecord(
                "dcerpc", f"connection idle before call_id {cid}'s last fragment: the call is given up",
                frame, self.index, "call", kind="dcerpc.idle_released"))
            self._finish(st, None)
        self.auth.release_tokens()
        # Emptied dicts keep their size: an idle connection may be kept for hours.
        if not self._calls:
            self._calls = {}
        if not self._pending_binds:
            self._pending_binds = {}
        return bool(self.contexts or self._pending_binds or self._calls or len(self.auth)
                    or self.assoc_group is not None)

    # ---- cutting

    def _cut(self, d: _Direction, direction: int, src) -> int:
        """Cut every complete PDU out of src; return how many leading octets are consumed."""
        pos = 0
        n = len(src)
        d.need = 0
        while n - pos >= 16:
            if d.hunting:
                found = self._hunt(src, pos, n)
                if found < 0:                      # keep the last 15 octets: a header may start there
                    keep = max(pos, n - 15)
                    self.stats["bytes_skipped"] += keep - pos
                    return keep
                if found > pos:
                    self.stats["bytes_skipped"] += found - pos
                    pos = found
                if self._hunt_wait:
                    return pos
                d.hunting = False
                skipped = d.base + pos - d.hunt_start
                if skipped:
                    self._error(f"resynchronised after skipping {skipped} octets", self._frame_at(d, pos),
                                "common header", d.base + pos, kind="dcerpc.resynchronised")
                    self.stats["resyncs"] += 1
                frag_len = _header_ok(src, pos, True, self.frag_limit)
            else:
                frag_len = _header_ok(src, pos, False, self.frag_limit)
                if not frag_len:
                    kind, problem = _header_problem(src, pos, self.frag_limit)
                    self._error(problem + "; hunting for the next header",
                                self._frame_at(d, pos), "common header", d.base + pos, kind=kind)
                    d.hunting = True
                    d.hunt_start = d.base + pos
                    continue                       # the strict check refuses this offset too
            if n - pos < frag_len:
                d.need = frag_len
                break
            self._pdu(d, direction, src, pos, frag_len)
            pos += frag_len
        return pos

    _hunt_wait = False

    def _hunt(self, src, pos: int, n: int) -> int:
        """Offset of the next plausible header in src[pos:n], or -1; sets _hunt_wait when more data must come.

        A candidate must pass the strict header check and be followed by another
        plausible header (or end exactly where the data ends).
        """
        self._hunt_wait = False
        i = pos
        while True:
            i = src.find(b"\x05", i, n)
            if i < 0:
                return -1
            if n - i < 16:
                self._hunt_wait = True            # a header may start here: wait for its 16 octets
                return i
            frag_len = _header_ok(src, i, True, self.frag_limit)
            if frag_len:
                nxt = i + frag_len
                if nxt == n:
                    return i
                if nxt + 16 <= n:
                    if _header_ok(src, nxt, True, self.frag_limit):
                        return i
                else:
                    self._hunt_wait = True        # the confirmation is not there yet
                    return i
            i += 1

    def _frame_at(self, d: _Direction, pos: int) -> int:
        """Frame carrying buffer offset pos."""
        at = d.base + pos
        for end, frame, _ts in d.segs:
            if end > at:
                return frame
        return d.segs[-1][1] if d.segs else 0

    def _pdu(self, d: _Direction, direction: int, src, pos: int, frag_len: int) -> None:
        segs = d.segs
        if len(segs) == 1:              # the buffer holds one segment's octets: the PDU is in it
            _, first_frame, ts = segs[0]
            frame = first_frame
        else:
            start = d.base + pos
            stop = start + frag_len
            first_frame = frame = None
            ts = 0.0
            for end, f, t in segs:
                if first_frame is None and end > start:
                    first_frame = f
                if end >= stop:
                    frame, ts = f, t
                    break
            if first_frame is None or frame is None:       # cannot happen: the bytes are in the buffer
                first_frame = frame = segs[-1][1]
                ts = segs[-1][2]
        self.stats["pdus"] += 1
        try:
            pdu, span = _decode(src, pos, self.index, direction, first_frame, frame, ts)
        except DecodeError as exc:
            self.stats["malformed"] += 1
            self._error(f"malformed {PTYPE_NAMES.get(src[pos + 2], 'PDU')}: {exc.reason}", frame,
                        exc.structure, exc.offset, kind="dcerpc.pdu_malformed")
            lay = _LE if src[pos + 4] & 0x10 else _BE
            _v, _m, ptype, flags, drep, fl, al, cid = lay.header.unpack_from(src, pos)
            pdu = Pdu(self.index, direction, first_frame, frame, ts, ptype, flags, drep, fl, al, cid)
            self.emit(pdu)
            st = self._calls.get(cid) if ptype in (REQUEST, RESPONSE) else None
            if st is not None:
                half = st.req if ptype == REQUEST else st.resp
                if half is not None and not half.done:
                    half.gap = True
            return
        ptype = pdu.ptype
        if ptype == REQUEST or ptype == RESPONSE:
            auth = pdu.auth
            if auth is not None:
                actx = self.auth.get(auth.ctx_id)
                if actx is not None:
                    actx.note_verifier(auth.token)
                if auth.auth_level == 6:
                    self.stats["sealed_pdus"] += 1
                    clear = None
                    if actx is not None and actx.key_provider is not None:
                        actx.frame = pdu.frame
                        clear = actx.unseal(direction, bytes(src[pos:pos + frag_len]), span, auth)
                    if clear is None:
                        self.emit(pdu)
                        self._fragment(pdu, True)
                        return
                    pdu.stub = clear
                    self.emit(pdu)
                    self._fragment(pdu, False, True)
                    return
                if auth.auth_level == 5 and actx is not None and actx.key_provider is not None:
                    # packet integrity: the stub is clear, its signature is checked (MS-RPCE 3.3.1.5.2.2)
                    actx.frame = pdu.frame
                    verified = actx.verify(direction, bytes(src[pos:pos + frag_len]), span, auth)
                    self.emit(pdu)
                    self._fragment(pdu, False, verified=verified)
                    return
            self.emit(pdu)
            self._fragment(pdu, False)
            return
        if ptype == FAULT:
            self.emit(pdu)
            self._fault(pdu)
            return
        if ptype == BIND or ptype == ALTER_CONTEXT:
            if ptype == BIND:
                self._pending_binds.clear()
                self._bind_frags = max(pdu.extra["max_xmit_frag"], pdu.extra["max_recv_frag"])
            self._pending_binds[pdu.call_id] = pdu.contexts
            if len(self._pending_binds) > 64:
                del self._pending_binds[next(iter(self._pending_binds))]
        elif ptype == BIND_ACK or ptype == ALTER_CONTEXT_RESP:
            self._bind_ack(pdu)
        elif ptype == BIND_NAK:
            self._pending_binds.pop(pdu.call_id, None)
        elif ptype == ORPHANED or ptype == CO_CANCEL:
            st = self._calls.get(pdu.call_id)
            if st is not None:
                st.call.errors.append(ErrorRecord(
                    "dcerpc", f"client sent {PTYPE_NAMES[ptype]} for this call", pdu.frame, self.index,
                    kind="dcerpc.unexpected_ptype"))
        if pdu.auth is not None and ptype in (BIND, BIND_ACK, ALTER_CONTEXT, ALTER_CONTEXT_RESP, AUTH3, BIND_NAK):
            tok = self.auth.on_handshake(pdu.frame, direction, ptype, pdu.auth)
            if tok is not None and tok.error is not None:
                self.emit(ErrorRecord("auth", f"{PTYPE_NAMES[ptype]} auth_value (auth_type {pdu.auth.auth_type}) "
                                      f"not understood: {tok.error}", pdu.frame, self.index, "auth_value",
                                      kind="auth.token_malformed"))
        self.emit(pdu)

    def _bind_ack(self, pdu: Pdu) -> None:
        proposed = self._pending_binds.pop(pdu.call_id, None)
        if pdu.ptype == BIND_ACK:
            self.contexts.clear()
            self.assoc_group = pdu.assoc_group
            if self._bind_frags:
                # MS-RPCE 3.3.1.5.2 / C706 12.6.3.1: no fragment may exceed what both sides agreed;
                # the larger of the four values keeps the check lenient with sloppy peers
                self.frag_limit = max(self._bind_frags, pdu.extra["max_xmit_frag"],
                                      pdu.extra["max_recv_frag"], 1024)
                for d in self._dirs:      # a PDU under way is checked against the new limit
                    d.need = 0
        merged = []
        for i, res in enumerate(pdu.contexts):
            if proposed is not None and i < len(proposed):
                p = proposed[i]
                pc = PresentationContext(p.ctx_id, p.abstract_uuid, p.abstract_version, p.transfer_syntaxes,
                                         res.result, res.reason, res.accepted_syntax)
                if res.result == 3 and p.transfer_syntaxes:
                    self.bind_time_features = res.reason
                elif res.result == 0:
                    self.contexts[p.ctx_id] = pc
                elif p.ctx_id not in self.contexts:
                    self.contexts[p.ctx_id] = pc
                merged.append(pc)
            else:
                merged.append(res)
        pdu.contexts = merged

    # ---- calls

    def _new_call(self, pdu: Pdu) -> _CallState:
        ctx = self.contexts.get(pdu.ctx_id) if pdu.ctx_id is not None else None
        call = Call(self.index, pdu.call_id, self.client, self.server, pdu.ctx_id,
                    ctx.abstract_uuid if ctx is not None else None)
        call.opnum = pdu.opnum
        call.ipid = pdu.object_uuid
        call.drep = pdu.drep
        auth = pdu.auth
        if auth is not None:
            call.auth_type = auth.auth_type
            call.auth_level = auth.auth_level
            actx = self.auth.get(auth.ctx_id)
            if actx is not None:
                call.auth_principal = actx.principal
                call.auth_client = actx.client_principal
        else:
            # at level connect (MS-RPCE 3.3.1.5.2: no verifier on requests) the association's
            # security context still authenticates the call
            actx = self.auth.latest
            if actx is not None and actx.auth_level == 2:
                call.auth_type, call.auth_level, call.auth_principal = actx.auth_type, 2, actx.principal
                call.auth_client = actx.client_principal
        st = _CallState(call)
        self._calls[pdu.call_id] = st
        if len(self._calls) > self.max_open_calls:
            oldest = next(iter(self._calls))
            old = self._calls.pop(oldest)
            old.call.errors.append(self._error(
                f"more than {self.max_open_calls} calls open: call_id {oldest} given up unanswered",
                pdu.frame, "call", None, kind="dcerpc.too_many_open_calls"))
            self._finish(old, None)
        return st

    def _fragment(self, pdu: Pdu, sealed: bool, decrypted: bool = False, verified: bool | None = None) -> None:
        flags = pdu.flags
        is_req = pdu.ptype == REQUEST
        st = self._calls.get(pdu.call_id)
        half = None
        if st is not None:
            half = st.req if is_req else st.resp
            if is_req and st.resp is not None:
                # a new request on a call_id whose response already began: the old call is over
                self._calls.pop(pdu.call_id)
                self._finish(st, None)
                st = half = None
            elif half is not None and (flags & PFC_FIRST_FRAG or half.done):
                if not half.done:
                    st.call.errors.append(self._error(
                        f"{'request' if is_req else 'response'} restarted (PFC_FIRST_FRAG) before its last fragment",
                        pdu.frame, "call", None, kind="dcerpc.fragment_restarted"))
                if is_req:
                    self._calls.pop(pdu.call_id)
                    self._finish(st, None)
                    st = None
                else:
                    self._release(st.resp)
                    st.resp = None
                half = None
            elif is_req and st.call.opnum is None:
                st.call.opnum = pdu.opnum
        if st is None:
            st = self._new_call(pdu)        # its opnum is the request's
        if half is None:
            half = _Half(pdu.first_frame)
            if is_req:
                st.req = half
            else:
                st.resp = half
            if not flags & PFC_FIRST_FRAG:
                half.gap = True
                st.call.errors.append(ErrorRecord(
                    "dcerpc", f"{'request' if is_req else 'response'} fragment without PFC_FIRST_FRAG: "
                    f"earlier fragments not captured", pdu.frame, self.index, "call",
                    kind="dcerpc.first_fragment_missing"))
        if flags & 3 != 3:
            self.stats["fragments"] += 1
        half.frags += 1
        half.last_frame = pdu.frame
        half.ts = pdu.ts
        stub = pdu.stub
        n = len(stub)
        half.size += n
        if decrypted:
            half.decrypted = True
        if half.frags == 1:
            half.verified = verified
        elif half.verified is not False:      # True only while every fragment verified; one failure sticks
            half.verified = False if verified is False else verified and half.verified
        if sealed:
            half.sealed = True
        elif not half.dropped:
            held = self._held
            if half.size > self.max_call_bytes or held[0] + n > self.max_held_bytes:
                what = (f"exceeds {self.max_call_bytes} octets" if half.size > self.max_call_bytes else
                        f"would take the octets held by open calls past {self.max_held_bytes}")
                self._release(half)
                half.dropped = True
                self.stats["dropped_calls"] += 1
                st.call.errors.append(self._error(
                    f"{'request' if is_req else 'response'} stub of call_id {pdu.call_id} {what}: "
                    f"its data is dropped", pdu.frame, "call", None, kind="dcerpc.stub_too_large"))
            else:
                data = half.data
                if data is None:
                    held[0] += n
                    half.data = stub
                elif n:
                    held[0] += n
                    if type(data) is list:
                        data.append(stub)
                    else:
                        half.data = [data, stub]
        if flags & PFC_LAST_FRAG:
            half.done = True
            if not is_req:
                self._calls.pop(pdu.call_id, None)
                self._finish(st, None)

    def _fault(self, pdu: Pdu) -> None:
        st = self._calls.pop(pdu.call_id, None)
        if st is None:
            st = self._new_call(pdu)
            self._calls.pop(pdu.call_id, None)
        half = _Half(pdu.first_frame)
        half.done = True
        half.last_frame = pdu.frame
        half.ts = pdu.ts
        half.data = pdu.stub
        half.size = len(pdu.stub)
        self._held[0] += half.size
        st.resp = half
        self._finish(st, pdu.status)

    def _finish(self, st: _CallState, fault: int | None) -> None:
        call = st.call
        call.fault = fault
        for half, is_req in ((st.req, True), (st.resp, False)):
            if half is None:
                continue
            frames = (half.first_frame, half.last_frame)
            stub = None
            if not half.sealed and not half.dropped:
                data = half.data
                stub = b"".join(data) if type(data) is list else bytes(data) if data is not None else b""
            self._release(half)
            if not half.done:
                call.errors.append(ErrorRecord(
                    "dcerpc", f"{'request' if is_req else 'response'} incomplete: last fragment never seen "
                    f"({half.frags} fragments, {half.size} octets)", half.last_frame, self.index, "call",
                    kind="dcerpc.last_fragment_missing"))
            if half.gap:
                call.errors.append(ErrorRecord(
                    "dcerpc", f"{'request' if is_req else 'response'} stub may miss fragments "
                    f"(TCP gap, malformed or uncaptured fragment)", half.last_frame, self.index, "call",
                    kind="dcerpc.fragments_missing"))
            if is_req:
                call.req_frames, call.req_ts, call.req_stub = frames, half.ts, stub
                call.req_stub_len, call.req_encrypted = half.size, half.sealed
                call.req_decrypted = half.decrypted and not half.sealed
                call.req_verified = half.verified
            else:
                call.resp_frames, call.resp_ts, call.resp_stub = frames, half.ts, stub
                call.resp_stub_len, call.resp_encrypted = half.size, half.sealed
                call.resp_decrypted = half.decrypted and not half.sealed
                call.resp_verified = half.verified
        self.stats["calls"] += 1
        self.emit(call)

    def _release(self, half: _Half) -> None:
        """Give back the octets a half's stub held (once)."""
        data = half.data
        if data is not None:
            self._held[0] -= sum(map(len, data)) if type(data) is list else len(data)
            half.data = None

    def _error(self, reason: str, frame: int | None, structure: str | None, offset: int | None,
               kind: str = "dcerpc.other") -> ErrorRecord:
        rec = ErrorRecord("dcerpc", reason, frame, self.index, structure, offset, kind)
        self.emit(rec)
        return rec
