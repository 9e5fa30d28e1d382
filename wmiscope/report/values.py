"""Reading a call's values out of the `calls --format jsonl` dicts: parameters, WMI
objects and their properties, HRESULTs, object paths, namespaces, principals; and the
one-line summary of a call that the report's sessions and the calls table share."""

from __future__ import annotations

import base64
import binascii
import re

from . import rules as R


def record_dict(call) -> dict:
    """A Call record as the `calls --format jsonl` dict: the one place the report touches
    that schema (issue 8 moves and versions it; only this function follows)."""
    import orjson

    from wmiscope.dissectors.jsonl import call_dict, dumps
    from wmiscope.dissectors.pipeline import call_outcome

    # Through JSON text: the decoded WMI objects become the very dicts jsonl consumers see.
    return orjson.loads(dumps(call_dict(call, call_outcome(call))))


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


def objects(d: dict, side: str, limit: int = 0) -> list[dict]:
    """The decoded WMI objects (classes and instances) a side carries, ObjectArrays flattened;
    with a limit, the first that many only (the objects after them are not rendered)."""
    out: list = []
    for p in params(d, side):
        _collect(p.get("object"), out, 0, limit)
        if limit and len(out) >= limit:
            break
    return out


def _collect(o, out: list, depth: int, limit: int = 0) -> None:
    """Appends the classes and instances under `o` to `out`, in order; with a limit, stops
    once `out` holds that many."""
    if depth > 4 or o is None or (limit and len(out) >= limit):
        return
    if not isinstance(o, (dict, list)):
        # a decoded object not yet rendered to JSON (the calls table works on the records
        # directly): only what the summary reads of it
        from wmiscope.dissectors.wmi import object_json, summary_json
        o = summary_json(o) or object_json(o)
    if isinstance(o, list):
        for x in o:
            _collect(x, out, depth + 1, limit)
    elif isinstance(o, dict):
        if o.get("kind") in ("instance", "class"):
            out.append(o)
        elif "objects" in o:
            for x in o["objects"]:
                _collect(x.get("object") if isinstance(x, dict) else x, out, depth + 1, limit)


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
        if host and host != "." and not is_ip(host):
            return host
    return None


_IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")


def is_ip(s: str) -> bool:
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


def principal_of(auth: dict | None) -> dict | None:
    """The principal of a call's `auth` record. For Kerberos, the client (`auth.client`,
    cname@crealm, known only when the analyst's keytab opened the ticket) becomes the
    user (name and domain) beside the service; without it the user stays unknown."""
    auth = auth or {}
    pr = parse_principal(auth.get("principal"))
    client = auth.get("client")
    if pr is not None and pr["kind"] == "kerberos" and client:
        name, _, realm = client.rpartition("@")
        pr.update(name=name or client, domain=realm or None, client=client,
                  text=f"{client} (Kerberos to {pr['service']})")
    return pr


def frame_of(d: dict, side: str):
    h = d.get(side)
    return h["frames"][1] if h else None


def preview(v, n: int = 300):
    s = v if isinstance(v, str) else str(v)
    return s if len(s) <= n else s[:n] + f"... ({len(s)} characters)"


_KEY_ORDER = ("Name", "PathName", "CommandLine", "hDefKey", "sSubKeyName", "sValueName", "Query", "Filter",
              "Consumer", "StartMode", "StartName")


def keys_text(p: dict) -> str:
    order = sorted((k for k in p if not isinstance(p[k], list)), key=lambda k: _KEY_ORDER.index(k) if k in _KEY_ORDER else len(_KEY_ORDER))
    return ", ".join(f"{k}={R.REGISTRY_HIVES.get(p[k], p[k]) if k == 'hDefKey' else p[k]}" for k in order[:4])


def previews(p: dict) -> dict:
    return {k: (preview(v) if isinstance(v, str) else v) for k, v in p.items() if not isinstance(v, list)
            or len(v) < 64}


def call_summary(d: dict) -> str:
    """What an analyst needs of a call in one line: class and method, query, object path,
    namespace of a login, command line."""
    if d.get("encrypted") and not d.get("decrypted"):
        return ""
    # Each side's parameters are read once (the request's by name, the first of a name,
    # as param() finds it), and only the first request object is rendered: the calls
    # table asks this of every call.
    req: dict = {}
    for p in params(d, "request"):
        req.setdefault(p.get("name"), p.get("value"))
    m = d.get("method")
    if m in ("SetClientInfo", "SetClientInfoEx"):
        return f"{clean(req.get('wszClientMachine'))} pid {clean(req.get('lClientProcId'))}"
    if m in ("NTLMLogin", "OpenNamespace"):
        return str(clean(req.get("wszNetworkResource")) or clean(req.get("strNamespace")) or "")
    parts = []
    if req:
        q = clean(req.get("strQuery"))
        if q:
            return q
        path = clean(req.get("strObjectPath"))
        meth = clean(req.get("strMethodName"))
        if path or meth:
            parts.append(f"{path or ''}{'.' + meth if meth else ''}" if meth else path)
        for o in objects(d, "request", 1):
            p = props(o)
            if o.get("class") == "__PARAMETERS":
                cmd = p.get("CommandLine")
                if cmd:
                    parts.append(cmd)
                elif p:
                    parts.append(keys_text(p))
            else:
                parts.append(f"{o.get('class')} {keys_text(p)}".strip())
        flt = clean(req.get("strFilter")) or clean(req.get("strSuperclass"))
        if flt:
            parts.append(flt)
    rs = param(d, "response", "pstrResultString")
    if rs:
        parts.append(f"-> {rs}")
    code = hresult(d)
    if failed(code):
        parts.append(f"!{hresult_name(d) or f'0x{code:08x}'}")
    return " ".join(str(x) for x in parts if x)[:300]
