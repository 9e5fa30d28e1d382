"""Shared rendering of pipeline records for the commands: arguments, the summary line; the
JSON-lines record layout lives in the library (wmiscope.dissectors.jsonl)."""

from __future__ import annotations

# The record layout of the JSON lines lives in the library; re-exported for the commands.
from wmiscope.dissectors.jsonl import call_dict, dumps, endpoint, error_dict, error_line, iso  # noqa: F401


def summary_line(stats) -> str:
    """The closing line of the calls table and the transcript: the counts that add up."""
    outcomes = ", ".join(f"{k} {v}" for k, v in stats.as_dict()["calls_by_outcome"].items())
    return f"{stats.calls} calls ({outcomes}), {stats.pdus} PDUs, {stats.errors} errors, {stats.frames} frames\n"


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
    if not any(getattr(args, name, None) for name in ("password", "nt_hash", "keytab", "credentials")):
        return None             # and the cryptography stays unimported
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
