"""wmiscope transcript CAPTURE: every message as the MS-WMI section 4 traces print it.

One summary line per request and per response, then one line per field in wire order
(see wmiscope.dissectors.transcript for the rules), the pipeline's error records inline.
"""

from __future__ import annotations

import sys

from .output import add_source_arguments, make_analysis, open_source, set_note, summary_line
from .progress import with_progress


def add_arguments(p) -> None:
    add_source_arguments(p)
    p.add_argument("--frames", action="store_true", help="end each summary line with its frame number(s)")
    p.add_argument("--mof", action="store_true", help="print whole objects (classes, instances) as MOF")
    p.add_argument("--all", action="store_true",
                   help="also the DCOM header line above each WMI message and the bind / alter_context / "
                        "auth3 PDUs between calls")
    p.add_argument("--no-operations", action="store_true",
                   help="leave out the [op-N Kind] tag that names the WMI operation each call belongs to")


def run(args) -> int:
    from wmiscope.dissectors.transcript import TranscriptRenderer

    analysis = make_analysis(args, want_pdus=args.all)
    source = open_source(args)
    renderer = TranscriptRenderer(frames=args.frames, mof=args.mof, all=args.all,
                                  operations=not args.no_operations)
    write = sys.stdout.write
    source = open_source(args)
    if args.frames and set_note(source):
        write(set_note(source))
    for line in renderer.render(analysis.run(with_progress(source, analysis, streaming=True))):
        write(line + "\n")
    write(summary_line(analysis.stats))
    return 0
