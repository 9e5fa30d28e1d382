"""wmiscope calls CAPTURE: one record per DCE/RPC call, request and response paired."""

from __future__ import annotations

import sys

from wmiscope.dissectors.jsonl import call_dict, dumps, error_line

from . import workers
from .output import add_source_arguments, open_source, set_note, summary_line


def add_arguments(p) -> None:
    add_source_arguments(p)
    p.add_argument("--format", choices=("jsonl", "table"), default="table",
                   help="jsonl: one JSON object per call (and per error); table: one line per call")
    p.add_argument("--no-errors", action="store_true",
                   help="leave the error records out of the output (they still count in stats)")
    workers.add_arguments(p)


def run(args) -> int:
    write = sys.stdout.write
    table = args.format == "table"
    source = open_source(args)          # a bad name ends the run before any output
    if table:
        write(set_note(source) or "")
        write(_TABLE_HEAD)
    # objects are decoded for the table too: its summary column shows command lines and instances
    s = workers.write_records(args, "calls", write, source)
    if table:
        write("\n" + summary_line(s))
    return 0


def record_renderer(args):
    """One record's text: a table row or a JSON line (errors unless --no-errors)."""
    from wmiscope.dissectors.pipeline import call_outcome
    from wmiscope.dissectors.records import Call, ErrorRecord

    table = args.format == "table"
    errors = not args.no_errors

    def render(rec) -> str:
        if type(rec) is Call:
            d = call_dict(rec, call_outcome(rec))
            return _table_row(d) if table else dumps(d) + "\n"
        if type(rec) is ErrorRecord and errors:
            return f"! {_error_line(rec)}\n" if table else dumps(error_line(rec)) + "\n"
        return ""

    return render


_TABLE_HEAD = f"{'req':>6} {'resp':>6}  {'client -> server':<44} {'call':>5} {'ctx':>3}  {'interface::method':<50} {'auth':<18} state\n"
_TABLE_HEAD = f"{'req':>6} {'resp':>6}  {'client -> server':<44} {'call':>5} {'ctx':>3}  {'interface::method':<50} {'auth':<18} {'state':<10} summary\n"


def _table_row(d: dict) -> str:
    req = d["request"]["frames"][1] if d["request"] else "-"
    resp = d["response"]["frames"][1] if d["response"] else "-"
    iface = d["interface"] or (f"?{d['interface_uuid']}" if d["interface_uuid"] else "?")
    method = d["method"] or f"opnum {d['opnum']}"
    auth = d["auth"]
    auth_s = f"{auth['type_name']}/{auth['level_name']}" if auth else "-"
    state = d["outcome"]
    if d.get("decrypted"):
        state += " (decrypted)"
    if d["fault"] is not None:
        state += f" fault 0x{d['fault']:08x}"
    from wmiscope.report.values import call_summary

    ends = f"{d['client']} -> {d['server']}"
    ctx = d["ctx_id"] if d["ctx_id"] is not None else "-"
    return f"{req:>6} {resp:>6}  {ends:<44} {d['call_id']:>5} {ctx:>3}  {iface + '::' + method:<50} {auth_s:<18} {state:<10} {call_summary(d)}".rstrip() + "\n"


def _error_line(e) -> str:
    where = " ".join(f"{k}={getattr(e, k)}" for k in ("frame", "conn", "structure", "offset") if getattr(e, k) is not None)
    return f"{e.stage}: {e.reason} ({where}) [{e.kind}]"
