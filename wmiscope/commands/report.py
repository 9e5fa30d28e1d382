"""wmiscope report CAPTURE [CAPTURE...]: the forensics report.

What WMI did, to whom and by whom: findings with their MITRE ATT&CK technique, hosts,
principal, decisive values, evidence frames and operation, observed (clear or decrypted)
or inferred (sealed) with reasons. Several captures make one report.
"""

from __future__ import annotations

import sys

from .output import add_credential_arguments, dumps, make_analysis


def add_arguments(p) -> None:
    p.add_argument("captures", nargs="*", metavar="CAPTURE",
                   help="pcap or pcapng files, folders of them or glob patterns (one report for all)")
    p.add_argument("-i", "--interface", help="capture live on this interface instead (through dumpcap when "
                                             "installed: Wireshark's capture rights suffice; else needs root)")
    p.add_argument("-f", "--filter", default="tcp", help="BPF filter for live capture (default: tcp)")
    p.add_argument("-c", "--count", type=int, help="stop a live capture after this many frames")
    p.add_argument("-a", "--autostop", action="append", default=[], metavar="duration:SECONDS",
                   help="stop a live capture after this many seconds (tshark's -a duration:N)")
    p.add_argument("-w", "--write", metavar="FILE", help="save the live capture to this pcapng file")
    p.add_argument("-o", "--output", metavar="FILE", help="write the report to FILE (default: standard output)")
    p.add_argument("--format", choices=("html", "json", "jsonl"),
                   help="html: one self-contained page; json: the whole report; jsonl: one ECS finding per line "
                        "(default: html when -o ends in .html, else jsonl)")
    add_credential_arguments(p)


def run(args) -> int:
    from wmiscope.dissectors.capture import CaptureFormatError
    from wmiscope.report.output import analyse_captures

    if bool(args.captures) == bool(args.interface):
        raise SystemExit("wmiscope: name CAPTURE file(s) or a live --interface (one of the two)")
    fmt = args.format or ("html" if (args.output or "").lower().endswith((".html", ".htm")) else "jsonl")
    if args.interface:
        from wmiscope.dissectors.live import live_source

        from .output import autostop_duration
        try:
            sources = [(f"live:{args.interface}", live_source(args.interface, args.filter, count=args.count,
                                                              duration=autostop_duration(args.autostop),
                                                              write=args.write))]
        except (OSError, ValueError) as e:
            raise SystemExit(f"wmiscope report: live capture on {args.interface}: {e}") from None
    else:
        from wmiscope.dissectors.capture import expand_sources
        try:        # folders and glob patterns stand for the capture files they hold
            sources = [(path, path) for path in expand_sources(args.captures)]
        except CaptureFormatError as e:
            raise SystemExit(f"wmiscope report: {e}") from None

    out = None
    if args.output:
        try:        # before the analysis: a wrong path is said at once, not after a long run
            out = open(args.output, "w", encoding="utf-8")
        except OSError as e:
            raise SystemExit(f"wmiscope report: {args.output}: {e.strerror}") from None
    try:
        report = analyse_captures(sources, lambda: make_analysis(args), excerpts=fmt == "html", progress=True)
    except (CaptureFormatError, OSError) as e:     # a user's mistake: one line, no traceback
        where = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.filename else str(e)
        raise SystemExit(f"wmiscope report: {where}") from None
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
