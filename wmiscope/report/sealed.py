"""What sealed WMI traffic still says without its keys.

At packet privacy the stubs are encrypted, but the DCE/RPC headers are not: the IPID
(so the interface, learned from an OBJREF seen earlier in clear), the opnum (so the
method), the stub lengths and the times. The login that precedes the sealing is often
in clear (namespace, client machine and process id, principal). From these the report
infers, labelled `inferred` with a confidence and its reasons:

- GetObject whose reply is class-sized, then ExecMethod, on a root\\cimv2 connection:
  a remote method execution; Win32_Process.Create-shaped when the sizes match that
  class (about 20 KB) and its out-parameters (ProcessId and ReturnValue, about 1.2 KB);
- PutInstance on a root\\subscription connection: event-subscription persistence,
  surer with three (filter, consumer, binding);
- a sealed NTLMLogin: a login whose namespace cannot be read;
- ExecQuery, ExecQueryAsync or CreateInstanceEnum(Async): a query whose class cannot be
  read, likely reconnaissance or collection (low confidence: most WMI clients query),
  surer when the enumerator's Next replies (linked by the operation) carry objects.

Every sealed connection is listed with its principal and the key that would open it.
"""

from __future__ import annotations

from typing import Iterator

from .values import namespace_tail, parse_principal

# A class definition: thousands of bytes; an error reply or a small instance: hundreds.
CLASS_SIZED = 1000
# Win32_Process as Windows sends it without amended qualifiers (20648-20664 bytes seen).
WIN32_PROCESS_CLASS = (19000, 24000)
# ExecMethod reply with Win32_Process.Create's out-parameters (ProcessId, ReturnValue): 1160 bytes seen.
CREATE_REPLY = (1100, 1250)
# Methods that start a query or an enumeration of instances (MS-WMI 3.1.4.3).
QUERIES = ("ExecQuery", "ExecQueryAsync", "CreateInstanceEnum", "CreateInstanceEnumAsync")
# An enumerator's Next reply with no object (WBEM_S_FALSE, empty array) is tens of bytes; one
# that carries instances, hundreds or thousands.
OBJECTS_REPLY = 100


def infer(b, s: dict) -> None:
    calls = s["sealed_calls"]
    ns_clear = s["login"].get("namespace")
    last_getobject = None
    puts: list[dict] = []
    queries: dict[str, dict] = {}
    for c in calls:
        m = c["method"]
        if m in QUERIES:
            queries[c["operation"] or id(c)] = {"call": c, "more": []}
            continue
        if c["operation"] in queries:      # the query's enumerator or sink: Next replies and their sizes
            queries[c["operation"]]["more"].append(c)
            continue
        if m == "NTLMLogin":
            f = b.new_finding(c["d"], s, "namespace-login", ["T1047"], "WMI login (namespace sealed)",
                              basis="inferred", confidence=0.9, severity="low",
                              reasons=["IWbemLevel1Login::NTLMLogin named by its interface and opnum 6; "
                                       "its parameters are sealed"])
            f["outcome"] = "unknown"
            b._attach(f, c["d"], None, c["lines"])
        elif m == "GetObject":
            last_getobject = c
        elif m in ("ExecMethod", "ExecMethodAsync"):
            _method_execution(b, s, c, last_getobject, ns_clear)
            last_getobject = None
        elif m in ("PutInstance", "PutInstanceAsync"):
            puts.append(c)
    if puts:
        _subscription(b, s, puts)
    for q in queries.values():
        _query(b, s, q["call"], q["more"], ns_clear)


def _query(b, s: dict, c: dict, more: list[dict], ns_clear) -> None:
    ns = c["namespace"] or ns_clear
    confidence = 0.3
    reasons = [f"IWbemServices::{c['method']} named from the IPID and opnum in the clear DCE/RPC header; the "
               "query and its class are sealed", "which class was read cannot be known: most WMI clients "
               "query, so this is a low-confidence lead, not a verdict"]
    if namespace_tail(ns) == "root\\cimv2":
        confidence += 0.1
        reasons.append(f"on {ns} (logged in to in clear), where the processes, services, users and security "
                       "products are")
    nexts = [x for x in more if x["method"] in ("Next", "NextAsync")]
    sizes = [x["resp_len"] for x in nexts if x["resp_len"] is not None]
    carried = sum(n for n in sizes if n >= OBJECTS_REPLY)
    if carried:
        confidence += 0.1
        reasons.append(f"{len(nexts)} enumerator Next call(s) of this operation, replies of "
                       f"{'/'.join(map(str, sizes))} bytes: about {carried} bytes of instances came back")
    elif nexts:
        reasons.append(f"{len(nexts)} enumerator Next call(s) of this operation, replies too small to carry "
                       "instances")
    title = (f"Likely WMI reconnaissance or collection (sealed {c['method']} on {ns or 'a sealed namespace'}"
             f"{f', {carried} bytes returned' if carried else ''})")
    f = b.new_finding(c["d"], s, "sealed-query", ["T1047"], title, basis="inferred",
                      confidence=round(confidence, 2), reasons=reasons, severity="low")
    f["namespace"] = ns
    f["wmi"].update({"method": c["method"], "request_stub": c["req_len"], "reply_stub": c["resp_len"],
                     "result_bytes": carried, "next_replies": sizes})
    b._attach(f, c["d"], None, c["lines"])
    for x in nexts:
        b._attach(f, x["d"], None, x["lines"])


def _method_execution(b, s: dict, c: dict, getobject: dict | None, ns_clear) -> None:
    ns = c["namespace"] or ns_clear
    tail = namespace_tail(ns)
    confidence = 0.5
    reasons = [f"IWbemServices::{c['method']} named from the IPID and opnum 24 in the clear DCE/RPC header; "
               "class, method and arguments are sealed"]
    if tail == "root\\cimv2":
        confidence += 0.1
        reasons.append(f"the connection logged in to {ns} in clear")
    elif ns is None:
        reasons.append("the namespace is not known (the login was sealed too)")
    class_hint = reply_hint = False
    if getobject is not None and (getobject["resp_len"] or 0) >= CLASS_SIZED:
        confidence += 0.1
        reasons.append(f"preceded by GetObject with a class-sized reply ({getobject['resp_len']} bytes): the "
                       "class definition a client fetches before building in-parameters")
        lo, hi = WIN32_PROCESS_CLASS
        class_hint = lo <= getobject["resp_len"] <= hi
        if class_hint:
            confidence += 0.1
            reasons.append(f"{getobject['resp_len']} bytes is about the size of the Win32_Process class "
                           "(20648-20664 bytes in clear captures)")
    lo, hi = CREATE_REPLY
    if c["resp_len"] is not None and lo <= c["resp_len"] <= hi:
        confidence += 0.1
        reply_hint = True
        reasons.append(f"the {c['resp_len']}-byte reply matches Win32_Process.Create's out-parameters "
                       "(ProcessId, ReturnValue: 1160 bytes in clear captures)")
    elif class_hint and c["resp_len"] is not None:
        reasons.append(f"but the {c['resp_len']}-byte reply is not the size of Create's out-parameters (1160 "
                       "bytes): another Win32_Process method, or out-parameters of another shape")
    shape = "Win32_Process.Create" if reply_hint else "Win32_Process method" if class_hint else None
    hint = {"Win32_Process.Create": " (Win32_Process.Create-shaped)",
            "Win32_Process method": " (a Win32_Process method, by the class size)"}.get(shape, "")
    title = f"Likely remote method execution{hint} on {ns or 'a sealed namespace'}"
    f = b.new_finding(c["d"], s, "sealed-method-exec", ["T1047"], title, basis="inferred",
                      confidence=round(min(confidence, 0.9), 2), reasons=reasons,
                      severity="high" if reply_hint else "medium")
    f["namespace"] = ns
    f["wmi"].update({"method": c["method"], "shape": shape, "request_stub": c["req_len"],
                     "reply_stub": c["resp_len"]})
    if getobject is not None:
        b._attach(f, getobject["d"], None, getobject["lines"])
        f["wmi"]["getobject_reply_stub"] = getobject["resp_len"]
    b._attach(f, c["d"], None, c["lines"])


def _subscription(b, s: dict, puts: list[dict]) -> None:
    ns = puts[0]["namespace"] or s["login"].get("namespace")
    if namespace_tail(ns) != "root\\subscription":
        return
    n = len(puts)
    confidence = min(0.5 + 0.1 * n, 0.8)
    reasons = [f"{n} sealed IWbemServices::PutInstance call(s) on a connection logged in to {ns}",
               "a filter, a consumer and their binding are three instances put in root\\subscription"]
    f = b.new_finding(puts[0]["d"], s, "sealed-event-subscription", ["T1546.003"],
                      f"Likely WMI event subscription persistence ({n} sealed PutInstance on {ns})",
                      basis="inferred", confidence=round(confidence, 2), reasons=reasons, severity="high")
    f["namespace"] = ns
    for c in puts:
        b._attach(f, c["d"], None, c["lines"])


def key_needed(principal: str | None) -> str:
    """Which of the analyst's secrets would open a connection sealed under this principal."""
    pr = parse_principal(principal)
    if pr is None:
        return "unknown: the authentication was not seen (give the user's password or NT hash, or the " \
               "service's keytab)"
    if pr["kind"] == "kerberos":
        return f"the long-term key of the service {pr['service']} (--keytab, or --credentials 'key ...')"
    who = f"{pr['domain']}\\{pr['name']}" if pr["domain"] else pr["name"]
    return f"the password or NT hash of {who} (--user '{who}' --password / --nt-hash)"


def sealed_connections(b) -> Iterator[dict]:
    """The sealed connections in the sessions' order, read one at a time."""
    for s in b.sessions.values():
        if not s["sealed"]:
            continue
        pr = _best_principal(s["principals"])
        seq = [f"{c['method']} ({c['req_len']}/{c['resp_len']} bytes)" for c in s["sealed_calls"]]
        yield {
            "session": s["id"], "capture": s["capture"], "client": s["client"], "server": s["server"],
            "principal": pr, "principals": s["principals"], "auth": s["auth"],
            "kerberos_client": s.get("kerberos_client"),    # named by the ticket once a keytab opened it
            "login": {k: v for k, v in s["login"].items() if k != "frames"},
            "sealed_calls": s["sealed"], "decrypted_calls": s["decrypted"],
            "opened": s["decrypted"] > 0 and not s["sealed_calls"],
            "sequence": seq, "key": key_needed(pr),
        }


def _best_principal(principals: list[str]) -> str | None:
    """The user (NTLM) rather than the service (Kerberos) when both were seen."""
    for p in reversed(principals):
        pr = parse_principal(p)
        if pr and pr["kind"] == "ntlm":
            return p
    return principals[-1] if principals else None
