"""Shared rendering of pipeline records for the commands (JSON lines and tables)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone

import orjson

from wmiscope.cli import InputError, UsageError
from wmiscope.dissectors.transcript import auth_level_name, auth_type_name


def iso(ts: float | None) -> str | None:
    """UTC ISO 8601 text of an epoch time; None for none, and for a time no calendar
    date can show (before year 1 or after 9999: a hostile capture's, kept as "epoch")."""
    if ts is None:
        return None
    try:
        return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
    except (ValueError, OverflowError, OSError):
        return None


def endpoint(ep) -> str:
    ip, port = ep
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def summary_line(stats) -> str:
    """The closing line of the calls table and the transcript: the counts that add up."""
    outcomes = ", ".join(f"{k} {v}" for k, v in stats.as_dict()["calls_by_outcome"].items())
    return f"{stats.calls} calls ({outcomes}), {stats.pdus} PDUs, {stats.errors} errors, {stats.frames} frames\n"


def error_dict(err) -> dict:
    d = {"stage": err.stage, "kind": err.kind, "severity": err.severity, "reason": err.reason}
    for k in ("frame", "conn", "structure", "offset"):
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
    p.add_argument("capture", nargs="?", help="pcap or pcapng file (gzip-compressed is fine)")
    p.add_argument("-i", "--interface", help="capture live on this interface instead (needs capture rights)")
    p.add_argument("-f", "--filter", default="tcp", help="BPF filter for live capture (default: tcp)")
    p.add_argument("-c", "--count", type=positive_count, help="stop a live capture after this many frames")
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


def positive_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of frames (1 or more), not {text!r}")
    return value


def credentials_from_args(args):
    """The Credentials the options name, or None when none were given (a bad file ends the run)."""
    from wmiscope.dissectors.credentials import Credentials, CredentialsError

    cred = Credentials()
    user = getattr(args, "user", None)
    try:        # secrets typed on the command line: a mistake there is a usage error
        for pw in getattr(args, "password", None) or ():
            cred.add_password(user, pw)
        for h in getattr(args, "nt_hash", None) or ():
            cred.add_nt_hash(user, h)
    except CredentialsError as exc:
        raise UsageError(str(exc)) from None
    try:        # files that cannot be read or are not what they must be
        for path in getattr(args, "keytab", None) or ():
            cred.add_keytab(path)
        for path in getattr(args, "credentials", None) or ():
            cred.load(path)
    except CredentialsError as exc:
        raise InputError(str(exc)) from None
    return cred or None


def make_analysis(args, **kwargs):
    """An Analysis for a capture-reading command, with the credentials its options name."""
    from wmiscope.dissectors.pipeline import Analysis

    return Analysis(credentials=credentials_from_args(args), **kwargs)


def open_source(args):
    """The frames to analyse: the capture file opened (so a file that cannot be read
    or is no capture is refused before anything is written), or a live capture
    started (so a missing interface or missing rights are, too). Exactly one of the
    two must be named."""
    if bool(args.capture) == bool(args.interface):
        raise UsageError("name a CAPTURE file or a live --interface (one of the two)")
    if args.interface:
        frames = open_live(args.interface, args.filter, args.count)
        try:    # someone watching a live capture sees each record as it is decoded
            sys.stdout.reconfigure(line_buffering=True)
        except (AttributeError, ValueError):
            pass
        return frames
    return open_capture_file(args.capture)


def open_capture_file(path: str):
    """A capture file opened for reading, or the one-line InputError saying why not."""
    from wmiscope.dissectors.capture import CaptureFormatError, open_capture

    if os.path.isdir(path):
        raise InputError(f"{path}: is a directory, not a capture file")
    try:
        return open_capture(path)
    except CaptureFormatError as e:
        raise InputError(str(e)) from None
    except OSError as e:
        raise InputError(f"{path}: {e.strerror or e}") from None


def open_live(interface: str, bpf: str, count: int | None):
    import socket

    from wmiscope.dissectors.capture import live_capture

    try:
        socket.if_nametoindex(interface)
    except OSError:
        raise UsageError(f"no network interface named {interface!r} (see `ip link`)") from None
    try:
        frames = live_capture(interface, bpf, count)
    except PermissionError:
        raise InputError(f"no permission to capture on {interface} (run as root, or grant CAP_NET_RAW)") from None
    except OSError as e:
        raise InputError(f"cannot capture on {interface}: {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001 - scapy reports a bad BPF filter or interface its own ways
        raise UsageError(f"cannot capture on {interface} with filter {bpf!r}: {e}") from None
    frames = _until_interrupted(frames)
    # As tshark does: the analyst (and a script driving us) knows when capture has begun.
    sys.stderr.write(f"wmiscope: capturing on {interface} (filter: {bpf}); Ctrl-C stops\n")
    sys.stderr.flush()
    return frames


def _until_interrupted(frames):
    """A live capture's frames until Ctrl-C, which ends it as its end would: the
    pipeline then flushes what it holds and the command prints its summary (exit 0,
    as tshark does). SIGINT interrupts only the wait for the next frame; arriving
    while a frame is being analysed, it lets that frame finish first."""
    import signal

    state = {"waiting": False, "stop": False}

    def on_sigint(signum, stack):
        state["stop"] = True
        if state["waiting"]:
            raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:          # not the main thread: Ctrl-C keeps its usual meaning
        previous = None
    return _frames_until(iter(frames), state, previous)


def _frames_until(it, state: dict, previous):
    import signal

    try:
        while not state["stop"]:
            state["waiting"] = True
            try:
                frame = next(it)
            except (StopIteration, KeyboardInterrupt):
                return
            finally:
                state["waiting"] = False
            yield frame
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        close = getattr(it, "close", None)
        if close is not None:
            close()
