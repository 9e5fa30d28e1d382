"""Findings from decoded WMI calls: what happened, to whom, by whom, and the proof.

The engine reads the JSON-able dicts of `calls --format jsonl` (through `record_dict`,
the one adapter to the calls schema) in capture order and keeps:

- sessions: one per DCE/RPC connection that carried WMI (login, principal, calls,
  operations), and the hosts with the names learned for them (SetClientInfo,
  OBJREF string bindings, the NetworkResource of NTLMLogin, the Kerberos service name);
- findings: each a dict (see `new_finding`) with the ATT&CK technique, the decisive
  values, the evidence frames and operation, and how it is known: `observed` (clear
  or decrypted stubs) or `inferred` (sealed traffic, see sealed.py).

What each WMI method can reveal is handlers.py; what the handlers look for (techniques,
recon classes, tool patterns) is data in rules.py; reading values out of a call dict is
values.py; what sealed calls still say is sealed.py.
"""

from __future__ import annotations

from collections import Counter

from wmiscope.spec import interfaces as _if

from . import rules as R
from .handlers import HANDLERS, set_out
from .spill import LIVE_FINDINGS, LIVE_SESSIONS, SpillStore
from .values import (call_summary, failed, frame_of, hresult, hresult_name, namespace_host, objects, param,
                     is_ip, parse_principal, principal_of, props, record_dict, split_endpoint)

WMI_INTERFACES = frozenset(i["name"] for i in _if.INTERFACES if i["group"] == "wmi")

# How sure a finding is, as the analyst reads it.
OBSERVED = 1.0


__all__ = ["ReportBuilder", "record_dict", "call_summary"]


class ReportBuilder:
    """Accumulates sessions, hosts and findings over one analysis (a capture set or a live capture)."""

    def __init__(self, *, excerpt_renderer=None, live_sessions: int = LIVE_SESSIONS,
                 live_findings: int = LIVE_FINDINGS):
        """live_sessions, live_findings: how many stay in memory (see spill.py)."""
        self.captures: list[dict] = []
        self.hosts: dict[str, dict] = {}
        self.sessions = SpillStore(live_sessions)         # by session id
        self.wmi_sessions = 0
        self.wmi_ips: set[str] = set()
        self.findings = SpillStore(live_findings)         # by number, in the order made
        self.finding_order: list[int] = []                # the report's order (finish)
        self.finding_rank: dict[int, int] = {}            # a finding's number -> its place in that order
        # findings that later calls complete, by their number (self.finding)
        self._by_op: dict[tuple, int] = {}
        self._subscriptions: dict[tuple, int] = {}
        self._logins: dict[tuple, int] = {}
        self._render = excerpt_renderer     # Call record -> transcript lines
        self._cap = -1
        self._capture_name = None

    # capture-level -------------------------------------------------------------

    def start_capture(self, name: str, files: list[str] | None = None) -> None:
        """files: the names of a capture set's files, as its records' `file` gives them."""
        self._cap += 1
        self._capture_name = name
        self.captures.append({"name": name, "files": list(files or [name]), "stats": None, "errors": [],
                              "wmi_calls": 0})

    def end_capture(self, stats: dict) -> None:
        self.captures[-1]["stats"] = stats

    def error(self, err: dict) -> None:
        errs = self.captures[-1]["errors"]
        if len(errs) < 200:
            errs.append(err)

    # per call ------------------------------------------------------------------

    def observe(self, d: dict, call=None) -> None:
        self.sessions.settle()
        self.findings.settle()
        iface = d.get("interface")
        wmi = iface in WMI_INTERFACES
        sess = self._session(d, wmi)
        self._learn_names(d, sess)
        if not wmi:
            return
        self.captures[-1]["wmi_calls"] += 1
        if not sess["wmi"]:
            sess["wmi"] = True
            self.wmi_sessions += 1
            self.wmi_ips.update((sess["client"]["ip"], sess["server"]["ip"]))
        method = d.get("method")
        row = self._session_row(d, sess)
        if d.get("encrypted") and not d.get("decrypted"):
            # the excerpt's lines now, not the call record: the record holds the sealed
            # stubs' bytes, and the session may be kept on disk until the report's end
            lines = self._render(call) if self._render is not None and call is not None else None
            sess["sealed_calls"].append(_sealed_view(d, sess, lines))
            return
        handler = HANDLERS.get((iface, method))
        made = handler(self, d, sess) if handler else None
        made = made or []
        op = (d.get("operation") or {})
        if op.get("role") in ("call-result", "sink-callback") and op.get("id"):
            target = self._by_op.get((self._cap, op["id"]))
            if target is not None:
                target = self.finding(target)
                self._follow_up(target, d)
                made.append(target)
        code = hresult(d)
        if (d.get("fault") is not None or failed(code)) and not made:
            made = [self._failure(d, sess, code)]
        for f in made:
            self._attach(f, d, call)
        if made:
            # the findings' numbers: their ids (the report's time order) are known at finish
            row["findings"] = sorted({f["_n"] for f in made})

    def _attach(self, f: dict, d: dict, call, lines: list[str] | None = None) -> None:
        """lines: the call's excerpt lines when rendered already (sealed calls)."""
        key = f"{self._cap}:{d['conn']}:{d['call_id']}"
        if key in f["_calls"]:
            return
        f["_calls"].append(key)
        for half in (d.get("request"), d.get("response")):
            if half:
                ts = half.get("epoch")
                if ts is not None:
                    f["first_epoch"] = ts if f["first_epoch"] is None else min(f["first_epoch"], ts)
                    f["last_epoch"] = ts if f["last_epoch"] is None else max(f["last_epoch"], ts)
                lo, hi = half["frames"]
                f["frames"].extend(range(lo, hi + 1) if hi - lo < 8 else (lo, hi))
                if half.get("origin"):
                    _file_frames(f["evidence"], lo, hi, half["origin"])
        f["frames"] = sorted(set(f["frames"]))
        if len(f["excerpt"]) < 400:
            if lines is not None:
                f["excerpt"].extend(lines)
            elif self._render is not None and call is not None:
                f["excerpt"].extend(self._render(call))

    # sessions and hosts --------------------------------------------------------------

    def _session(self, d: dict, wmi: bool) -> dict:
        sid = f"{self._cap}:{d['conn']}"
        s = self.sessions.get(sid)
        if s is None:
            cip, cport = split_endpoint(d["client"])
            sip, sport = split_endpoint(d["server"])
            s = {
                "id": sid, "capture": d.get("file") or self._capture_name, "conn": d["conn"],
                "client": {"ip": cip, "port": cport}, "server": {"ip": sip, "port": sport},
                "first_epoch": None, "last_epoch": None, "principals": [], "auth": None,
                "login": {}, "calls": [], "call_count": 0, "sealed": 0, "decrypted": 0,
                "methods": Counter(), "operations": {}, "sealed_calls": [], "wmi": False,
            }
            self.sessions.add(sid, s)
            for ip, role in ((cip, "client"), (sip, "server")):
                h = self.hosts.setdefault(ip, {"ip": ip, "names": [], "roles": []})
                if role not in h["roles"]:
                    h["roles"].append(role)
        for half in (d.get("request"), d.get("response")):
            ts = half and half.get("epoch")
            if ts is not None:
                s["first_epoch"] = ts if s["first_epoch"] is None else min(s["first_epoch"], ts)
                s["last_epoch"] = ts if s["last_epoch"] is None else max(s["last_epoch"], ts)
        auth = d.get("auth")
        if auth:
            p = auth.get("principal")
            if p and p not in s["principals"]:
                s["principals"].append(p)
            if auth.get("client"):
                s["kerberos_client"] = auth["client"]
            s["auth"] = {"type": auth.get("type_name"), "level": auth.get("level_name")}
        return s

    def _session_row(self, d: dict, s: dict) -> dict:
        s["call_count"] += 1
        s["methods"][f"{d['interface']}::{d['method']}"] += 1
        if d.get("encrypted") or d.get("decrypted"):     # sealed on the wire, opened or not
            s["sealed"] += 1
        if d.get("decrypted"):
            s["decrypted"] += 1
        op = d.get("operation") or {}
        if op.get("id"):
            o = s["operations"].setdefault(op["id"], {"id": op["id"], "kind": op.get("kind"),
                                                       "namespace": op.get("namespace"), "mode": op.get("mode"),
                                                       "first_frame": frame_of(d, "request"), "calls": 0})
            o["calls"] += 1
            o["mode"] = o["mode"] or op.get("mode")
        row = {"req": frame_of(d, "request"), "resp": frame_of(d, "response"),
               "time": (d.get("request") or d.get("response") or {}).get("epoch"),
               "method": f"{d['interface']}::{d['method']}", "outcome": d.get("outcome"),
               "operation": op.get("id"), "summary": call_summary(d),
               "stub": [(d.get("request") or {}).get("stub_len"), (d.get("response") or {}).get("stub_len")]}
        if len(s["calls"]) < 1000:
            s["calls"].append(row)
        return row

    def add_name(self, ip: str, name: str | None, how: str) -> None:
        if not name or is_ip(name) or name in (".", "localhost"):
            return
        h = self.hosts.setdefault(ip, {"ip": ip, "names": [], "roles": []})
        if not any(n["name"].lower() == name.lower() for n in h["names"]):
            h["names"].append({"name": name, "source": how})

    def _learn_names(self, d: dict, s: dict) -> None:
        cip, sip = s["client"]["ip"], s["server"]["ip"]
        method = d.get("method")
        if method in ("SetClientInfo", "SetClientInfoEx"):
            machine = param(d, "request", "wszClientMachine")
            self.add_name(cip, machine, "SetClientInfo")
            self.add_name(cip, param(d, "request", "wszClientMachineFQDN"), "SetClientInfoEx")
            s["login"]["client_machine"] = machine
            s["login"]["client_pid"] = param(d, "request", "lClientProcId")
            s["login"].setdefault("frames", []).append(frame_of(d, "request"))
        elif method == "NTLMLogin":
            ns = param(d, "request", "wszNetworkResource")
            self.add_name(sip, namespace_host(ns), "NTLMLogin NetworkResource")
            s["login"]["namespace"] = ns
            s["login"]["locale"] = param(d, "request", "wszPreferredLocale")
            s["login"].setdefault("frames", []).append(frame_of(d, "request"))
        auth = d.get("auth") or {}
        pr = parse_principal(auth.get("principal"))
        if pr and pr["kind"] == "kerberos":
            host = pr["service"].split("@", 1)[0].split("/")[1] if "/" in pr["service"] else None
            self.add_name(sip, host, "Kerberos service principal")
        dec = d.get("decoded") or {}
        for side, ip in (("response", sip), ("request", cip)):
            for o in (dec.get(side) or {}).get("objrefs") or ():
                for b in ((o.get("resolver") or {}).get("string_bindings") or ()):
                    self.add_name(ip, b.get("network_addr"), "OBJREF string binding")

    # findings ------------------------------------------------------------------

    def new_finding(self, d: dict, s: dict, rule: str, tids: list[str], title: str, *,
                    basis: str = "observed", confidence: float = OBSERVED, reasons=None,
                    severity: str = "medium") -> dict:
        op = d.get("operation") or {}
        auth = d.get("auth") or {}
        f = {
            "id": None, "rule": rule, "title": title,
            "techniques": [R.technique(t) for t in tids],
            "first_epoch": None, "last_epoch": None,
            "source": dict(s["client"]), "destination": dict(s["server"]),
            "principal": principal_of(auth),
            "namespace": op.get("namespace") or s["login"].get("namespace"),
            "client_machine": s["login"].get("client_machine"),
            "client_pid": s["login"].get("client_pid"),
            "wmi": {}, "command_line": None, "decoded_command": None, "tool": None,
            "frames": [], "evidence": {}, "operation": op.get("id"), "session": s["id"],
            "capture": d.get("file") or self._capture_name,
            "basis": basis, "confidence": confidence, "reasons": list(reasons or ()),
            "outcome": "unknown", "severity": severity, "excerpt": [], "_calls": [],
        }
        if basis == "observed":
            what = "decrypted with the analyst's credentials" if d.get("decrypted") else "decoded from clear stubs"
            f["reasons"].insert(0, what)
        f["_n"] = len(self.findings)
        self.findings.add(f["_n"], f)
        if op.get("id") and op.get("role") == "origin":
            self._by_op[(self._cap, op["id"])] = f["_n"]
        return f

    def finding(self, n: int) -> dict:
        """Finding number n, to complete with a later call."""
        return self.findings.get(n)

    def _follow_up(self, f: dict, d: dict) -> None:
        """A semisynchronous result or async callback completes its operation's finding."""
        for o in objects(d, "response") + objects(d, "request"):
            if o.get("class") == "__PARAMETERS":
                set_out(f, props(o))
        path = param(d, "response", "pstrResultString")
        if path:
            f["wmi"]["result_path"] = path
        status = param(d, "response", "plStatus")
        code = status.get("value") if isinstance(status, dict) else status
        if isinstance(code, int) and failed(code & 0xFFFFFFFF):
            f["outcome"] = "failure"
            f["wmi"]["hresult"] = f"0x{code & 0xFFFFFFFF:08x}"
        elif f["outcome"] == "unknown" and code == 0:
            f["outcome"] = "success"

    def _failure(self, d: dict, s: dict, code) -> dict:
        what = f"{d['interface']}::{d['method']}"
        if d.get("fault") is not None:
            detail = f"DCE/RPC fault 0x{d['fault']:08x}"
        else:
            detail = f"HRESULT 0x{code:08x}" + (f" {hresult_name(d)}" if hresult_name(d) else "")
        f = self.new_finding(d, s, "wmi-failure", ["T1047"], f"{what} failed: {detail}", severity="low")
        f["outcome"] = "failure"
        f["wmi"].update({"method": d["method"], "interface": d["interface"], "error": detail})
        path = param(d, "request", "strObjectPath") or param(d, "request", "strQuery")
        if path:
            f["wmi"]["object_path"] = path
        if code == 0x80041003 or d.get("fault") == 5:
            f["title"] = f"{what} denied: {detail}"
            f["severity"] = "medium"
        return f

    # finish --------------------------------------------------------------------

    def finish(self) -> dict:
        from . import sealed
        self.sessions.settle()
        self.findings.settle()
        # One pass over the sessions (most are on disk): the sealed calls' inferences, and
        # the NTLM user of each session that has findings
        with_findings = {f["session"] for f in self.findings.values()}
        user_of = {}
        for s in self.sessions.values():
            made = len(self.findings)
            if s["sealed_calls"]:
                sealed.infer(self, s)
                self.findings.settle()
            if s["id"] not in with_findings and len(self.findings) == made:
                continue
            for p in s["principals"]:
                pr = parse_principal(p)
                if pr and pr["kind"] == "ntlm":
                    user_of[s["id"]] = pr
        for n in self.findings.order:
            f = self.findings.get(n)
            pr = f["principal"]
            if (pr is None or pr["kind"] == "kerberos" and not pr["name"]) and f["session"] in user_of:
                user = dict(user_of[f["session"]])
                if pr is not None:
                    user["service"] = pr["service"]
                    user["realm"] = pr.get("realm")
                    f["reasons"].append(f"principal: {user['text']} authenticated (NTLM) the later calls of this "
                                        f"connection; these calls used Kerberos to {pr['service']}")
                f["principal"] = user
            elif pr is not None and pr["kind"] == "kerberos" and not pr["name"]:
                f["reasons"].append(f"principal: the Kerberos client is not known: only the service {pr['service']} "
                                    "is in clear; the client's name is inside the ticket, encrypted with the "
                                    "service's key (its keytab, --keytab, would name the user)")
            f["source"]["names"] = [n["name"] for n in self.hosts.get(f["source"]["ip"], {}).get("names", [])]
            f["destination"]["names"] = [n["name"] for n in
                                         self.hosts.get(f["destination"]["ip"], {}).get("names", [])]
            self.findings.settle()
        # The same traffic captured twice (two sensors, overlapping rolling files, a file
        # given twice) needs no join here: the set's files feed one TCP reassembler, which
        # recognises a second copy of a segment by its connection and sequence numbers as
        # bytes already delivered (a retransmission), so each call, and each finding, comes
        # once, its frames those of the copy merged first.
        # in time order; made first, first (the number: a stable sort's tie-break)
        self.finding_order = [k[2] for k in sorted((f["first_epoch"] or 0, f["frames"][:1], f["_n"])
                                                   for f in self.findings.values())]
        self.finding_rank = {n: i for i, n in enumerate(self.finding_order, 1)}
        files = self.captures[-1]["files"] if self.captures else []
        for i, n in enumerate(self.finding_order, 1):
            f = self.findings.get(n)
            f["id"] = f"F{i:03d}"
            f.pop("_calls", None)
            f.pop("_n", None)
            # capture sets: where the frames are, as [{file, frames in that file}]
            f["evidence"] = [{"file": k, "frames": sorted(v)} for k, v in
                             sorted(f["evidence"].items(), key=lambda kv: files.index(kv[0]) if kv[0] in files else 0)]
            if f["evidence"]:
                f["capture"] = f["evidence"][0]["file"]
            f["summary"] = summary(f)
            self.findings.settle()
        return self.report()

    def report(self) -> dict:
        from .output import report_dict
        return report_dict(self)


# What a finding and its evidence read from a sealed call's dict (new_finding, _attach)
_SEALED_KEYS = ("conn", "call_id", "file", "request", "response", "operation", "auth", "decrypted")


def _sealed_view(d: dict, s: dict, lines: list[str] | None) -> dict:
    """What a sealed call still shows: the method (from the IPID), sizes, timing; and
    its excerpt's lines for the findings the sealed inference makes of it."""
    op = d.get("operation") or {}
    return {"d": {k: d[k] for k in _SEALED_KEYS if k in d}, "lines": lines,
            "method": d.get("method"), "interface": d.get("interface"),
            "req_len": (d.get("request") or {}).get("stub_len"),
            "resp_len": (d.get("response") or {}).get("stub_len"),
            "time": (d.get("request") or {}).get("epoch"),
            "namespace": op.get("namespace") or s["login"].get("namespace"), "operation": op.get("id")}


def _file_frames(evidence: dict, lo: int, hi: int, origin: list) -> None:
    """The frames lo..hi of a capture set in their files' own numbers. A record gives the
    first and last frame's [file, frame]; the frames between are known only when both ends
    are in one file with the same distance (no other file's frames interleaved)."""
    (f1, n1), (f2, n2) = origin
    if f1 is None or f2 is None:        # older than the set's origin table keeps
        return
    if f1 == f2 and n2 - n1 == hi - lo and hi - lo < 8:
        evidence.setdefault(f1, set()).update(range(n1, n2 + 1))
    else:
        evidence.setdefault(f1, set()).add(n1)
        evidence.setdefault(f2, set()).add(n2)


def summary(f: dict) -> str:
    src = _host_text(f["source"])
    dst = _host_text(f["destination"])
    who = (f["principal"] or {}).get("text") or "unknown principal"
    return f"{src} -> {dst} as {who}: {f['title']}"


def _host_text(h: dict) -> str:
    names = h.get("names") or []
    return f"{h['ip']} ({', '.join(names)})" if names else h["ip"]
