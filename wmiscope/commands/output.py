"""Shared rendering of pipeline records for the commands: arguments, the summary line; the
JSON-lines record layout lives in the library (wmiscope.dissectors.jsonl)."""

from __future__ import annotations

import argparse
import sys

from wmiscope.cli import InputError, UsageError


def summary_line(stats) -> str:
    """The closing line of the calls table and the transcript: the counts that add up."""
    outcomes = ", ".join(f"{k} {v}" for k, v in stats.as_dict()["calls_by_outcome"].items())
    return f"{stats.calls} calls ({outcomes}), {stats.pdus} PDUs, {stats.errors} errors, {stats.frames} frames\n"


def add_source_arguments(p) -> None:
    p.add_argument("capture", nargs="*", metavar="CAPTURE",
                   help="pcap or pcapng files (gzip-compressed is fine), folders of them or glob patterns: "
                        "several are analysed as one capture, packets merged in time order")
    add_live_arguments(p)
    add_credential_arguments(p)


def add_live_arguments(p) -> None:
    """Live capture instead of files: the interface, its filter and when to stop (as tshark's)."""
    p.add_argument("-i", "--interface", help="capture live on this interface instead (through dumpcap when "
                                             "installed: Wireshark's capture rights suffice; else needs root)")
    p.add_argument("-f", "--filter", default="tcp", help="BPF filter for live capture (default: tcp)")
    p.add_argument("-c", "--count", type=positive_count, help="stop a live capture after this many frames")
    p.add_argument("-a", "--autostop", action="append", default=[], metavar="duration:SECONDS",
                   help="stop a live capture after this many seconds (tshark's -a duration:N)")
    p.add_argument("-w", "--write", metavar="FILE",
                   help="save the live capture to this pcapng file while decoding it")


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
    """The Credentials the options name, or None when none were given (a bad file ends the run).
    Read once per command (open_source reads them first, so that a bad file is said before
    anything is written), then kept on args."""
    if "_credentials" not in vars(args):
        args._credentials = _read_credentials(args)
    return args._credentials


def _read_credentials(args):
    if not any(getattr(args, name, None) for name in ("password", "nt_hash", "keytab", "credentials")):
        return None             # and the cryptography stays unimported
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
    """What a capture-reading command reads: the capture set its CAPTURE arguments name
    (files, folders, globs; see capture.open_sources), every file opened so that one
    that cannot be read or is no capture is refused before anything is written; or a
    live capture, started (so a missing interface or missing rights are refused, too).
    Exactly one of the two must be named."""
    if bool(args.capture) == bool(args.interface):
        raise UsageError("name CAPTURE files or a live --interface (one of the two)")
    credentials_from_args(args)     # a bad credentials file or keytab is said before anything is read
    if args.interface:
        frames = open_live(args.interface, args.filter, args.count, autostop_duration(args.autostop), args.write)
        try:    # someone watching a live capture sees each record as it is decoded
            sys.stdout.reconfigure(line_buffering=True)
        except (AttributeError, ValueError):
            pass
        return frames
    if args.write or args.autostop:
        raise UsageError("-w and -a apply to a live capture (-i)")
    return open_capture_set(args.capture)


def open_capture_set(paths):
    """The capture set of files, folders and glob patterns, opened for reading, or the
    one-line InputError saying why not (a folder with no captures is one)."""
    from wmiscope.dissectors.capture import CaptureFormatError, open_sources

    try:
        return open_sources(paths)
    except CaptureFormatError as e:
        raise InputError(str(e)) from None
    except OSError as e:
        raise InputError(f"{e.filename or ' '.join(map(str, paths))}: {e.strerror or e}") from None


def open_live(interface: str, bpf: str, count: int | None, duration: float | None = None, write: str | None = None):
    """A started live capture (dissectors/live.py: dumpcap, else a raw socket), or the
    one-line error saying why not. Ctrl-C ends it as its end would: the pipeline then
    flushes what it holds and the command prints its summary (exit 0, as tshark does)."""
    import socket

    from wmiscope.dissectors.live import live_source

    try:
        socket.if_nametoindex(interface)
    except OSError:
        raise UsageError(f"no network interface named {interface!r} (see `ip link`)") from None
    try:
        return live_source(interface, bpf, count=count, duration=duration, write=write)
    except PermissionError:
        raise InputError(f"no permission to capture on {interface} (run as root, join the wireshark group, "
                         f"or grant CAP_NET_RAW)") from None
    except OSError as e:
        raise InputError(f"cannot capture on {interface}: {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001 - dumpcap and scapy report a bad BPF filter their own ways
        raise UsageError(f"cannot capture on {interface} with filter {bpf!r}: {e}") from None


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
        if name != "duration" or not 0 < seconds < 1e9:     # also refuses nan and inf
            raise UsageError(f"-a {cond}: only duration:SECONDS (a positive number) is supported")
        duration = seconds if duration is None else min(duration, seconds)
    return duration
