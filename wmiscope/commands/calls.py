"""wmiscope calls CAPTURE: one record per DCE/RPC call, request and response paired."""

from __future__ import annotations

import sys

from wmiscope.dissectors.auth import auth_level_name, auth_type_name
from wmiscope.dissectors.jsonl import call_dict, dumps_line, endpoint, error_line

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
    if table:
        from wmiscope.report.values import call_summary

    def render(rec) -> str:
        if type(rec) is Call:
            if table:
                return _table_row(rec, call_outcome(rec), call_summary)
            return dumps_line(call_dict(rec, call_outcome(rec)))
        if type(rec) is ErrorRecord and errors:
            return f"! {_error_line(rec)}\n" if table else dumps_line(error_line(rec))
        return ""

    return render


_TABLE_HEAD = f"{'req':>6} {'resp':>6}  {'client -> server':<44} {'call':>5} {'ctx':>3}  {'interface::method':<50} {'auth':<18} state\n"
_TABLE_HEAD = f"{'req':>6} {'resp':>6}  {'client -> server':<44} {'call':>5} {'ctx':>3}  {'interface::method':<50} {'auth':<18} {'state':<10} summary\n"


def _table_row(call, outcome: str, call_summary) -> str:
    """The row of one call, read off the Call itself: the JSON-lines dict (call_dict) it
    shows a few fields of would cost more than the row (times in ISO text, the auth and
    error dicts); the summary reads the decoded parameters through the same keys as the
    report does on that dict."""
    req = call.req_frames[1] if call.req_frames is not None else "-"
    resp = call.resp_frames[1] if call.resp_frames is not None else "-"
    iface = call.interface or (f"?{call.interface_uuid}" if call.interface_uuid else "?")
    method = call.method or f"opnum {call.opnum}"
    decrypted = call.req_decrypted or call.resp_decrypted
    state = outcome
    if decrypted:
        state += " (decrypted)"
    if call.fault is not None:
        state += f" fault 0x{call.fault:08x}"
    ctx = call.ctx_id if call.ctx_id is not None else "-"
    summary = call_summary({"encrypted": call.req_encrypted or call.resp_encrypted, "decrypted": decrypted,
                            "method": call.method, "decoded": call.decoded or None})
    return (f"{req:>6} {resp:>6}  {_column(_ENDS, _ends_text, call.client, call.server)}"
            f"{call.call_id:>5} {ctx:>3}  {iface + '::' + method:<50} {_column(_AUTH, _auth_text, call.auth_type, call.auth_level)}"
            f" {state:<10} {summary}").rstrip() + "\n"


def _ends_text(client, server) -> str:
    return f"{endpoint(client) + ' -> ' + endpoint(server):<44} "


def _auth_text(auth_type, auth_level) -> str:
    return f"{'-' if auth_type is None else auth_type_name(auth_type) + '/' + auth_level_name(auth_level):<18}"


_ENDS: dict[tuple, str] = {}
_AUTH: dict[tuple, str] = {}


def _column(kept: dict, make, *key) -> str:
    """A padded column's text, made once per key and kept (bounded): every call of a
    connection shows the same endpoints, and a handful of (auth type, level) pairs make
    every auth column."""
    text = kept.get(key)
    if text is None:
        if len(kept) >= 4096:
            kept.clear()
        text = kept[key] = make(*key)
    return text


def _error_line(e) -> str:
    where = " ".join(f"{k}={getattr(e, k)}" for k in ("frame", "conn", "structure", "offset") if getattr(e, k) is not None)
    return f"{e.stage}: {e.reason} ({where}) [{e.kind}]"
