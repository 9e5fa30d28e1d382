"""The report as one JSON document, and the run over one or more captures."""

from __future__ import annotations

import time
from collections import Counter

from wmiscope import __version__
from wmiscope.dissectors.jsonl import iso

REPORT_VERSION = "1.0"


class Streamed:
    """A section of the report made one item at a time each time it is read (the sessions,
    sealed connections and findings: as many as the capture's connections), never held whole."""

    def __init__(self, items):
        self._items = items     # () -> an iterator of the section's items

    def __iter__(self):
        return iter(self._items())


class StreamedStore(Streamed):
    """Items of a builder's store (spill.py) in the report's form, read one at a time: the
    keys' items that `keep` keeps, in the keys' order."""

    def __init__(self, store, keys: list, form, keep=None):
        super().__init__(lambda: (form(x) for x in map(store.read, keys) if keep is None or keep(x)))
        self._store, self._keys, self._form = store, keys, form

    def read(self, key) -> dict:
        return self._form(self._store.read(key))

    def at(self, i: int) -> dict:
        """The i-th of the keys' items."""
        return self.read(self._keys[i])

    def close(self) -> None:
        self._store.close()


def session_dict(s: dict, rank: dict) -> dict:
    """rank: a finding's number -> its place in the report (its id F001, F002, ...)."""
    return {
        "id": s["id"], "capture": s["capture"], "conn": s["conn"], "client": s["client"],
        "server": s["server"], "first_time": iso(s["first_epoch"]), "last_time": iso(s["last_epoch"]),
        "principals": s["principals"], "auth": s["auth"],
        "login": {k: v for k, v in s["login"].items()}, "call_count": s["call_count"],
        "sealed": s["sealed"], "decrypted": s["decrypted"], "methods": dict(s["methods"]),
        "operations": list(s["operations"].values()),
        "calls": [_call_row(r, rank) for r in s["calls"]],
    }


def _call_row(r: dict, rank: dict) -> dict:
    row = dict(r, time=iso(r["time"]))
    if "findings" in r:
        row["findings"] = [f"F{i:03d}" for i in sorted(rank[n] for n in r["findings"])]
    return row


def finding_dict(f: dict) -> dict:
    g = dict(f)
    g["first_time"] = iso(f["first_epoch"])
    g["last_time"] = iso(f["last_epoch"])
    return g


def report_dict(b) -> dict:
    """The report; its sessions, sealed connections and findings are Streamed (see write_json)."""
    from .sealed import sealed_connections

    findings = StreamedStore(b.findings, b.finding_order, finding_dict)
    techniques = Counter()
    tech_names = {}
    by_basis, by_severity = Counter(), Counter()
    principals = set()
    first_epoch = last_epoch = None
    for f in findings:      # the summary's counts, in one pass
        for t in f["techniques"]:
            techniques[t["id"]] += 1
            tech_names[t["id"]] = t
        by_basis[f["basis"]] += 1
        by_severity[f["severity"]] += 1
        principals.add((f["principal"] or {}).get("text"))
        if f["first_epoch"]:
            first_epoch = f["first_epoch"] if first_epoch is None else min(first_epoch, f["first_epoch"])
        if f["last_epoch"]:
            last_epoch = f["last_epoch"] if last_epoch is None else max(last_epoch, f["last_epoch"])
    principals = sorted(principals - {None})
    hosts = [h for ip, h in sorted(b.hosts.items()) if ip in b.wmi_ips]
    wmi_calls = sum(c["wmi_calls"] for c in b.captures)
    return {
        "report": "wmiscope forensics report", "version": REPORT_VERSION, "wmiscope": __version__,
        "generated": iso(time.time()),
        "captures": [{"name": c["name"], "files": c["files"], "stats": c["stats"], "wmi_calls": c["wmi_calls"],
                      "errors": c["errors"], "interrupted": c.get("interrupted", False)} for c in b.captures],
        "summary": {
            "wmi_calls": wmi_calls,
            "no_wmi": wmi_calls == 0,
            "findings": len(b.finding_order),
            "by_basis": dict(by_basis),
            "by_severity": dict(by_severity),
            "techniques": [dict(tech_names[t], count=n) for t, n in techniques.most_common()],
            "hosts": len(hosts), "principals": principals, "sessions": b.wmi_sessions,
            "errors": sum((c["stats"] or {}).get("errors", 0) for c in b.captures),
            "first_time": iso(first_epoch),
            "last_time": iso(last_epoch),
        },
        "hosts": hosts,
        "sessions": StreamedStore(b.sessions, b.sessions.order,
                                  lambda s: session_dict(s, b.finding_rank), keep=lambda s: s["wmi"]),
        "sealed_connections": Streamed(lambda: sealed_connections(b)),
        "findings": findings,
    }


def write_json(report: dict, write) -> None:
    """The report as one JSON document, as dumps(report) would write it, written a list item
    at a time: the sessions are read from disk as they are written."""
    from wmiscope.dissectors.jsonl import dumps

    write("{")
    for i, (k, v) in enumerate(report.items()):
        write(("," if i else "") + dumps(k) + ":")
        if isinstance(v, (list, Streamed)):
            write("[")
            for j, item in enumerate(v):
                write(("," if j else "") + dumps(item))
            write("]")
        else:
            write(dumps(v))
    write("}\n")


def close_report(report: dict) -> None:
    """Lets the temporary stores of the sessions and findings go (SQLite deletes their files)."""
    for section in ("sessions", "findings"):
        if isinstance(report.get(section), StreamedStore):
            report[section].close()


def analyse_captures(source, make_analysis, *, name: str | None = None, excerpts: bool = True,
                     progress: bool = False, split=None, **live) -> dict:
    """The report of one analysis over `source`: a capture set (capture.open_sources: several
    files merged in time order), a capture path, or live frames. One pipeline for all the
    files, so the IPID registry, the operations and the TCP connections are shared: a session
    cut by a rolling file's boundary is one session, and its sealed calls keep their names.

    live: live_sessions, live_findings of the ReportBuilder (how many stay in memory).

    split: runs the analysis split by host pair instead (commands.workers.write_split with
    this module's `record_renderer` in the workers): split(write) writes each record's
    line in the single run's order and returns the Stats. The builder, which correlates
    across host pairs, stays here and reads the lines."""
    from wmiscope.dissectors.jsonl import error_dict
    from wmiscope.commands.progress import with_progress
    from wmiscope.dissectors.records import Call, ErrorRecord
    from wmiscope.dissectors.transcript import TranscriptRenderer

    from .findings import ReportBuilder
    from .values import record_dict

    files = list(getattr(source, "names", None) or ())
    paths = getattr(source, "paths", None) or [str(source)]
    if split is not None:
        # a call's excerpt lines were rendered by the worker and ride in place of the record
        b = ReportBuilder(excerpt_renderer=_lines if excerpts else None, **live)
        b.start_capture(name or ", ".join(paths), files=files or paths)
        stats = split(lambda line: _read_line(b, line))
        b.end_capture(stats.as_dict())
        return b.finish()
    renderer = TranscriptRenderer(frames=True)
    b = ReportBuilder(excerpt_renderer=renderer.call_lines if excerpts else None, **live)
    b.start_capture(name or ", ".join(paths), files=files or paths)
    analysis = make_analysis()
    frames = with_progress(source, analysis, streaming=False) if progress else source
    try:
        for rec in analysis.run(frames):
            kind = type(rec)
            if kind is Call:
                b.observe(record_dict(rec), rec)
            elif kind is ErrorRecord:
                b.error(error_dict(rec))
    except KeyboardInterrupt:
        # Ctrl-C ends a live capture (or a long file): report what was seen so far
        b.captures[-1]["interrupted"] = True
    b.end_capture(analysis.stats.as_dict())
    return b.finish()


def record_renderer(excerpts: bool):
    """What a worker of a split report sends for a record: one JSON line holding the call's
    jsonl dict ("c") and, for a WMI call of an HTML report, its transcript lines ("x");
    or an error's dict ("e"). Other records send nothing."""
    from wmiscope.dissectors.jsonl import call_dict, dumps, error_dict
    from wmiscope.dissectors.pipeline import call_outcome
    from wmiscope.dissectors.records import Call, ErrorRecord
    from wmiscope.dissectors.transcript import TranscriptRenderer

    from .findings import WMI_INTERFACES

    lines = TranscriptRenderer(frames=True).call_lines if excerpts else None

    def render(rec) -> str:
        kind = type(rec)
        if kind is Call:
            d = call_dict(rec, call_outcome(rec))
            x = lines(rec) if lines is not None and d.get("interface") in WMI_INTERFACES else None
            return dumps({"c": d, "x": x}) + "\n"
        if kind is ErrorRecord:
            return dumps({"e": error_dict(rec)}) + "\n"
        return ""

    return render


def _lines(lines):
    return lines


def _read_line(b, line: str) -> None:
    import orjson

    o = orjson.loads(line)
    if "c" in o:
        b.observe(o["c"], o["x"])
    else:
        b.error(o["e"])
