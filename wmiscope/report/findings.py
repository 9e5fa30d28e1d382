"""Findings from decoded WMI calls: what happened, to whom, by whom, and the proof.

The engine reads the JSON-able dicts of `calls --format jsonl` (through `record_dict`,
the one adapter to the calls schema) in capture order and keeps:

- sessions: one per DCE/RPC connection that carried WMI (login, principal, calls,
  operations), and the hosts with the names learned for them (SetClientInfo,
  OBJREF string bindings, the NetworkResource of NTLMLogin, the Kerberos service name);
- findings: each a dict (see `new_finding`) with the ATT&CK technique, the decisive
  values, the evidence frames and operation, and how it is known: `observed` (clear
  or decrypted stubs) or `inferred` (sealed traffic, see sealed.py).

The rules themselves (techniques, recon classes, tool patterns) are data in rules.py.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import Counter

from wmiscope.dissectors import interfaces as _if

from . import rules as R

WMI_INTERFACES = frozenset(i["name"] for i in _if.INTERFACES if i["group"] == "wmi")

# How sure a finding is, as the analyst reads it.
OBSERVED = 1.0
# Two sensors' clocks and capture points differ by this much at most for one call.
DUPLICATE_WINDOW = 2.0


def record_dict(call) -> dict:
    """A Call record as the `calls --format jsonl` dict: the one place the report touches
    that schema (issue 8 moves and versions it; only this function follows)."""
    import orjson

    from wmiscope.commands.output import call_dict, dumps
    from wmiscope.dissectors.pipeline import call_outcome

    # Through JSON text: the decoded WMI objects become the very dicts jsonl consumers see.
    return orjson.loads(dumps(call_dict(call, call_outcome(call))))


# ---------------------------------------------------------------------------------------
# reading values out of a call dict

def clean(s):
    """BSTRs written with their terminating NUL inside the length (impacket) lose it."""
    return s.rstrip("\x00") if isinstance(s, str) else s


def params(d: dict, side: str) -> list:
    dec = d.get("decoded") or {}
    return (dec.get(side) or {}).get("params") or []


def param(d: dict, side: str, name: str):
    for p in params(d, side):
        if p.get("name") == name:
            v = p.get("value")
            return clean(v)
    return None


def objects(d: dict, side: str) -> list[dict]:
    """The decoded WMI objects (classes and instances) a side carries, ObjectArrays flattened."""
    out = []
    for p in params(d, side):
        _collect(p.get("object"), out, 0)
    return out


def _collect(o, out: list, depth: int) -> None:
    if depth > 4 or o is None:
        return
    if not isinstance(o, (dict, list)):
        # a decoded object not yet rendered to JSON (the calls table works on the records directly)
        from wmiscope.dissectors.wmi import object_json
        o = object_json(o)
    if isinstance(o, list):
        for x in o:
            _collect(x, out, depth + 1)
    elif isinstance(o, dict):
        if o.get("kind") in ("instance", "class"):
            out.append(o)
        elif "objects" in o:
            for x in o["objects"]:
                _collect(x.get("object") if isinstance(x, dict) else x, out, depth + 1)


def props(obj: dict | None) -> dict:
    """An instance's properties that carry a value, as name -> value."""
    if not obj or obj.get("kind") != "instance":
        return {}
    out = {}
    for name, p in (obj.get("properties") or {}).items():
        v = p.get("value") if isinstance(p, dict) else p
        if v is not None and v != "" and v != []:
            out[name] = clean(v)
    return out


def hresult(d: dict) -> int | None:
    """The WMI method's HRESULT from the response (None when not decoded)."""
    r = ((d.get("decoded") or {}).get("response") or {})
    v = r.get("return")
    if isinstance(v, dict):
        v = v.get("value")
    if v is None:
        v = r.get("hresult")
    if isinstance(v, int):
        return v & 0xFFFFFFFF
    return None


def hresult_name(d: dict) -> str | None:
    r = ((d.get("decoded") or {}).get("response") or {}).get("return")
    return r.get("name") if isinstance(r, dict) else None


def failed(code: int | None) -> bool:
    return code is not None and code >= 0x80000000


def parse_path(path: str | None) -> dict:
    """An object path: `\\\\HOST\\ns:Class.Key="v"` -> namespace, class, keys text."""
    path = clean(path) or ""
    ns = None
    rest = path
    if path.startswith(("\\\\", "//")) and ":" in path:
        ns, rest = path.split(":", 1)
    m = re.match(r"[\w$]+", rest)
    cls = m.group(0) if m else None
    keys = rest[m.end() + 1:] if m and len(rest) > m.end() and rest[m.end()] == "." else None
    return {"namespace": ns, "class": cls, "keys": keys, "path": path}


def namespace_tail(ns: str | None) -> str | None:
    """`\\\\HOST\\root\\cimv2` or `//./root/cimv2` -> `root\\cimv2` (lower-cased for matching)."""
    if not ns:
        return None
    s = ns.replace("/", "\\")
    if s.startswith("\\\\"):
        parts = s[2:].split("\\", 1)
        s = parts[1] if len(parts) > 1 else ""
    return s.lower()


def namespace_host(ns: str | None) -> str | None:
    if not ns:
        return None
    s = ns.replace("/", "\\")
    if s.startswith("\\\\"):
        host = s[2:].split("\\", 1)[0]
        if host and host != "." and not _is_ip(host):
            return host
    return None


_IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")


def _is_ip(s: str) -> bool:
    return bool(_IPV4.match(s)) or (":" in s and all(c in "0123456789abcdefABCDEF:." for c in s))


def split_endpoint(ep: str) -> tuple[str, int]:
    host, _, port = ep.rpartition(":")
    return host.strip("[]"), int(port)


def decode_powershell(command_line: str | None) -> str | None:
    """The script of `powershell -enc BASE64` (UTF-16LE), or None."""
    if not command_line:
        return None
    m = R.PS_ENCODED.search(command_line)
    if not m or "powershell" not in command_line.lower():
        return None
    try:
        raw = base64.b64decode(m.group(1) + "=" * (-len(m.group(1)) % 4), validate=True)
        return raw.decode("utf-16-le")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


def parse_principal(p: str | None) -> dict | None:
    """`DOMAIN\\user` (NTLM), `service/host@REALM` (Kerberos service), or a bare user."""
    if not p:
        return None
    if "@" in p and "/" in p.split("@", 1)[0]:
        service, realm = p.rsplit("@", 1)
        return {"kind": "kerberos", "service": p, "realm": realm, "name": None, "domain": None,
                "text": f"Kerberos to {p}"}
    if "\\" in p:
        dom, user = p.split("\\", 1)
        return {"kind": "ntlm", "name": user, "domain": dom, "text": p}
    return {"kind": "ntlm", "name": p, "domain": None, "text": p}


# ---------------------------------------------------------------------------------------

class ReportBuilder:
    """Accumulates sessions, hosts and findings over one or more captures."""

    def __init__(self, *, excerpt_renderer=None):
        self.captures: list[dict] = []
        self.hosts: dict[str, dict] = {}
        self.sessions: dict[str, dict] = {}
        self.findings: list[dict] = []
        self._by_op: dict[tuple, dict] = {}
        self._subscriptions: dict[tuple, dict] = {}
        self._logins: dict[tuple, dict] = {}
        self._render = excerpt_renderer     # Call record -> transcript lines
        self._cap = -1
        self._capture_name = None

    # capture-level -------------------------------------------------------------

    def start_capture(self, name: str) -> None:
        self._cap += 1
        self._capture_name = name
        self.captures.append({"name": name, "stats": None, "errors": [], "wmi_calls": 0})

    def end_capture(self, stats: dict) -> None:
        self.captures[-1]["stats"] = stats

    def error(self, err: dict) -> None:
        errs = self.captures[-1]["errors"]
        if len(errs) < 200:
            errs.append(err)

    # per call ------------------------------------------------------------------

    def observe(self, d: dict, call=None) -> None:
        iface = d.get("interface")
        wmi = iface in WMI_INTERFACES
        sess = self._session(d, wmi)
        self._learn_names(d, sess)
        if not wmi:
            return
        self.captures[-1]["wmi_calls"] += 1
        sess["wmi"] = True
        method = d.get("method")
        row = self._session_row(d, sess)
        if d.get("encrypted") and not d.get("decrypted"):
            sess["sealed_calls"].append(_sealed_view(d, sess, call))
            return
        handler = _HANDLERS.get((iface, method))
        made = handler(self, d, sess) if handler else None
        made = made or []
        op = (d.get("operation") or {})
        if op.get("role") in ("call-result", "sink-callback") and op.get("id"):
            target = self._by_op.get((self._cap, op["id"]))
            if target is not None:
                self._follow_up(target, d)
                made.append(target)
        code = hresult(d)
        if (d.get("fault") is not None or failed(code)) and not made:
            made = [self._failure(d, sess, code)]
        for f in made:
            self._attach(f, d, call)
        if made:
            row["findings"] = sorted({f["id"] for f in made})

    def _attach(self, f: dict, d: dict, call) -> None:
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
        f["frames"] = sorted(set(f["frames"]))
        if self._render is not None and call is not None and len(f["excerpt"]) < 400:
            f["excerpt"].extend(self._render(call))

    # sessions and hosts --------------------------------------------------------------

    def _session(self, d: dict, wmi: bool) -> dict:
        sid = f"{self._cap}:{d['conn']}"
        s = self.sessions.get(sid)
        if s is None:
            cip, cport = split_endpoint(d["client"])
            sip, sport = split_endpoint(d["server"])
            s = self.sessions[sid] = {
                "id": sid, "capture": self._capture_name, "conn": d["conn"],
                "client": {"ip": cip, "port": cport}, "server": {"ip": sip, "port": sport},
                "first_epoch": None, "last_epoch": None, "principals": [], "auth": None,
                "login": {}, "calls": [], "call_count": 0, "sealed": 0, "decrypted": 0,
                "methods": Counter(), "operations": {}, "sealed_calls": [], "wmi": False,
            }
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
                                                       "first_frame": _frame(d, "request"), "calls": 0})
            o["calls"] += 1
            o["mode"] = o["mode"] or op.get("mode")
        row = {"req": _frame(d, "request"), "resp": _frame(d, "response"),
               "time": (d.get("request") or d.get("response") or {}).get("epoch"),
               "method": f"{d['interface']}::{d['method']}", "outcome": d.get("outcome"),
               "operation": op.get("id"), "summary": call_summary(d),
               "stub": [(d.get("request") or {}).get("stub_len"), (d.get("response") or {}).get("stub_len")]}
        if len(s["calls"]) < 1000:
            s["calls"].append(row)
        return row

    def add_name(self, ip: str, name: str | None, how: str) -> None:
        if not name or _is_ip(name) or name in (".", "localhost"):
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
            s["login"].setdefault("frames", []).append(_frame(d, "request"))
        elif method == "NTLMLogin":
            ns = param(d, "request", "wszNetworkResource")
            self.add_name(sip, namespace_host(ns), "NTLMLogin NetworkResource")
            s["login"]["namespace"] = ns
            s["login"]["locale"] = param(d, "request", "wszPreferredLocale")
            s["login"].setdefault("frames", []).append(_frame(d, "request"))
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
            "principal": parse_principal(auth.get("principal")),
            "namespace": op.get("namespace") or s["login"].get("namespace"),
            "client_machine": s["login"].get("client_machine"),
            "client_pid": s["login"].get("client_pid"),
            "wmi": {}, "command_line": None, "decoded_command": None, "tool": None,
            "frames": [], "operation": op.get("id"), "session": s["id"], "capture": self._capture_name,
            "basis": basis, "confidence": confidence, "reasons": list(reasons or ()),
            "outcome": "unknown", "severity": severity, "excerpt": [], "_calls": [],
        }
        if basis == "observed":
            what = "decrypted with the analyst's credentials" if d.get("decrypted") else "decoded from clear stubs"
            f["reasons"].insert(0, what)
        self.findings.append(f)
        if op.get("id") and op.get("role") == "origin":
            self._by_op[(self._cap, op["id"])] = f
        return f

    def _follow_up(self, f: dict, d: dict) -> None:
        """A semisynchronous result or async callback completes its operation's finding."""
        for o in objects(d, "response") + objects(d, "request"):
            if o.get("class") == "__PARAMETERS":
                _set_out(f, props(o))
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
        for s in self.sessions.values():
            if s["sealed_calls"]:
                sealed.infer(self, s)
        user_of = {}
        for s in self.sessions.values():
            for p in s["principals"]:
                pr = parse_principal(p)
                if pr and pr["kind"] == "ntlm":
                    user_of[s["id"]] = pr
        for f in self.findings:
            pr = f["principal"]
            if (pr is None or pr["kind"] == "kerberos") and f["session"] in user_of:
                user = dict(user_of[f["session"]])
                if pr is not None:
                    user["service"] = pr["service"]
                    user["realm"] = pr.get("realm")
                    f["reasons"].append(f"principal: {user['text']} authenticated (NTLM) the later calls of this "
                                        f"connection; these calls used Kerberos to {pr['service']}")
                f["principal"] = user
            f["source"]["names"] = [n["name"] for n in self.hosts.get(f["source"]["ip"], {}).get("names", [])]
            f["destination"]["names"] = [n["name"] for n in
                                         self.hosts.get(f["destination"]["ip"], {}).get("names", [])]
        self._merge_duplicates()
        self.findings.sort(key=lambda f: (f["first_epoch"] or 0, f["frames"][:1]))
        for i, f in enumerate(self.findings, 1):
            f["id"] = f"F{i:03d}"
            f.pop("_calls", None)
            f["summary"] = summary(f)
        return self.report()

    def _merge_duplicates(self) -> None:
        """The same finding in two captures (both sides of a connection, overlapping rolling
        files, a file given twice) is one finding seen twice: the later copies become
        `wmi.also_seen` entries (capture and frames) of the first."""
        kept: dict[tuple, dict] = {}
        out = []
        for f in sorted(self.findings, key=lambda f: f["first_epoch"] or 0):
            key = (f["rule"], f["title"], f["basis"], f["source"]["ip"], f["source"]["port"],
                   f["destination"]["ip"], f["destination"]["port"])
            first = kept.get(key)
            if (first is not None and first["capture"] != f["capture"] and f["first_epoch"] is not None
                    and abs(f["first_epoch"] - first["first_epoch"]) <= DUPLICATE_WINDOW):
                first["wmi"].setdefault("also_seen", []).append({"capture": f["capture"], "frames": f["frames"],
                                                                 "session": f["session"]})
                first["last_epoch"] = max(first["last_epoch"] or 0, f["last_epoch"] or 0) or None
                continue
            kept.setdefault(key, f)
            out.append(f)
        self.findings = out

    def report(self) -> dict:
        from .output import report_dict
        return report_dict(self)


# ---------------------------------------------------------------------------------------
# rule handlers: (interface, method) -> handler(builder, call dict, session) -> [findings]

def _frame(d: dict, side: str):
    h = d.get(side)
    return h["frames"][1] if h else None


def _set_out(f: dict, out: dict) -> None:
    if not out:
        return
    f["wmi"]["out"] = _previews(out)
    rv = out.get("ReturnValue")
    if isinstance(rv, int):
        f["wmi"]["return_value"] = rv
        cls = (f["wmi"].get("class") or "").lower()
        table = (R.PROCESS_CREATE_RETURN if cls == "win32_process" else R.SERVICE_RETURN if "service" in cls
                 else R.REGISTRY_RETURN if cls == "stdregprov" else {})
        if rv in table:
            f["wmi"]["return_text"] = table[rv]
        f["outcome"] = "success" if rv == 0 else "failure"
    if "ProcessId" in out:
        f["wmi"]["process_id"] = out["ProcessId"]


def _login(b: ReportBuilder, d: dict, s: dict):
    ns = param(d, "request", "wszNetworkResource")
    pr = (d.get("auth") or {}).get("principal")
    key = (b._cap, s["client"]["ip"], s["server"]["ip"], namespace_tail(ns), pr)
    f = b._logins.get(key)
    code = hresult(d)
    if f is None:
        f = b.new_finding(d, s, "namespace-login", ["T1047"], f"WMI login to {ns}", severity="low")
        f["namespace"] = ns
        f["wmi"].update({"class": None, "method": "NTLMLogin", "namespace": ns, "logins": 0,
                         "locale": param(d, "request", "wszPreferredLocale")})
        b._logins[key] = f
    f["wmi"]["logins"] += 1
    if f["wmi"]["logins"] > 1:
        f["title"] = f"WMI login to {ns} (x{f['wmi']['logins']})"
    if failed(code) or d.get("fault") is not None:
        f["outcome"] = "failure"
        f["wmi"]["error"] = f"HRESULT 0x{code:08x}" if code is not None else f"fault 0x{d['fault']:08x}"
        f["title"] = f"WMI login to {ns} refused ({f['wmi']['error']})"
        f["severity"] = "medium"
    elif f["outcome"] != "failure":
        f["outcome"] = "success"
    return [f]


def _exec_method(b: ReportBuilder, d: dict, s: dict):
    path = parse_path(param(d, "request", "strObjectPath"))
    method = param(d, "request", "strMethodName") or ""
    cls = path["class"] or ""
    ins = {}
    for o in objects(d, "request"):
        if o.get("class") == "__PARAMETERS":
            ins = props(o)
    lc, lm = cls.lower(), method.lower()
    wmi = {"class": cls, "method": method, "object_path": path["path"], "in": _previews(ins)}
    if lc == "win32_process" and lm == "create":
        cmd = ins.get("CommandLine")
        f = b.new_finding(d, s, "process-create", ["T1047"], f"Remote process creation: {cmd}",
                          severity="high")
        f["command_line"] = cmd
        f["wmi"].update(wmi)
        _tools(f, cmd, d, method, b)
        f["decoded_command"] = decode_powershell(cmd)
        if f["decoded_command"]:
            f["techniques"].append(R.technique("T1059.001"))
            f["reasons"].append("the -enc argument decodes (Base64, UTF-16LE) to a PowerShell script")
    elif lc in ("win32_service", "win32_terminalservice", "win32_baseservice", "win32_systemdriver") or \
            lc.endswith("service"):
        tid = {"create": "T1543.003", "change": "T1543.003", "startservice": "T1569.002",
               "stopservice": "T1489", "delete": "T1489"}.get(lm, "T1047")
        verb = {"create": "created", "change": "modified", "startservice": "started",
                "stopservice": "stopped", "delete": "deleted"}.get(lm, f"{method} called")
        name = ins.get("Name") or _key_value(path["keys"], "Name")
        f = b.new_finding(d, s, f"service-{lm}", [tid], f"Service {name!s} {verb} through WMI "
                          f"({cls}.{method})", severity="high")
        f["wmi"].update(wmi)
        f["wmi"]["service"] = {k: v for k, v in (("name", name), ("display_name", ins.get("DisplayName")),
                                                  ("path", ins.get("PathName")),
                                                  ("start_mode", ins.get("StartMode")),
                                                  ("start_name", ins.get("StartName"))) if v is not None}
        if ins.get("PathName"):
            f["command_line"] = ins["PathName"]
        for tool, args, why in R.SERVICE_TOOLS:
            if lm == "create" and all(ins.get(k) == v for k, v in args.items()):
                f["tool"] = {"name": tool, "evidence": why}
                f["reasons"].append(f"the arguments match {tool}: {why}")
    elif lc == "stdregprov":
        f = _registry(b, d, s, method, ins, wmi)
    elif lc == "win32_shadowcopy" and lm == "create":
        f = b.new_finding(d, s, "shadow-copy-create", ["T1003.003"],
                          f"Shadow copy created of {ins.get('Volume')}", severity="high")
        f["wmi"].update(wmi)
        f["reasons"].append("a volume shadow copy is how NTDS.dit and SAM are copied while locked")
    else:
        f = b.new_finding(d, s, "method-exec", ["T1047"], f"WMI method executed: {cls}.{method}"
                          + (f" on {path['keys']}" if path["keys"] else ""), severity="medium")
        f["wmi"].update(wmi)
    for o in objects(d, "response"):
        if o.get("class") == "__PARAMETERS":
            _set_out(f, props(o))
    code = hresult(d)
    if failed(code) or d.get("fault") is not None:
        f["outcome"] = "failure"
        f["wmi"]["hresult"] = f"0x{code:08x}" if code is not None else None
    return [f]


def _key_value(keys: str | None, name: str):
    if not keys:
        return None
    m = re.search(rf'{name}\s*=\s*"?([^",]*)"?', keys, re.I)
    return m.group(1) if m else None


def _tools(f: dict, cmd: str | None, d: dict, method: str, b: ReportBuilder) -> None:
    for name, pat, why in R.TOOL_PATTERNS:
        if cmd and pat.search(cmd):
            f["tool"] = {"name": name, "evidence": why}
            f["title"] = f"Remote process creation ({name}): {cmd}"
            f["reasons"].append(f"command line matches the {name} pattern: {why}")
            return
    if method == R.INVOKE_WMIEXEC_METHOD:
        f["tool"] = {"name": R.INVOKE_WMIEXEC[0], "evidence": R.INVOKE_WMIEXEC[1]}
        f["title"] = f"Remote process creation ({R.INVOKE_WMIEXEC[0]}): {cmd}"
        f["reasons"].append(R.INVOKE_WMIEXEC[1])


def _registry(b: ReportBuilder, d: dict, s: dict, method: str, ins: dict, wmi: dict) -> dict:
    hive = R.REGISTRY_HIVES.get(ins.get("hDefKey"), ins.get("hDefKey"))
    key = ins.get("sSubKeyName")
    value = ins.get("sValueName")
    where = f"{hive}\\{key}" + (f" [{value}]" if value else "")
    if R.REGISTRY_WRITE.match(method) or R.REGISTRY_DELETE.match(method):
        verb = "deleted" if R.REGISTRY_DELETE.match(method) else "written"
        f = b.new_finding(d, s, "registry-write", ["T1112"], f"Registry {verb} through StdRegProv.{method}: "
                          f"{where}", severity="high" if verb == "written" else "medium")
    else:
        f = b.new_finding(d, s, "registry-read", ["T1012"], f"Registry read through StdRegProv.{method}: "
                          f"{where}", severity="medium")
    f["wmi"].update(wmi)
    f["registry"] = {"hive": hive, "key": key, "value": value, "path": f"{hive}\\{key}" + (f"\\{value}" if value
                                                                                            else "")}
    data = next((ins[k] for k in ("sValue", "uValue", "uValues", "sValues") if k in ins), None)
    outs = {}
    for o in objects(d, "response"):
        if o.get("class") == "__PARAMETERS":
            outs = props(o)
    read = next((outs[k] for k in ("sValue", "uValue", "sValues", "uValues") if k in outs), None)
    size = len(str(data if data is not None else read or ""))
    if data is not None:
        f["registry"]["data"] = _preview(data)
    if read is not None:
        f["registry"]["data_read"] = _preview(read)
    f["registry"]["data_size"] = size
    if size >= R.DATA_CHANNEL_BYTES:
        f["techniques"].append(R.technique("T1041" if read is not None else "T1074.001"))
        f["reasons"].append(f"{size} characters of value data moved through WMI: the registry used as a "
                            "data channel (as WMImplant does to carry files)")
        f["title"] += f" ({size} characters: data channel)"
        f["severity"] = "high"
    return f


def _preview(v, n: int = 300):
    s = v if isinstance(v, str) else str(v)
    return s if len(s) <= n else s[:n] + f"... ({len(s)} characters)"


def _put_instance(b: ReportBuilder, d: dict, s: dict):
    objs = [o for o in objects(d, "request") if o.get("kind") == "instance"]
    if not objs:
        return []
    o = objs[0]
    cls = o.get("class") or ""
    p = props(o)
    role = R.SUBSCRIPTION_CLASSES.get(cls.lower())
    if role:
        return [_subscription(b, d, s, cls, role, p)]
    if cls.lower() == "win32_environment":
        val = p.get("VariableValue") or ""
        f = b.new_finding(d, s, "environment-staging", ["T1074.001"],
                          f"Environment variable {p.get('Name')} written through WMI ({len(str(val))} characters)",
                          severity="high" if len(str(val)) >= 256 else "medium")
        f["wmi"].update({"class": cls, "method": d["method"], "properties": _previews(p)})
        f["reasons"].append("Win32_Environment variables written remotely are a WMImplant-style staging area "
                            "for scripts and data")
        if re.search(r"\$\w+\s*=|Get-Content|New-ItemProperty|IEX|Invoke-", str(val), re.I):
            f["techniques"].append(R.technique("T1059.001"))
            f["reasons"].append("the value is PowerShell code")
            f["decoded_command"] = str(val)
        return [f]
    f = b.new_finding(d, s, "instance-write", ["T1047"], f"WMI instance written: {cls}"
                      + (f" ({_keys_text(p)})" if p else ""), severity="low")
    f["wmi"].update({"class": cls, "method": d["method"], "properties": _previews(p)})
    return [f]


# the values an analyst looks for first, then the rest in their order
_KEY_ORDER = ("Name", "PathName", "CommandLine", "hDefKey", "sSubKeyName", "sValueName", "Query", "Filter",
              "Consumer", "StartMode", "StartName")


def _keys_text(p: dict) -> str:
    order = sorted((k for k in p if not isinstance(p[k], list)), key=lambda k: _KEY_ORDER.index(k) if k in _KEY_ORDER else len(_KEY_ORDER))
    return ", ".join(f"{k}={R.REGISTRY_HIVES.get(p[k], p[k]) if k == 'hDefKey' else p[k]}" for k in order[:4])


def _previews(p: dict) -> dict:
    return {k: (_preview(v) if isinstance(v, str) else v) for k, v in p.items() if not isinstance(v, list)
            or len(v) < 64}


def _subscription(b: ReportBuilder, d: dict, s: dict, cls: str, role: str, p: dict) -> dict:
    key = (b._cap, s["client"]["ip"], s["server"]["ip"])
    f = b._subscriptions.get(key)
    if f is None:
        f = b.new_finding(d, s, "event-subscription", ["T1546.003"], "WMI event subscription planted",
                          severity="high")
        f["wmi"].update({"method": d["method"], "subscription": {"filters": [], "consumers": [], "bindings": [],
                                                                 "timers": []}})
        f["reasons"].append("__EventFilter / event consumer / __FilterToConsumerBinding instances put in "
                            "root\\subscription run the consumer whenever the filter's query fires")
        b._subscriptions[key] = f
    sub = f["wmi"]["subscription"]
    if role == "filter":
        sub["filters"].append({"name": p.get("Name"), "query": p.get("Query"),
                               "event_namespace": p.get("EventNamespace")})
        f["wmi"]["query"] = p.get("Query")
    elif role == "consumer":
        c = {"class": cls, "name": p.get("Name")}
        for k in ("CommandLineTemplate", "ExecutablePath", "ScriptText", "ScriptFileName", "ScriptingEngine"):
            if p.get(k):
                c[k] = _preview(p[k], 2000)
        sub["consumers"].append(c)
        f["command_line"] = p.get("CommandLineTemplate") or p.get("ExecutablePath") or f["command_line"]
        if p.get("ScriptText"):
            f["decoded_command"] = p["ScriptText"]
    elif role == "timer":
        sub["timers"].append({"class": cls, "timer_id": p.get("TimerId"),
                              "interval_ms": p.get("IntervalBetweenEvents"), "event_time": p.get("EventDateTime")})
    else:
        sub["bindings"].append({"filter": p.get("Filter"), "consumer": p.get("Consumer")})
    _subscription_tool(f, sub)
    names = [x["name"] for x in sub["filters"]] + [x["name"] for x in sub["consumers"]]
    f["title"] = ("WMI event subscription persistence: " + " -> ".join(str(n) for n in names)
                  + (f" runs {f['command_line']}" if f["command_line"] else "")
                  + ("" if sub["bindings"] else " (no binding seen)"))
    f["wmi"]["class"] = ", ".join(sorted({cls} | set((f["wmi"].get("class") or "").split(", ")) - {""}))
    return f


def _subscription_tool(f: dict, sub: dict) -> None:
    if f["tool"]:
        return
    names = [x.get("name") for x in sub["filters"] + sub["consumers"]] + [x.get("timer_id") for x in sub["timers"]]
    consumers = {x.get("name") for x in sub["consumers"]}
    for tool, pat, why in R.SUBSCRIPTION_TOOLS:
        hits = [n for n in names if isinstance(n, str) and pat.match(n)]
        if tool == "impacket wmipersist":       # EF_/TI_ prefixes alone are common: the consumer must match
            hits = [n for n in hits if n[3:] in consumers]
        if hits:
            f["tool"] = {"name": tool, "evidence": why}
            f["reasons"].append(f"{', '.join(hits)}: {why}")
            return


def _delete_instance(b: ReportBuilder, d: dict, s: dict):
    path = parse_path(param(d, "request", "strObjectPath"))
    cls = (path["class"] or "")
    lc = cls.lower()
    if lc == "win32_shadowcopy":
        f = b.new_finding(d, s, "shadow-copy-delete", ["T1490"], f"Shadow copy deleted: {path['path']}",
                          severity="high")
    elif lc == "win32_environment" or lc in R.SUBSCRIPTION_CLASSES:
        f = b.new_finding(d, s, "cleanup", ["T1070"], f"WMI artefact removed: {path['path']}", severity="medium")
        f["reasons"].append("deleting the staging variable or subscription after use removes the evidence")
    else:
        f = b.new_finding(d, s, "instance-delete", ["T1047"], f"WMI instance deleted: {path['path']}",
                          severity="low")
    f["wmi"].update({"class": cls, "method": d["method"], "object_path": path["path"]})
    return [f]


def _query(b: ReportBuilder, d: dict, s: dict):
    q = param(d, "request", "strQuery")
    if not q:
        return []
    out = []
    for cls in query_classes_unique(q):
        if cls.lower() == "win32_environment" and re.search(r"\bname\s*=", q, re.I):
            # one named variable, not a survey: WMImplant reading back what it staged
            f = b.new_finding(d, s, "environment-staging", ["T1074.001"], f"Staged environment variable read "
                              f"back: {q}", severity="medium")
            f["wmi"].update({"class": cls, "method": d["method"], "query": q})
            return [f]
        hit = R.recon_technique(cls)
        if hit is None:
            continue
        tid, what = hit
        f = b.new_finding(d, s, "recon-query", [tid], f"Reconnaissance of {what}: {q}", severity="low")
        f["wmi"].update({"class": cls, "method": d["method"], "query": q})
        out.append(f)
        break
    return out


def query_classes_unique(q: str) -> list[str]:
    seen = []
    for c in R.query_classes(q):
        if c not in seen:
            seen.append(c)
    return seen


def _enum(b: ReportBuilder, d: dict, s: dict):
    cls = param(d, "request", "strFilter") or param(d, "request", "strSuperclass")
    hit = R.recon_technique(cls or "")
    if not hit:
        return []
    tid, what = hit
    f = b.new_finding(d, s, "recon-query", [tid], f"Reconnaissance of {what}: {d['method']} {cls}",
                      severity="low")
    f["wmi"].update({"class": cls, "method": d["method"]})
    return [f]


_HANDLERS = {
    ("IWbemLevel1Login", "NTLMLogin"): _login,
    ("IWbemServices", "ExecMethod"): _exec_method,
    ("IWbemServices", "ExecMethodAsync"): _exec_method,
    ("IWbemServices", "PutInstance"): _put_instance,
    ("IWbemServices", "PutInstanceAsync"): _put_instance,
    ("IWbemServices", "DeleteInstance"): _delete_instance,
    ("IWbemServices", "DeleteInstanceAsync"): _delete_instance,
    ("IWbemServices", "ExecQuery"): _query,
    ("IWbemServices", "ExecQueryAsync"): _query,
    ("IWbemServices", "CreateInstanceEnum"): _enum,
    ("IWbemServices", "CreateInstanceEnumAsync"): _enum,
}


def _sealed_view(d: dict, s: dict, call) -> dict:
    """What a sealed call still shows: the method (from the IPID), sizes, timing."""
    op = d.get("operation") or {}
    return {"d": d, "call": call, "method": d.get("method"), "interface": d.get("interface"),
            "req_len": (d.get("request") or {}).get("stub_len"),
            "resp_len": (d.get("response") or {}).get("stub_len"),
            "time": (d.get("request") or {}).get("epoch"),
            "namespace": op.get("namespace") or s["login"].get("namespace"), "operation": op.get("id")}


# ---------------------------------------------------------------------------------------
# one-line summaries (the findings' and the calls table's)

def call_summary(d: dict) -> str:
    """What an analyst needs of a call in one line: class and method, query, object path,
    namespace of a login, command line."""
    if d.get("encrypted") and not d.get("decrypted"):
        return ""
    m = d.get("method")
    if m in ("SetClientInfo", "SetClientInfoEx"):
        return f"{param(d, 'request', 'wszClientMachine')} pid {param(d, 'request', 'lClientProcId')}"
    if m in ("NTLMLogin", "OpenNamespace"):
        return str(param(d, "request", "wszNetworkResource") or param(d, "request", "strNamespace") or "")
    q = param(d, "request", "strQuery")
    if q:
        return q
    path = param(d, "request", "strObjectPath")
    meth = param(d, "request", "strMethodName")
    parts = []
    if path or meth:
        parts.append(f"{path or ''}{'.' + meth if meth else ''}" if meth else path)
    for o in objects(d, "request"):
        p = props(o)
        if o.get("class") == "__PARAMETERS":
            cmd = p.get("CommandLine")
            if cmd:
                parts.append(cmd)
            elif p:
                parts.append(_keys_text(p))
        else:
            parts.append(f"{o.get('class')} {_keys_text(p)}".strip())
        break
    flt = param(d, "request", "strFilter") or param(d, "request", "strSuperclass")
    if flt:
        parts.append(flt)
    rs = param(d, "response", "pstrResultString")
    if rs:
        parts.append(f"-> {rs}")
    code = hresult(d)
    if failed(code):
        parts.append(f"!{hresult_name(d) or f'0x{code:08x}'}")
    return " ".join(str(x) for x in parts if x)[:300]


def summary(f: dict) -> str:
    src = _host_text(f["source"])
    dst = _host_text(f["destination"])
    who = (f["principal"] or {}).get("text") or "unknown principal"
    return f"{src} -> {dst} as {who}: {f['title']}"


def _host_text(h: dict) -> str:
    names = h.get("names") or []
    return f"{h['ip']} ({', '.join(names)})" if names else h["ip"]
