"""The JSON-lines records of `wmiscope calls --format jsonl`: one versioned schema, in the library.

Each line is one record: a call ({"schema": 2, "type": "call", ...}, `call_dict`) or an
error met outside any call ({"schema": 2, "type": "error", ...}, `error_line`). The layout
is documented field by field in docs/calls.schema.json (JSON Schema, draft 2020-12); a
change that renames, removes or retypes a field raises SCHEMA_VERSION, a new optional
field does not. The TypedDicts below are the same layout for Python readers (the
forensics report, the Lua generator's tests) so that they need not guess key names.

"decoded" holds what the DCOM and WMI decoders read (dissectors/dcom.py, dissectors/wmi.py
give its layout); "operation" the WMI operation the call belongs to (dissectors/operations.py).
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from typing import Any, TypedDict

import orjson

from ..formats import wmio
from .auth import auth_level_name, auth_type_name

__all__ = ["SCHEMA_VERSION", "CallRecord", "HalfRecord", "AuthRecord", "ErrorDict", "call_dict", "error_dict",
           "error_line", "dumps", "dumps_line", "iso", "endpoint"]

SCHEMA_VERSION = 2


class ErrorDict(TypedDict, total=False):
    stage: str                    # capture | tcp | dcerpc | auth | dcom | wmi | ...
    reason: str
    frame: int
    conn: int
    structure: str
    offset: int
    kind: str                     # the anomaly's stable name (wmiscope/spec/anomalies.py), on every record
    severity: str                 # error | warning | note, the kind's in the catalog
    file: str                     # capture sets: the file the frame is in ...
    file_frame: int               # ... and its number inside that file


class _HalfRecordBase(TypedDict):
    """The request or the response of a call."""
    frames: list[int]             # the frames its PDU(s) came in
    time: str | None              # ISO 8601 UTC of the first frame
    epoch: float | None
    stub_len: int | None
    encrypted: bool               # sealed on the wire
    decrypted: bool               # and opened with the analyst's credentials
    verified: bool | None         # signed and checked with the credentials; None: not checked


class HalfRecord(_HalfRecordBase, total=False):
    origin: list                  # capture sets: [[file, frame], [file, frame]] of its first and last frame


class _AuthRecordBase(TypedDict):
    type: int
    type_name: str
    level: int
    level_name: str
    principal: str | None         # NTLM DOMAIN\\user; Kerberos: the service principal of the ticket


class AuthRecord(_AuthRecordBase, total=False):
    client: str                   # Kerberos client cname@crealm, from the ticket opened with the analyst's keytab


class _CallRecordBase(TypedDict):
    schema: int
    type: str                     # "call"
    conn: int
    call_id: int
    client: str                   # "ip:port" ("[ipv6]:port")
    server: str
    ctx_id: int | None
    interface: str | None
    interface_uuid: str | None
    interface_source: str | None  # ipid | context
    opnum: int | None
    method: str | None
    ipid: str | None
    request: HalfRecord | None
    response: HalfRecord | None
    fault: int | None
    auth: AuthRecord | None
    encrypted: bool
    decrypted: bool
    outcome: str                  # decoded | encrypted | unknown_interface | malformed
    errors: list[ErrorDict]
    operation: dict[str, Any] | None


class CallRecord(_CallRecordBase, total=False):
    decoded: dict[str, Any]       # present when a decoder read the stubs
    tunnel: list                  # the tunnels the connection came through (VXLAN, GRE, ...)
    file: str                     # capture sets: the file of the call's first frame


def iso(ts: float | None) -> str | None:
    """UTC ISO 8601 text of an epoch time; None for none, and for a time no calendar
    date can show (before year 1 or after 9999: a hostile capture's, kept as "epoch")."""
    if ts is None:
        return None
    if type(ts) is float and 0.0 <= ts < _YEAR_10000:
        # Frames come many to a second: the date and time of the second are made once
        # and the microseconds added, rounded as datetime.fromtimestamp rounds them
        # (the fraction times 10^6, half to even, a carry into the next second).
        frac, whole = math.modf(ts)
        us = round(frac * 1e6)
        second = int(whole)
        if us >= 1000000:
            us -= 1000000
            second += 1
        last = _LAST_SECOND
        if last[0] != second:
            text = _iso_slow(second)
            if text is None:
                return _iso_slow(ts)
            last[0], last[1] = second, text[:19]
        return f"{last[1]}.{us:06d}Z"
    return _iso_slow(ts)


_YEAR_10000 = 253402300800.0
_LAST_SECOND: list = [None, ""]


def _iso_slow(ts) -> str | None:
    try:
        return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
    except (ValueError, OverflowError, OSError):
        return None


def endpoint(ep) -> str:
    ip, port = ep
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def error_dict(err) -> ErrorDict:
    d: ErrorDict = {"stage": err.stage, "kind": err.kind, "severity": err.severity, "reason": err.reason}
    for k in ("frame", "conn", "structure", "offset", "file", "file_frame"):
        v = getattr(err, k)
        if v is not None:
            d[k] = v
    return d


def _half(frames, ts, stub_len, encrypted, decrypted, verified):
    if frames is None:
        return None
    return {"frames": list(frames), "time": iso(ts), "epoch": ts,
            "stub_len": stub_len, "encrypted": encrypted, "decrypted": decrypted,
            "verified": verified}   # signed (level 5) and checked with the credentials; None: not checked


def call_dict(call, outcome: str) -> CallRecord:
    """The JSON-lines record of one call (schema: docs/calls.schema.json)."""
    half = _half
    d: CallRecord = {
        "schema": SCHEMA_VERSION,
        "type": "call",
        "conn": call.conn,
        "call_id": call.call_id,
        "client": endpoint(call.client),
        "server": endpoint(call.server),
        "ctx_id": call.ctx_id,
        "interface": call.interface,
        "interface_uuid": call.interface_uuid,
        "interface_source": call.interface_source,
        "opnum": call.opnum,
        "method": call.method,
        "ipid": call.ipid,
        "request": half(call.req_frames, call.req_ts, call.req_stub_len, call.req_encrypted, call.req_decrypted,
                        call.req_verified),
        "response": half(call.resp_frames, call.resp_ts, call.resp_stub_len, call.resp_encrypted,
                         call.resp_decrypted, call.resp_verified),
        "fault": call.fault,
        "auth": None if call.auth_type is None else {
            "type": call.auth_type,
            "type_name": auth_type_name(call.auth_type),
            "level": call.auth_level,
            "level_name": auth_level_name(call.auth_level),
            "principal": call.auth_principal,
        },
        "encrypted": call.req_encrypted or call.resp_encrypted,
        "decrypted": call.req_decrypted or call.resp_decrypted,   # sealed on the wire, opened with the credentials
        "outcome": outcome,
        "errors": [error_dict(e) for e in call.errors],
        "operation": call.operation,
    }
    if call.auth_client and d["auth"] is not None:
        d["auth"]["client"] = call.auth_client
    if call.decoded:
        d["decoded"] = call.decoded
    if call.tunnel:
        d["tunnel"] = list(call.tunnel)
    if call.origin:
        # A capture set: the frame numbers above count across the set (as tshark on the
        # mergecap'd set); each half's first and last frame as [file, frame in that file].
        first = call.origin.get("request") or call.origin.get("response")
        d["file"] = first[0][0]
        for half, where in call.origin.items():
            d[half]["origin"] = where
    return d


# Dataclasses (the WMI objects) and datetimes go to _default, as with json, instead of
# orjson's own field-by-field rendering.
_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


def dumps(obj) -> str:
    """One compact JSON line. orjson writes it several times faster than the standard
    library (JSON lines of decoded objects are the costliest output); anything orjson
    refuses (an integer past 64 bits, a key it cannot take) goes through json."""
    return _dumps(obj, _ORJSON_OPTIONS, "")


def dumps_line(obj) -> str:
    """dumps(obj) and its newline, as the outputs write a record. orjson appends the
    newline itself: a JSON line of objects runs to megabytes, and adding it to the text
    afterwards copied the whole line once more."""
    return _dumps(obj, _ORJSON_LINE_OPTIONS, "\n")


_ORJSON_LINE_OPTIONS = _ORJSON_OPTIONS | orjson.OPT_APPEND_NEWLINE


def _dumps(obj, options: int, end: str) -> str:
    try:
        return orjson.dumps(obj, default=_default, option=options).decode()
    except TypeError:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=_default) + end


def _default(o):
    if isinstance(o, (bytes, bytearray, memoryview)):
        return bytes(o).hex()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    # Decoded WMI objects (classes, instances, contexts, ObjectArrays) ride in a
    # Param's "object"; JSON shows them through the formats' own to_json.
    from .wmi import object_json
    if isinstance(o, (wmio.WmiClass, wmio.WmiInstance)) or hasattr(o, "to_json"):
        return object_json(o)
    return str(o)


def error_line(err) -> dict:
    """The JSON-lines record of an error met outside any call."""
    return {"schema": SCHEMA_VERSION, "type": "error", **error_dict(err)}
