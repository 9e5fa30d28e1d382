"""The rules applied to clear (or decrypted) calls: one handler per WMI method that can
make a finding, (interface, method) -> handler(builder, call dict, session) -> findings.
What they look for (techniques, classes, tool patterns) is data in rules.py."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from . import rules as R
from .values import (decode_powershell, failed, hresult, keys_text, namespace_tail, objects, param,
                     parse_path, preview, previews, props)

if TYPE_CHECKING:
    from .findings import ReportBuilder


def set_out(f: dict, out: dict) -> None:
    """A method's out-parameters on its finding (from the reply, a semisynchronous
    GetResultObject or an async Indicate): the ReturnValue spelled out, the outcome, the
    created ProcessId."""
    if not out:
        return
    f["wmi"]["out"] = previews(out)
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
    n = b._logins.get(key)
    f = None if n is None else b.finding(n)
    code = hresult(d)
    if f is None:
        f = b.new_finding(d, s, "namespace-login", ["T1047"], f"WMI login to {ns}", severity="low")
        f["namespace"] = ns
        f["wmi"].update({"class": None, "method": "NTLMLogin", "namespace": ns, "logins": 0,
                         "locale": param(d, "request", "wszPreferredLocale")})
        b._logins[key] = f["_n"]
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
    wmi = {"class": cls, "method": method, "object_path": path["path"], "in": previews(ins)}
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
            set_out(f, props(o))
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
        f["registry"]["data"] = preview(data)
    if read is not None:
        f["registry"]["data_read"] = preview(read)
    f["registry"]["data_size"] = size
    if size >= R.DATA_CHANNEL_BYTES:
        f["techniques"].append(R.technique("T1041" if read is not None else "T1074.001"))
        f["reasons"].append(f"{size} characters of value data moved through WMI: the registry used as a "
                            "data channel (as WMImplant does to carry files)")
        f["title"] += f" ({size} characters: data channel)"
        f["severity"] = "high"
    return f


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
        f["wmi"].update({"class": cls, "method": d["method"], "properties": previews(p)})
        f["reasons"].append("Win32_Environment variables written remotely are a WMImplant-style staging area "
                            "for scripts and data")
        if re.search(r"\$\w+\s*=|Get-Content|New-ItemProperty|IEX|Invoke-", str(val), re.I):
            f["techniques"].append(R.technique("T1059.001"))
            f["reasons"].append("the value is PowerShell code")
            f["decoded_command"] = str(val)
        return [f]
    f = b.new_finding(d, s, "instance-write", ["T1047"], f"WMI instance written: {cls}"
                      + (f" ({keys_text(p)})" if p else ""), severity="low")
    f["wmi"].update({"class": cls, "method": d["method"], "properties": previews(p)})
    return [f]


# the values an analyst looks for first, then the rest in their order
def _subscription(b: ReportBuilder, d: dict, s: dict, cls: str, role: str, p: dict) -> dict:
    key = (b._cap, s["client"]["ip"], s["server"]["ip"])
    n = b._subscriptions.get(key)
    f = None if n is None else b.finding(n)
    if f is None:
        f = b.new_finding(d, s, "event-subscription", ["T1546.003"], "WMI event subscription planted",
                          severity="high")
        f["wmi"].update({"method": d["method"], "subscription": {"filters": [], "consumers": [], "bindings": [],
                                                                 "timers": []}})
        f["reasons"].append("__EventFilter / event consumer / __FilterToConsumerBinding instances put in "
                            "root\\subscription run the consumer whenever the filter's query fires")
        b._subscriptions[key] = f["_n"]
    sub = f["wmi"]["subscription"]
    if role == "filter":
        sub["filters"].append({"name": p.get("Name"), "query": p.get("Query"),
                               "event_namespace": p.get("EventNamespace")})
        f["wmi"]["query"] = p.get("Query")
    elif role == "consumer":
        c = {"class": cls, "name": p.get("Name")}
        for k in ("CommandLineTemplate", "ExecutablePath", "ScriptText", "ScriptFileName", "ScriptingEngine"):
            if p.get(k):
                c[k] = preview(p[k], 2000)
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


HANDLERS = {
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
