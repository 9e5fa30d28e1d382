"""The report as one JSON document, and the run over one or more captures."""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from datetime import datetime, timezone

from wmiscope import __version__

REPORT_VERSION = "1.0"


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def report_dict(b) -> dict:
    from .sealed import sealed_connections

    findings = []
    for f in b.findings:
        g = dict(f)
        g["first_time"] = iso(f["first_epoch"])
        g["last_time"] = iso(f["last_epoch"])
        findings.append(g)
    wmi_sessions = [s for s in b.sessions.values() if s["wmi"]]
    techniques = Counter()
    tech_names = {}
    for f in findings:
        for t in f["techniques"]:
            techniques[t["id"]] += 1
            tech_names[t["id"]] = t
    principals = sorted({(f["principal"] or {}).get("text") for f in findings} - {None})
    wmi_ips = {s["client"]["ip"] for s in wmi_sessions} | {s["server"]["ip"] for s in wmi_sessions}
    hosts = [h for ip, h in sorted(b.hosts.items()) if ip in wmi_ips]
    sessions = []
    for s in wmi_sessions:
        sessions.append({
            "id": s["id"], "capture": s["capture"], "conn": s["conn"], "client": s["client"],
            "server": s["server"], "first_time": iso(s["first_epoch"]), "last_time": iso(s["last_epoch"]),
            "principals": s["principals"], "auth": s["auth"],
            "login": {k: v for k, v in s["login"].items()}, "call_count": s["call_count"],
            "sealed": s["sealed"], "decrypted": s["decrypted"], "methods": dict(s["methods"]),
            "operations": list(s["operations"].values()),
            "calls": [dict(r, time=iso(r["time"])) for r in s["calls"]],
        })
    wmi_calls = sum(c["wmi_calls"] for c in b.captures)
    return {
        "report": "wmiscope forensics report", "version": REPORT_VERSION, "wmiscope": __version__,
        "generated": iso(time.time()),
        "captures": [{"name": c["name"], "stats": c["stats"], "wmi_calls": c["wmi_calls"],
                      "errors": c["errors"]} for c in b.captures],
        "summary": {
            "wmi_calls": wmi_calls,
            "no_wmi": wmi_calls == 0,
            "findings": len(findings),
            "by_basis": dict(Counter(f["basis"] for f in findings)),
            "by_severity": dict(Counter(f["severity"] for f in findings)),
            "techniques": [dict(tech_names[t], count=n) for t, n in techniques.most_common()],
            "hosts": len(hosts), "principals": principals, "sessions": len(sessions),
            "errors": sum((c["stats"] or {}).get("errors", 0) for c in b.captures),
            "first_time": iso(min((f["first_epoch"] for f in findings if f["first_epoch"]), default=None)),
            "last_time": iso(max((f["last_epoch"] for f in findings if f["last_epoch"]), default=None)),
        },
        "hosts": hosts,
        "sessions": sessions,
        "sealed_connections": sealed_connections(b),
        "findings": findings,
    }


def analyse_captures(sources, make_analysis, *, excerpts: bool = True, progress=None) -> dict:
    """Each capture through its own pipeline, joined in one ReportBuilder (hosts by IP,
    principals by name; sessions stay per capture). When capture sets land (issue 13),
    this is the one function to replace with a single merged run."""
    from wmiscope.commands.output import error_dict
    from wmiscope.dissectors.records import Call, ErrorRecord
    from wmiscope.dissectors.transcript import TranscriptRenderer

    from .findings import ReportBuilder, record_dict

    renderer = TranscriptRenderer(frames=True)
    b = ReportBuilder(excerpt_renderer=renderer.call_lines if excerpts else None)
    for name, source in sources:
        analysis = make_analysis()
        b.start_capture(name)
        metered = progress is not None and progress.enabled     # no per-frame cost on a pipe
        frames = _metered(source, analysis, progress) if metered else source
        for rec in analysis.run(frames):
            kind = type(rec)
            if kind is Call:
                b.observe(record_dict(rec), rec)
            elif kind is ErrorRecord:
                b.error(error_dict(rec))
        b.end_capture(analysis.stats.as_dict())
    return b.finish()


def _metered(source, analysis, progress):
    """The capture's frames, counting the bytes read for the progress line. A file is
    opened here (its read errors go to the analysis like any other error record)."""
    if isinstance(source, (str, bytes, os.PathLike)):
        from wmiscope.dissectors.capture import open_capture
        source = open_capture(source, errors=analysis.emit)
    for raw in source:
        progress.bytes += len(raw[3])
        progress(analysis.stats)
        yield raw


class Progress:
    """Frames and MB read, calls and errors so far on stderr, only on a terminal, at most
    5 times a second."""

    def __init__(self, stream=None, delay: float = 0.5):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.bytes = 0
        self._last = time.monotonic() + delay - 0.2     # short runs print nothing
        self._shown = False

    def __call__(self, stats) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.2:
            return
        self._last = now
        self._shown = True
        self.stream.write(f"\r{stats.frames} frames, {self.bytes / 1e6:.1f} MB read, {stats.calls} calls, "
                          f"{stats.errors} errors ...")
        self.stream.flush()

    def done(self) -> None:
        if self._shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
