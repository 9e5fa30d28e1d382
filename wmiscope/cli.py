"""The `wmiscope` command: one subcommand per job.

Each subcommand lives in wmiscope/commands/<name>.py and provides
`add_arguments(parser)` and `run(args) -> int`; modules are imported only when
their subcommand runs, so `wmiscope --help` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
        return 2
    try:
        return _load(args._module).run(args) or 0
    except BrokenPipeError:
        # `wmiscope calls big.pcap | head` must end quietly.
        sys.stderr.close()
        return 0
