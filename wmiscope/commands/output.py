"""Shared rendering of pipeline records for the commands (JSON lines and tables)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

AUTH_TYPES = {0: "none", 9: "SPNEGO", 10: "NTLMSSP", 14: "SCHANNEL", 16: "Kerberos", 68: "Netlogon", 255: "default"}
AUTH_LEVELS = {1: "none", 2: "connect", 3: "call", 4: "packet", 5: "integrity", 6: "privacy"}


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def endpoint(ep) -> str:
    ip, port = ep
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def error_dict(err) -> dict:
    d = {"stage": err.stage, "reason": err.reason}
    for k in ("frame", "conn", "structure", "offset"):
        v = getattr(err, k)
        if v is not None:
            d[k] = v
    return d


def call_dict(call, outcome: str) -> dict:
    def half(frames, ts, stub_len, encrypted):
        if frames is None:
            return None
        return {"frames": list(frames), "time": iso(ts), "epoch": ts,
                "stub_len": stub_len, "encrypted": encrypted}

    d = {
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
        "request": half(call.req_frames, call.req_ts, call.req_stub_len, call.req_encrypted),
        "response": half(call.resp_frames, call.resp_ts, call.resp_stub_len, call.resp_encrypted),
        "fault": call.fault,
        "auth": None if call.auth_type is None else {
            "type": call.auth_type,
            "type_name": AUTH_TYPES.get(call.auth_type, str(call.auth_type)),
            "level": call.auth_level,
            "level_name": AUTH_LEVELS.get(call.auth_level, str(call.auth_level)),
            "principal": call.auth_principal,
        },
        "encrypted": call.req_encrypted or call.resp_encrypted,
        "outcome": outcome,
        "errors": [error_dict(e) for e in call.errors],
    }
    if call.decoded:
        d["decoded"] = call.decoded
    return d


def dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=_default)


def _default(o):
    if isinstance(o, (bytes, bytearray, memoryview)):
        return bytes(o).hex()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    return str(o)


def add_source_arguments(p) -> None:
    p.add_argument("capture", nargs="?", help="pcap or pcapng file (gzip-compressed is fine)")
    p.add_argument("-i", "--interface", help="capture live on this interface instead (needs capture rights)")
    p.add_argument("-f", "--filter", default="tcp", help="BPF filter for live capture (default: tcp)")
    p.add_argument("-c", "--count", type=int, help="stop a live capture after this many frames")


def open_source(args):
    """The capture file, or a live capture; exactly one must be named."""
    if bool(args.capture) == bool(args.interface):
        raise SystemExit("wmiscope: name a CAPTURE file or a live --interface (one of the two)")
    if args.interface:
        from wmiscope.dissectors.capture import live_capture
        return live_capture(args.interface, args.filter, args.count)
    return args.capture
