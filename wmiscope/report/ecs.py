"""Findings as Elastic Common Schema documents (one JSON line each).

ECS field names where ECS has them (`@timestamp`, `event.*`, `source.*`,
`destination.*`, `user.*`, `process.*`, `registry.*`, `threat.*`, `related.*`), and a
`wmi.*` group for the rest. The schema is docs/report-finding.schema.json.
"""

from __future__ import annotations

ECS_VERSION = "8.11.0"

_CATEGORY = {
    "process-create": (["process"], ["start"]),
    "sealed-method-exec": (["process"], ["start"]),
    "service-create": (["configuration"], ["creation"]),
    "service-change": (["configuration"], ["change"]),
    "service-startservice": (["process"], ["start"]),
    "service-stopservice": (["process"], ["end"]),
    "event-subscription": (["configuration"], ["creation"]),
    "sealed-event-subscription": (["configuration"], ["creation"]),
    "registry-write": (["registry"], ["change"]),
    "registry-read": (["registry"], ["access"]),
    "environment-staging": (["configuration"], ["change"]),
    "namespace-login": (["authentication", "session"], ["start"]),
    "wmi-failure": (["network"], ["denied"]),
    "recon-query": (["host"], ["info"]),
    "sealed-query": (["host"], ["info"]),
    "cleanup": (["configuration"], ["deletion"]),
    "shadow-copy-create": (["file"], ["creation"]),
    "shadow-copy-delete": (["file"], ["deletion"]),
    "instance-write": (["configuration"], ["change"]),
    "instance-delete": (["configuration"], ["deletion"]),
}
_SEVERITY = {"low": 21, "medium": 47, "high": 73}


def finding_document(f: dict) -> dict:
    cat, typ = _CATEGORY.get(f["rule"], (["host"], ["info"]))
    doc = {
        "@timestamp": f["first_time"],
        "message": f["summary"],
        "ecs": {"version": ECS_VERSION},
        "event": {
            "kind": "alert", "category": cat, "type": typ, "action": f["rule"],
            "outcome": f["outcome"], "start": f["first_time"], "end": f["last_time"],
            "severity": _SEVERITY[f["severity"]], "reason": f["title"],
            "dataset": "wmiscope.report", "module": "wmiscope", "provider": "wmiscope",
            "id": f["id"],
        },
        "source": _host(f["source"]),
        "destination": _host(f["destination"]),
        "network": {"transport": "tcp", "protocol": "dcerpc", "application": "wmi"},
        "threat": {
            "framework": "MITRE ATT&CK",
            "technique": {"id": [t["id"] for t in f["techniques"]], "name": [t["name"] for t in f["techniques"]],
                          "reference": [t["reference"] for t in f["techniques"]]},
            "tactic": {"name": sorted({t["tactic"] for t in f["techniques"]})},
        },
        "related": {"ip": sorted({f["source"]["ip"], f["destination"]["ip"]}),
                    "hosts": sorted(set(f["source"].get("names") or []) | set(f["destination"].get("names") or []))},
        "wmi": _wmi(f),
    }
    pr = f["principal"]
    if pr and pr.get("name"):
        doc["user"] = {"name": pr["name"]}
        if pr.get("domain"):
            doc["user"]["domain"] = pr["domain"]
        doc["related"]["user"] = [pr["name"]]
    if f["command_line"]:
        doc["process"] = {"command_line": f["command_line"]}
        pid = f["wmi"].get("process_id")
        if isinstance(pid, int):
            doc["process"]["pid"] = pid
    reg = f.get("registry")
    if reg:
        doc["registry"] = {"hive": reg["hive"] if isinstance(reg["hive"], str) else str(reg["hive"]),
                           "key": reg["key"], "path": reg["path"]}
        if reg.get("value"):
            doc["registry"]["value"] = reg["value"]
        if reg.get("data") is not None:
            doc["registry"]["data"] = {"strings": [str(reg["data"])]}
    return doc


def _host(h: dict) -> dict:
    out = {"ip": h["ip"], "port": h["port"]}
    if h.get("names"):
        out["domain"] = h["names"][0]
    return out


def _wmi(f: dict) -> dict:
    w = {
        "finding_id": f["id"], "rule": f["rule"], "basis": f["basis"], "confidence": f["confidence"],
        "reasons": f["reasons"], "severity": f["severity"], "namespace": f["namespace"],
        "frames": f["frames"], "operation": f["operation"], "session": f["session"], "capture": f["capture"],
        "source_names": f["source"].get("names") or [], "destination_names": f["destination"].get("names") or [],
    }
    for k in ("class", "method", "query", "object_path", "return_value", "return_text", "process_id",
              "hresult", "error", "shape", "result_bytes", "next_replies", "subscription", "service", "in", "out", "properties", "result_path"):
        v = f["wmi"].get(k)
        if v not in (None, {}, []):
            w[k] = v
    if f["principal"]:
        w["principal"] = f["principal"]["text"]
        if f["principal"].get("service"):
            w["kerberos_service"] = f["principal"]["service"]
    if f.get("evidence"):
        w["evidence"] = f["evidence"]
    if f["client_machine"]:
        w["client_machine"] = f["client_machine"]
    if f["client_pid"] is not None:
        w["client_pid"] = f["client_pid"]
    if f["tool"]:
        w["tool"] = f["tool"]
    if f["decoded_command"]:
        w["decoded_command"] = f["decoded_command"]
    return w
