"""wmiscope transcript CAPTURE: every message as the MS-WMI section 4 traces print it.

One summary line per request and per response, then one line per field in wire order
(see wmiscope.dissectors.transcript for the rules), the pipeline's error records inline.
"""

from __future__ import annotations

import sys

from . import workers
from .output import add_source_arguments, open_source, set_note, summary_line


def add_arguments(p) -> None:
    add_source_arguments(p)
    p.add_argument("--frames", action="store_true", help="end each summary line with its frame number(s)")
    p.add_argument("--mof", action="store_true", help="print whole objects (classes, instances) as MOF")
    p.add_argument("--all", action="store_true",
                   help="also the DCOM header line above each WMI message and the bind / alter_context / "
                        "auth3 PDUs between calls")
    p.add_argument("--no-operations", action="store_true",
                   help="leave out the [op-N Kind] tag that names the WMI operation each call belongs to")
    workers.add_arguments(p)


def run(args) -> int:
    write = sys.stdout.write
    source = open_source(args)
    if args.frames and set_note(source):
        write(set_note(source))
    stats = workers.write_records(args, "transcript", write, source, want_pdus=args.all)
    write(summary_line(stats))
    return 0


def record_renderer(args):
    """One record's transcript lines (a call's request and response, an error, a PDU)."""
    from wmiscope.dissectors.transcript import TranscriptRenderer

    renderer = TranscriptRenderer(frames=args.frames, mof=args.mof, all=args.all,
                                  operations=not args.no_operations)
    lines = renderer.render

    def render(rec) -> str:
        return "".join(line + "\n" for line in lines((rec,)))

    return render
