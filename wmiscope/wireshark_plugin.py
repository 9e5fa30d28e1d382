"""The Wireshark Lua plugin, generated from the interface table.

The plugin is one Lua file: a generated head (the interfaces, their methods and NDR
signatures, the structures, the type vocabulary parsed into Lua tables, status codes,
flag sets and the fields to register) followed by the hand-written runtime in
`wmiscope/lua/runtime.lua` (the NDR interpreter that walks those tables, the MS-WMIO
reader, the IPID registry and the Wireshark glue). Nothing in the runtime names a WMI
method: what a stub holds comes from the same table the Python decoders read, so the
two cannot drift apart.

The generated file is checked in as wireshark_lua/wmiscope.lua; `render()` is
deterministic, and a test holds the checked-in file to it.
"""

from __future__ import annotations

import re
from importlib import resources

# the type grammar's argument splitter, shared with the Python decoder that reads the same strings
from wmiscope.spec.ndr_types import _split_args as _split_type_args


def _split_args(s: str) -> list[str]:
    return _split_type_args(s, s)

__all__ = ["render", "tables", "PROPERTY_FIELDS"]


def tables():
    """The interface table and the WBEM constants, as modules.

    The one place the generator imports them (the neutral spec layer)."""
    from wmiscope.spec import interfaces, wbem
    return interfaces, wbem


# MS-WMIO property names that get a field of their own (`wmi.prop.<Name>`), so that an
# analyst can filter on them: the in- and out-parameters of the methods attackers call
# (Win32_Process.Create, Win32_Service.Create, StdRegProv, Win32_ShadowCopy) and the
# properties of the classes persistence plants (event filters, consumers, bindings,
# environment variables). Every other property still shows in the tree and in the
# generic `wmi.prop.name` / `wmi.prop.value` pair.
PROPERTY_FIELDS = (
    "CommandLine", "CurrentDirectory", "ProcessStartupInformation", "ProcessId", "ReturnValue", "Handle",
    "Name", "DisplayName", "PathName", "ServiceType", "ErrorControl", "StartMode", "DesktopInteract",
    "StartName", "StartPassword", "LoadOrderGroup", "ServiceDependencies", "State", "Started",
    "hDefKey", "sSubKeyName", "sValueName", "sValue", "uValue", "sNames", "Types",
    "Query", "QueryLanguage", "EventNamespace", "Filter", "Consumer",
    "CommandLineTemplate", "ExecutablePath", "WorkingDirectory", "ScriptText", "ScriptingEngine",
    "ScriptFileName", "KillTimeout", "VariableValue", "UserName", "SystemVariable",
    "Caption", "Description", "Path", "Volume", "Context", "ShadowID",
)

# Parameters whose NDR bytes carry an MS-WMI encoding of their own (the Python WMI decoder
# treats the same three specially): the runtime reads them as ObjectArrays.
SPECIAL = {
    "IWbemWCOSmartEnum.Next.pBuffer": "object_array",
    "IWbemObjectSink.Indicate.apObjArray": "indicate",
    "IWbemRemoteRefresher.RemoteRefresh.paObjects": "refreshed_objects",
}

_INTEGERS = {"byte": (1, False), "ushort": (2, False), "short": (2, True), "ulong": (4, False),
             "long": (4, True), "uhyper": (8, False), "hyper": (8, True), "error_status_t": (4, False),
             "HRESULT": (4, False), "float": (4, None), "double": (8, None)}
_STRINGS = ("wstring", "string", "BSTR")
_HUNGARIAN = ("wsz", "pstr", "pdw", "apl", "pp", "pl", "pa", "ap", "dw", "sz", "p", "l")


class UnknownType(KeyError):
    """A type string outside the vocabulary: the method is named but not decoded."""


class _Types:
    """The table's type strings parsed into Lua-ready nodes, with NDR alignment (C706 14)."""

    def __init__(self, structs: dict, enums: dict | None = None):
        self.structs = structs
        self.enums = enums or {}
        self.nodes: dict[str, dict] = {}

    def node(self, text: str) -> dict:
        text = text.strip()
        if text in self.nodes:
            return self.nodes[text]
        m = re.fullmatch(r"(unique|array|varray)<(.*)>", text)
        if m:
            args = _split_args(m.group(2))
            inner = self.node(args[0])
            if m.group(1) == "unique":
                n = {"k": "unique", "a": 4, "e": args[0]}
            else:
                # the conformance (and variance) words align to 4; each element aligns itself
                n = {"k": m.group(1), "a": 4, "e": args[0], "m": inner.get("m", 4)}
        elif text.endswith("*"):
            n = {"k": "iface", "a": 4, "i": text[:-1]}
        elif text in _INTEGERS:
            size, signed = _INTEGERS[text]
            n = {"k": "prim", "a": size, "w": size, "s": signed}
            if signed is None:
                n["f"] = True
        elif text in ("GUID", "FILETIME"):
            n = {"k": text.lower(), "a": 4}
        elif text in _STRINGS:
            n = {"k": text.lower(), "a": 4}
        elif text == "MInterfacePointer":
            n = {"k": "mip", "a": 4}
        elif text in self.structs:
            spec = self.structs[text]
            self.nodes[text] = n = {"k": "struct", "a": 1}
            if "union" in spec:
                u = spec["union"]
                n.update(k="union", sw=u["switch_type"], arms={v: [name, t] for v, name, t in u["arms"]})
                n["a"] = max([self.node(u["switch_type"])["a"]] + [self.node(t)["a"] for _, _, t in u["arms"]])
            elif spec["fields"]:
                # a member read with enumerations (wbem.FIELD_ENUMS) carries their names
                n["f"] = [[f, t, *([list(self.enums[text, f])] if (text, f) in self.enums else [])]
                          for f, t in spec["fields"]]
                n["a"] = max(self.node(t)["a"] for _, t in spec["fields"])
            else:
                n["k"] = "opaque"          # VARIANT, EXCEPINFO: the table lists no fields
        else:
            raise UnknownType(f"type {text!r} is not in the table's vocabulary")
        n.setdefault("m", 1)
        self.nodes[text] = n
        return n


# parameters whose values the plugin keeps across calls (namespace, QueryInterface IIDs) or
# shows as analyst fields (wmi.class)
_STATE_PARAMS = frozenset(("iids", "ripid", "ppQIResults", "wszNetworkResource", "strNamespace", "strObjectPath", "strClass",
                           "strSuperclass", "strSuperClass", "strQuery", "pObject", "pInst"))
_CUSTOM_MARSHALED = frozenset(("IWbemClassObject", "IWbemContext"))


def _learns(types: _Types, text: str, seen=None) -> bool:
    """Whether a value of this type can hold an OBJREF that names an IPID."""
    seen = seen if seen is not None else set()
    if text in seen:
        return False
    seen.add(text)
    n = types.node(text)
    if n["k"] == "iface":
        return n["i"] not in _CUSTOM_MARSHALED
    if n["k"] == "mip":
        return True
    if n["k"] in ("unique", "array", "varray"):
        return _learns(types, n["e"], seen)
    if n["k"] == "struct":
        return any(_learns(types, f[1], seen) for f in n.get("f", ()))
    if n["k"] == "union":
        return any(_learns(types, t, seen) for _, t in n["arms"].values())
    return False


def display_name(idl_name: str) -> str:
    """A parameter's name as the MS-WMI section 4 traces print it (the transcript's rule)."""
    for pre in _HUNGARIAN:
        if len(idl_name) > len(pre) and idl_name.startswith(pre) and idl_name[len(pre)].isupper():
            return idl_name[len(pre):]
    return idl_name[:1].upper() + idl_name[1:]


def _field_kind(typ: str) -> str:
    if typ in _INTEGERS and _INTEGERS[typ][1] is not None:
        return "int" if _INTEGERS[typ][1] else "uint"
    if typ in _STRINGS or typ in ("unique<wstring>", "unique<string>", "GUID", "FILETIME"):
        return "string"
    return "none"


def _lua(v, indent: str = "") -> str:
    """A Python value as a Lua constructor (dicts with str / int keys, lists, scalars)."""
    if v is None:
        return "nil"
    if v is True or v is False:
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, (list, tuple)):
        return "{" + ",".join(_lua(x) for x in v) + "}"
    if isinstance(v, dict):
        parts = []
        for k in v:
            key = k if isinstance(k, str) and re.fullmatch(r"[A-Za-z_]\w*", k) else f"[{_lua(k)}]"
            parts.append(f"{key}={_lua(v[k])}")
        return "{" + ",".join(parts) + "}"
    raise TypeError(type(v))


def _data() -> dict:
    itf, wbem = tables()
    types = _Types(itf.STRUCTS, wbem.FIELD_ENUMS)
    param_kinds: dict[str, set] = {}
    ifaces = {}
    for i in itf.INTERFACES:
        methods = {}
        for opnum, m in sorted(itf.methods_of(i["uuid"]).items()):
            entry = {"n": m["name"]}
            try:
                for side, dirs in (("q", ("in", "inout")), ("r", ("out", "inout"))):
                    ps = []
                    for p in m["params"]:
                        if p["dir"] not in dirs:
                            continue
                        types.node(p["type"])
                        ann = wbem.annotation(i["name"], m["name"], p["name"])
                        if ann is None and p["type"] == "HRESULT":
                            ann = ("HRESULT",)
                        summary = p["type"] in _INTEGERS or p["type"] in (
                            "wstring", "unique<wstring>", "string", "unique<string>")
                        ps.append({"n": p["name"], "t": p["type"], "d": display_name(p["name"]),
                                   "s": summary and not p.get("implicit"), "e": list(ann) if ann else None})
                        param_kinds.setdefault(p["name"], set()).add(_field_kind(p["type"]))
                    entry[side] = ps
                    # what the first pass must decode this side for: an interface pointer that
                    # names an IPID (the custom-marshaled objects and contexts never do), or a
                    # value the IPID registry and the analyst fields are made of
                    entry["l" + side] = any(_learns(types, p["t"]) or p["n"] in _STATE_PARAMS for p in ps)
                entry["ret"] = m["returns"]
                types.node(m["returns"])
            except UnknownType:
                entry = {"n": m["name"]}     # named, not decoded
            methods[opnum] = entry
        ancestors = [a["uuid"] for a in itf.base_chain(i)]
        ifaces[i["uuid"]] = {"name": i["name"], "g": i["group"], "orpc": i["orpc"], "m": methods,
                             "anc": ancestors}
    # one field per parameter name; a name used with several kinds is shown as text
    fields = {}
    for name, kinds in sorted(param_kinds.items()):
        kind = kinds.pop() if len(kinds) == 1 else ("string" if "none" not in kinds else "none")
        fields[name] = [kind, display_name(name)]
    hresults = {}
    struct_fields = _struct_fields(types, itf, wbem, fields)
    for table in (wbem.ERREF, wbem.APPENDIX_C, wbem.WBEMSTATUS):
        for name, value, _ in table:
            hresults[value] = name
    enums = {k: {"kind": e["kind"], "v": [[n, v] for n, v, _ in e["values"]],
                 "masks": [[n, v] for n, v, _ in e.get("masks", ())]} for k, e in wbem.ENUMS.items()}
    from wmiscope.formats.cim import CIM_TYPE_NAMES, DICTIONARY_STRINGS
    clsids = {c["uuid"]: c["name"] for c in itf.CLSIDS}
    return {
        "IFACES": ifaces, "TYPES": types.nodes, "FIELDS": fields, "SFIELDS": struct_fields, "HRESULTS": hresults, "ENUMS": enums,
        "CIMTYPES": {int(k): v for k, v in CIM_TYPE_NAMES.items()}, "DICTIONARY": list(DICTIONARY_STRINGS),
        "CLSIDS": clsids, "PROPS": list(PROPERTY_FIELDS), "SPECIAL": SPECIAL,
        "WMIO_CLSID": itf.uuid_of("WbemClassObject unmarshaler"),
        "CONTEXT_CLSID": itf.uuid_of("WbemContext unmarshaler"),
    }


def _struct_fields(types: _Types, itf, wbem, param_fields: dict) -> dict:
    """Fields for the scalar members of the structures WMI methods carry (`wmi.m_lCancelId`,
    `wmi.m_lRequestId`, `wmi.m_lBlobType`, ...): [kind, label].

    Only structures reachable from a WMI interface's own parameters (not the implicit ORPC
    headers: DCOM keeps its built-in fields), and only member names no parameter field
    already uses."""
    reached: list[str] = []

    def walk(text: str) -> None:
        n = types.node(text)
        if n["k"] in ("unique", "array", "varray"):
            walk(n["e"])
        elif n["k"] == "union":
            for _, t in n["arms"].values():
                walk(t)
        elif n["k"] == "struct" and text not in reached:
            reached.append(text)
            for f in n["f"]:
                walk(f[1])

    for i in itf.INTERFACES:
        if i["group"] != "wmi":
            continue
        for m in i["methods"]:
            for p in m["params"]:
                if p.get("implicit"):
                    continue
                try:
                    walk(p["type"])
                except UnknownType:
                    pass
    out: dict[str, list] = {}
    for struct in sorted(reached):
        for member, typ in itf.STRUCTS[struct]["fields"]:
            kind = _field_kind(typ)
            if kind == "none" or member in param_fields:
                continue
            if member in out and out[member][0] != kind:
                out[member][0] = "string"
            out.setdefault(member, [kind, member])
    return out


def render() -> str:
    """The whole plugin as Lua source text."""
    from wmiscope import __version__

    data = _data()
    head = [
        "-- wmiscope.lua: MS-WMI (WMI over DCOM over DCE/RPC) for Wireshark and tshark 4.0 and 4.4.",
        f"-- Generated by `wmiscope wireshark-plugin` (wmiscope {__version__}) from the interface table;",
        "-- do not edit: change the table or wmiscope/lua/runtime.lua and generate it again.",
        "-- Install: copy into the personal Lua plugins folder (`tshark -G folders`), or",
        "-- `wmiscope wireshark-plugin --install`.",
        "",
        "local G = {}",
    ]
    for key, value in data.items():
        head.append(f"G.{key} = {_lua(value)}")
    runtime = resources.files("wmiscope").joinpath("lua/runtime.lua").read_text(encoding="utf-8")
    return "\n".join(head) + "\n\n" + runtime
