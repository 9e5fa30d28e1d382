"""wmiscope report CAPTURE [CAPTURE...]: the forensics report.

What WMI did, to whom and by whom: findings with their MITRE ATT&CK technique, hosts,
principal, decisive values, evidence frames and operation, observed (clear or decrypted)
or inferred (sealed) with reasons. Several captures make one report.
"""

from __future__ import annotations

import sys

from wmiscope.cli import InputError, UsageError

from .output import (add_credential_arguments, add_live_arguments, autostop_duration, dumps, make_analysis,
                     open_capture_set, open_live)


def add_arguments(p) -> None:
    p.add_argument("captures", nargs="*", metavar="CAPTURE",
                   help="pcap or pcapng files, folders of them or glob patterns (one report for all)")
    add_live_arguments(p)
    p.add_argument("-o", "--output", metavar="FILE", help="write the report to FILE (default: standard output)")
    p.add_argument("--format", choices=("html", "json", "jsonl"),
                   help="html: one self-contained page; json: the whole report; jsonl: one ECS finding per line "
                        "(default: html when -o ends in .html, else jsonl)")
    add_credential_arguments(p)


def run(args) -> int:
    from wmiscope.dissectors.capture import CaptureFormatError
    from wmiscope.report.output import analyse_captures

    if bool(args.captures) == bool(args.interface):
        raise UsageError("name CAPTURE file(s) or a live --interface (one of the two)")
    fmt = args.format or ("html" if (args.output or "").lower().endswith((".html", ".htm")) else "jsonl")
    make_analysis(args)     # a bad credentials file or keytab is said before anything is read
    if args.interface:
        sources = [(f"live:{args.interface}", open_live(args.interface, args.filter, args.count,
                                                        autostop_duration(args.autostop), args.write))]
    else:   # every file opened first: one that cannot be read is said before a long run
        if args.write or args.autostop:
            raise UsageError("-w and -a apply to a live capture (-i)")
        from wmiscope.dissectors.capture import expand_sources
        try:        # folders and glob patterns stand for the capture files they hold
            paths = expand_sources(args.captures)
        except CaptureFormatError as e:
            raise InputError(str(e)) from None
        sources = [(path, open_capture_set([path])) for path in paths]

    out = None
    if args.output:
        try:        # before the analysis: a wrong path is said at once, not after a long run
            out = open(args.output, "w", encoding="utf-8")
        except OSError as e:
            raise InputError(f"{args.output}: {e.strerror}") from None
    try:
        report = analyse_captures(sources, lambda: make_analysis(args), excerpts=fmt == "html", progress=True)
    except (CaptureFormatError, OSError) as e:     # a user's mistake: one line, no traceback
        where = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.filename else str(e)
        raise InputError(where) from None
    text = render(report, fmt)
    if out is not None:
        with out:
            out.write(text)
        s = report["summary"]
        sys.stderr.write(f"wmiscope report: {s['findings']} findings, {s['wmi_calls']} WMI calls"
                         f"{' (no WMI in the capture)' if s['no_wmi'] else ''} -> {args.output}\n")
    else:
        sys.stdout.write(text)
        if report["summary"]["no_wmi"]:
            sys.stderr.write("wmiscope report: no WMI traffic in the capture(s): no findings\n")
    return 0


def render(report: dict, fmt: str) -> str:
    if fmt == "json":
        return dumps(report) + "\n"
    if fmt == "html":
        from wmiscope.report.html import render_html
        return render_html(report)
    from wmiscope.report.ecs import finding_document
    lines = [dumps(finding_document(f)) for f in report["findings"]]
    return "".join(line + "\n" for line in lines)
