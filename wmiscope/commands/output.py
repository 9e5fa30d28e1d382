"""Shared rendering of pipeline records for the commands (JSON lines and tables)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import orjson

from wmiscope.dissectors.transcript import auth_level_name, auth_type_name


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def endpoint(ep) -> str:
    ip, port = ep
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def summary_line(stats) -> str:
    """The closing line of the calls table and the transcript: the counts that add up."""
    outcomes = ", ".join(f"{k} {v}" for k, v in stats.as_dict()["calls_by_outcome"].items())
    return f"{stats.calls} calls ({outcomes}), {stats.pdus} PDUs, {stats.errors} errors, {stats.frames} frames\n"


def error_dict(err) -> dict:
    d = {"stage": err.stage, "reason": err.reason}
    for k in ("frame", "conn", "structure", "offset", "kind", "file", "file_frame"):
        v = getattr(err, k)
        if v is not None:
            d[k] = v
    return d


def call_dict(call, outcome: str) -> dict:
    def half(frames, ts, stub_len, encrypted, decrypted, verified):
        if frames is None:
            return None
        return {"frames": list(frames), "time": iso(ts), "epoch": ts,
                "stub_len": stub_len, "encrypted": encrypted, "decrypted": decrypted,
                "verified": verified}   # signed (level 5) and checked with the credentials; None: not checked

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
    try:
        return orjson.dumps(obj, default=_default, option=_ORJSON_OPTIONS).decode()
    except TypeError:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=_default)


def _default(o):
    if isinstance(o, (bytes, bytearray, memoryview)):
        return bytes(o).hex()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    # Decoded WMI objects (classes, instances, contexts, ObjectArrays) ride in a
    # Param's "object"; JSON shows them through the formats' own to_json.
    from wmiscope.dissectors.wmi import object_json
    from wmiscope.formats import wmio
    if isinstance(o, (wmio.WmiClass, wmio.WmiInstance)) or hasattr(o, "to_json"):
        return object_json(o)
    return str(o)


def add_source_arguments(p) -> None:
    p.add_argument("capture", nargs="*", metavar="CAPTURE",
                   help="pcap or pcapng files (gzip-compressed is fine), folders of them or glob patterns: "
                        "several are analysed as one capture, packets merged in time order")
    p.add_argument("-i", "--interface", help="capture live on this interface instead (through dumpcap when "
                                             "installed: Wireshark's capture rights suffice; else needs root)")
    p.add_argument("-f", "--filter", default="tcp", help="BPF filter for live capture (default: tcp)")
    p.add_argument("-c", "--count", type=int, help="stop a live capture after this many frames")
    p.add_argument("-a", "--autostop", action="append", default=[], metavar="duration:SECONDS",
                   help="stop a live capture after this many seconds (tshark's -a duration:N)")
    p.add_argument("-w", "--write", metavar="FILE",
                   help="save the live capture to this pcapng file while decoding it")
    add_credential_arguments(p)


def add_credential_arguments(p) -> None:
    """Secrets that unseal packet-privacy traffic (NTLMSSP and Kerberos), for every command reading captures."""
    g = p.add_argument_group(
        "decryption", "sealed (packet privacy) stubs are decrypted and decoded when the secrets are given; "
        "a connection they do not open gets one 'auth' error saying why, and stays encrypted")
    g.add_argument("--user", metavar="DOMAIN\\USER",
                   help="the user --password / --nt-hash belong to (without it they are tried for any user)")
    g.add_argument("--password", action="append", default=[], metavar="PASSWORD",
                   help="the user's password (NTLM; Kerberos RC4/AES with the default salt); "
                        "a --credentials file keeps it off the command line")
    g.add_argument("--nt-hash", action="append", default=[], metavar="HEX",
                   help="the user's NT hash (32 hex digits, or LM:NT)")
    g.add_argument("--keytab", action="append", default=[], metavar="FILE",
                   help="a keytab with the service's Kerberos keys")
    g.add_argument("--credentials", action="append", default=[], metavar="FILE",
                   help="a credentials file: lines 'password DOMAIN\\USER SECRET', 'nthash DOMAIN\\USER HEX', "
                        "'key PRINCIPAL ETYPE HEX [KVNO]', 'keytab PATH'")


def credentials_from_args(args):
    """The Credentials the options name, or None when none were given (a bad file ends the run)."""
    from wmiscope.dissectors.credentials import Credentials, CredentialsError

    cred = Credentials()
    user = getattr(args, "user", None)
    try:
        for pw in getattr(args, "password", None) or ():
            cred.add_password(user, pw)
        for h in getattr(args, "nt_hash", None) or ():
            cred.add_nt_hash(user, h)
        for path in getattr(args, "keytab", None) or ():
            cred.add_keytab(path)
        for path in getattr(args, "credentials", None) or ():
            cred.load(path)
    except CredentialsError as exc:
        raise SystemExit(f"wmiscope: {exc}") from None
    return cred or None


def make_analysis(args, **kwargs):
    """An Analysis for a capture-reading command, with the credentials its options name."""
    from wmiscope.dissectors.pipeline import Analysis

    return Analysis(credentials=credentials_from_args(args), **kwargs)


def open_source(args):
    """What a capture-reading command reads: the capture set its CAPTURE arguments name
    (files, folders, globs; see capture.open_sources), or a live capture; exactly one."""
    if bool(args.capture) == bool(args.interface):
        raise SystemExit("wmiscope: name CAPTURE files or a live --interface (one of the two)")
    if args.interface:
        from wmiscope.dissectors.live import live_source
        try:
            return live_source(args.interface, args.filter, count=args.count,
                               duration=autostop_duration(args.autostop), write=args.write)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"wmiscope: live capture on {args.interface}: {exc}") from None
    if args.write or args.autostop:
        raise SystemExit("wmiscope: -w and -a apply to a live capture (-i)")
    from wmiscope.dissectors.capture import CaptureFormatError, open_sources
    try:
        return open_sources(args.capture)
    except CaptureFormatError as exc:
        raise SystemExit(f"wmiscope: {exc}") from None
    except OSError as exc:
        raise SystemExit(f"wmiscope: {exc.filename or ''}: {exc.strerror or exc}") from None


def set_note(source) -> str | None:
    """For a capture set of several files, the line that says how its frames are numbered."""
    names = getattr(source, "names", None)
    if not names or len(names) < 2:
        return None
    return (f"# {len(names)} captures merged in time order; frame numbers as tshark shows them on "
            f"`mergecap -w set.pcapng {' '.join(names)}`\n")


def autostop_duration(conditions) -> float | None:
    """The seconds of tshark-style ``-a duration:N`` conditions (the smallest), or None."""
    duration = None
    for cond in conditions or ():
        name, _, value = cond.partition(":")
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1
        if name != "duration" or seconds <= 0:
            raise SystemExit(f"wmiscope: -a {cond}: only duration:SECONDS (a positive number) is supported")
        duration = seconds if duration is None else min(duration, seconds)
    return duration
