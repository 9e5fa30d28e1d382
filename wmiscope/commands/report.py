"""wmiscope report CAPTURE [CAPTURE...]: the forensics report.

What WMI did, to whom and by whom: findings with their MITRE ATT&CK technique, hosts,
principal, decisive values, evidence frames and operation, observed (clear or decrypted)
or inferred (sealed) with reasons. Several captures make one report.
"""

from __future__ import annotations

import sys

from wmiscope.cli import InputError

from wmiscope.dissectors.jsonl import dumps

from . import workers
from .output import add_source_arguments, make_analysis, open_source


def add_arguments(p) -> None:
    add_source_arguments(p)     # files, folders, globs as one capture set; live; credentials
    p.add_argument("-o", "--output", metavar="FILE", help="write the report to FILE (default: standard output)")
    p.add_argument("--format", choices=("html", "json", "jsonl"),
                   help="html: one self-contained page; json: the whole report; jsonl: one ECS finding per line "
                        "(default: html when -o ends in .html, else jsonl)")
    workers.add_arguments(p)


def _format(args) -> str:
    return args.format or ("html" if (args.output or "").lower().endswith((".html", ".htm")) else "jsonl")


def record_renderer(args):
    """A split run's workers: each record as the line the report builder reads."""
    from wmiscope.report.output import record_renderer as report_lines
    return report_lines(excerpts=_format(args) == "html")


def run(args) -> int:
    from wmiscope.dissectors.capture import CaptureFormatError
    from wmiscope.report.output import analyse_captures, close_report

    fmt = _format(args)
    # One capture set (or live capture) for all CAPTURE arguments: one analysis, one report
    source = open_source(args)
    out = None
    if args.output:
        try:        # before the analysis: a wrong path is said at once, not after a long run
            out = open(args.output, "w", encoding="utf-8")
        except OSError as e:
            raise InputError(f"{args.output}: {e.strerror}") from None
    name = f"live:{args.interface}" if args.interface else None
    shards = workers.split_shards(args, source)
    split = None
    if shards != 1:
        def split(write):
            return workers.write_split(args, "report", write, source, shards)
    try:
        report = analyse_captures(source, lambda: make_analysis(args), name=name, excerpts=fmt == "html",
                                  progress=True, split=split)
    except (CaptureFormatError, OSError) as e:     # a user's mistake: one line, no traceback
        where = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.filename else str(e)
        raise InputError(where) from None
    try:
        if out is not None:
            with out:
                write_report(report, fmt, out.write)
        else:
            write_report(report, fmt, sys.stdout.write)
    finally:
        close_report(report)
    if out is not None:
        s = report["summary"]
        sys.stderr.write(f"wmiscope report: {s['findings']} findings, {s['wmi_calls']} WMI calls"
                         f"{' (no WMI in the capture)' if s['no_wmi'] else ''} -> {args.output}\n")
    elif report["summary"]["no_wmi"]:
        sys.stderr.write("wmiscope report: no WMI traffic in the capture(s): no findings\n")
    return 0


def write_report(report: dict, fmt: str, write) -> None:
    """Written a piece at a time: the sessions come from disk as they are written (a large
    capture's report is larger than the memory it may take)."""
    if fmt == "json":
        from wmiscope.report.output import write_json
        write_json(report, write)
    elif fmt == "html":
        from wmiscope.report.html import write_html
        write_html(report, write)
    else:
        from wmiscope.report.ecs import finding_document
        for f in report["findings"]:
            write(dumps(finding_document(f)) + "\n")
