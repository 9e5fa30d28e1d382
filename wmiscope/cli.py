"""The `wmiscope` command: one subcommand per job.

Each subcommand lives in wmiscope/commands/<name>.py and provides
`add_arguments(parser)` and `run(args) -> int`; modules are imported only when
their subcommand runs, so `wmiscope --help` stays instant.

A user's mistake ends in one line on stderr, ``wmiscope: error: WHAT``, never a
traceback: exit status 2 for a usage error (a bad option, an interface that does
not exist), 1 for input that cannot be read (a missing or unreadable file, a file
that is no capture, a bad credentials file or keytab, no right to capture).
Commands raise `UsageError` / `InputError` for these before writing anything on
stdout. A broken pipe ends quietly; so does Ctrl-C (a live capture handles it
itself: it stops, flushes and prints its summary).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from . import __version__

COMMANDS = {
    "calls": "one record per DCE/RPC call (request and response paired), as JSON lines or a table",
    "stats": "frames, TCP flows, gaps, PDUs by type, and calls by outcome; the parts add up",
    "decode": "decode one WMI encoding (MS-WMIO object, ObjectArray, context, refresher blob) from a file",
    "transcript": "every request and response field by field, in the dialect of the MS-WMI section 4 traces",
    "report": "forensics report: findings with MITRE ATT&CK techniques, hosts, principals and evidence frames",
    "wireshark-plugin": "write the Wireshark Lua plugin generated from the interface table (or --install it)",
}

EXIT_INPUT = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130      # 128 + SIGINT, as shells report it


class UserError(Exception):
    """A mistake of the user's, told in one line: the message says what and where."""

    status = EXIT_INPUT


class UsageError(UserError):
    """The command line asks for something impossible (exit 2)."""

    status = EXIT_USAGE


class InputError(UserError):
    """A named input cannot be read, or is not what it must be (exit 1)."""

    status = EXIT_INPUT


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors in the one-line form of every other error."""

    def error(self, message: str):
        command = self.prog.split(" ", 1)[1] + ": " if " " in self.prog else ""
        _say(f"{command}{message} (see {self.prog} --help)")
        sys.exit(EXIT_USAGE)


def _say(message: str) -> None:
    sys.stderr.write(f"wmiscope: error: {' '.join(str(message).split())}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="wmiscope",
        description="MS-WMI wire-protocol dissector and traffic analyzer.",
    )
    parser.add_argument("--version", action="version", version=f"wmiscope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=name)
        _load(name).add_arguments(p)
    return parser


def _load(name: str):
    return importlib.import_module(f"wmiscope.commands.{name.replace('-', '_')}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return _load(args._module).run(args) or 0
    except UserError as e:
        _say(e)
        return e.status
    except BrokenPipeError:
        # `wmiscope calls big.pcap | head` must end quietly: nothing more can be written,
        # and the interpreter's own flush at exit must not complain either.
        _silence_stdout()
        return 0
    except KeyboardInterrupt:
        _silence_stdout()
        return EXIT_INTERRUPTED
    except OSError as e:        # the disk or the terminal failed under us: say so, no traceback
        _say(f"{e.filename + ': ' if getattr(e, 'filename', None) else ''}{e.strerror or e}")
        return EXIT_INPUT
    except Exception as e:  # noqa: BLE001 - a bug of ours still ends in one line
        if os.environ.get("WMISCOPE_DEBUG"):
            raise
        _say(f"internal error {type(e).__name__}: {e} (set WMISCOPE_DEBUG=1 for the traceback, and report it)")
        return EXIT_INPUT


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
