"""The DCOM layer (MS-DCOM 2.2, 3.1): names every call and decodes the DCOM methods.

The methods of activation (IRemoteSCMActivator, IActivation: 3.1.2.5.2), OXID resolution
and pinging (IObjectExporter: 3.1.2.5.1) and IRemUnknown(2) (3.1.1.5.6-7) are decoded from
their signatures in the interface table by the table interpreter (interpreter.py), the
same one that decodes WMI, so their records carry the IDL's own parameter names (pOxid,
ppdsaOxidBindings, ripid, ppQIResults ...). What only code can do runs after decoding as
small named hooks, one per method (DCOM_HOOKS), the way Wireshark's pidl .cnf files sit
beside generated dissection: learning IPIDs from the interface pointers and REMQIRESULTs a
reply hands out, learning OXID bindings, reading the activation property sets
(activation.py) inside pActProperties, and naming what an IPID or IID stands for.

Every OBJREF (formats/objref.py) seen in any other clear stub teaches the IPID registry
(ipid_registry.py) too; a request's object UUID then names its interface.

`DcomDecoder.decode_call(call)` names a `records.Call` and fills `call.decoded =
{"request": {...}, "response": {...}, "notes": [...]}`: the ORPCTHIS / ORPCTHAT
(orpc.py) of every ORPC call; for the DCOM methods above "params" (in wire order, as the
WMI decoder writes them: see wmi.WmiDecoder) and the response's "return"; for every
other call `params_offset` (where the interface's own parameters start, for the WMI
layer) and under "objrefs" every OBJREF found in the stub. Malformed stubs become
`ErrorRecord(stage="dcom")`; it never raises.
"""

from __future__ import annotations

import struct

from ..formats.errors import DecodeError
from ..formats.objref import (MAX_SCAN_ERRORS, OBJREF_CUSTOM, OBJREF_SIGNATURE, DualStringArray, ObjRef,
                              hex64, parse_dualstringarray, scan_objrefs)
from ..spec import interfaces as _if
from .activation import decode_activation_properties
from .interpreter import InterfacePointer, decode_direction, method_plan
from .ipid_registry import IpidRegistry
from .ndr import NdrReader
from .orpc import read_orpcthat, read_orpcthis
from .records import Call, ErrorRecord, guarded
from .records import call_frame as _frame

__all__ = ["DcomDecoder"]

IID_IREMUNKNOWN = _if.uuid_of("IRemUnknown")
IID_IREMUNKNOWN2 = _if.uuid_of("IRemUnknown2")
IID_ISYSTEMACTIVATOR = _if.uuid_of("IRemoteSCMActivator")
IID_IACTIVATION = _if.uuid_of("IActivation")
IID_IOBJECTEXPORTER = _if.uuid_of("IObjectExporter")

CLSID_ACTIVATION_PROPERTIES_IN = _if.uuid_of("ActivationPropertiesIn")
CLSID_ACTIVATION_PROPERTIES_OUT = _if.uuid_of("ActivationPropertiesOut")


# ---------------------------------------------------------------------------------------
# hooks: what only code can do, after a DCOM method was decoded from its signature.
# hook(dec, call, side, values, request): side is the direction's decoded dict ("params"
# as JSON), values the native values by parameter name, request the request's native
# values (None for a request hook).

# The interfaces whose methods the table gives in full (the IDispatch / ITypeInfo entries
# leave VARIANT and friends out: those calls are named, and their OBJREFs scanned).
TABLE_DECODED = frozenset(("IRemUnknown", "IRemUnknown2", "IRemoteSCMActivator", "IActivation", "IObjectExporter"))


def _param(side: dict, name: str) -> dict | None:
    return next((p for p in side.get("params") or () if p.get("name") == name), None)


def _status(ret) -> int | None:
    return ret.get("value") if isinstance(ret, dict) else None


def _dualstringarray(v) -> DualStringArray | None:
    """A DUALSTRINGARRAY the interpreter read (its aStringArray as 16-bit units), parsed into
    its string and security bindings."""
    if not isinstance(v, dict) or not isinstance(v.get("aStringArray"), list):
        return None
    units = v["aStringArray"]
    raw = struct.pack(f"<HH{len(units)}H", len(units), v.get("wSecurityOffset") or 0, *units)
    try:
        return parse_dualstringarray(raw, 0)[0]
    except DecodeError:
        return None


def _show_bindings(side: dict, name: str, values: dict) -> DualStringArray | None:
    """A DUALSTRINGARRAY parameter shown by what its aStringArray says (string and security
    bindings, and the bindings as text) instead of 16-bit units."""
    dsa = _dualstringarray(values.get(name))
    p = _param(side, name)
    if dsa is not None and p is not None and isinstance(p.get("value"), dict):
        p["value"] = {"wNumEntries": dsa.num_entries, "wSecurityOffset": dsa.security_offset,
                      **{k: v for k, v in dsa.to_dict().items() if k.endswith("_bindings")},
                      "bindings": dsa.bindings_text()}
    return dsa


def _name_iids(side: dict, name: str) -> None:
    """An array of IIDs annotated with the interfaces they name."""
    p = _param(side, name)
    if p is not None and isinstance(p.get("value"), list):
        p["interfaces"] = [_if.interface_name(i) for i in p["value"]]


def _name_ipid(dec, side: dict, name: str) -> None:
    """An IPID parameter annotated with the interface the registry knows it as."""
    p = _param(side, name)
    if p is not None and isinstance(p.get("value"), str):
        e = dec.registry.lookup(p["value"])
        p["interface"] = e.interface if e else None


def _learn_oxid(dec, call: Call, oxid, dsa: DualStringArray | None, values: dict, ipid: str, hint: str,
                version: str, source: str) -> None:
    """Teach the registry an exporter's bindings and its IRemUnknown."""
    if not isinstance(oxid, int):
        return
    frame = _frame(call, 1)
    ver = values.get(version)
    ver = f"{ver.get('MajorVersion')}.{ver.get('MinorVersion')}" if isinstance(ver, dict) else None
    remunknown = values.get(ipid)
    dec.registry.learn_oxid(oxid, bindings=dsa, ipid_remunknown=remunknown, authn_hint=values.get(hint),
                            version=ver, frame=frame)
    if remunknown:
        dec.registry.learn_ipid(remunknown, IID_IREMUNKNOWN, oxid=oxid, frame=frame, conn=call.conn, source=source)


def _learn_pointers(dec, call: Call, pointers: list, iids: list, source: str) -> None:
    """Interface pointers a reply hands out, each of the IID the request asked for at its position."""
    frame = _frame(call, 1)
    for i, ptr in enumerate(pointers):
        o = ptr.objref if isinstance(ptr, InterfacePointer) else None
        if o is not None and o.std is not None:
            iid = iids[i] if i < len(iids) else o.iid
            dec.registry.learn_objref(o, iid=iid, frame=frame, conn=call.conn, source=source)


def _rem_qi_request(dec, call, side, values, request) -> None:
    _name_ipid(dec, side, "ripid")
    _name_iids(side, "iids")


def _rem_qi_response(dec, call, side, values, request) -> None:
    """RemQueryInterface: each REMQIRESULT's STDOBJREF is an IPID of the IID asked at its position."""
    iids = (request or {}).get("iids") or []
    p = _param(side, "ppQIResults")
    frame = _frame(call, 1)
    for i, (native, shown) in enumerate(zip(values.get("ppQIResults") or (), (p or {}).get("value") or ())):
        iid = iids[i] if i < len(iids) else None
        shown["iid"], shown["interface"] = iid, _if.interface_name(iid)
        std = native.get("std") or {}
        if iid and not (native.get("hResult") or 0) & 0x80000000 and std.get("ipid"):
            dec.registry.learn_ipid(std["ipid"], iid, oxid=std.get("oxid"), oid=std.get("oid"), frame=frame,
                                    conn=call.conn, source="remqi", public_refs=std.get("cPublicRefs"))


def _rem_qi2_response(dec, call, side, values, request) -> None:
    """RemQueryInterface2: the MInterfacePointers of the IIDs asked, in order."""
    _learn_pointers(dec, call, values.get("ppMIF") or [], (request or {}).get("iids") or [], "remqi")
    p = _param(side, "ppMIF")
    if p is not None:
        p["interfaces"] = [_if.interface_name(i) for i in (request or {}).get("iids") or ()]


def _rem_refs_request(dec, call, side, values, request) -> None:
    """RemAddRef / RemRelease: each REMINTERFACEREF named by the interface of its IPID."""
    p = _param(side, "InterfaceRefs")
    for ref in (p or {}).get("value") or ():
        e = dec.registry.lookup(ref.get("ipid"))
        ref["interface"] = e.interface if e else None


def _activation_properties(call: Call, side: dict, values: dict, name: str, clsid: str, stub: bytes) -> dict | None:
    """The activation property set (2.2.22) inside an ActivationProperties OBJREF_CUSTOM,
    decoded and lifted into the parameter's "activation" facts."""
    ptr = values.get(name)
    o = ptr.objref if isinstance(ptr, InterfacePointer) else None
    p = _param(side, name)
    if o is None or p is None or o.flags != OBJREF_CUSTOM or o.clsid != clsid:
        return None
    blob = decode_activation_properties(stub, o.payload_offset, o.payload_length)
    facts = _flatten_props(blob)
    p["activation"] = facts
    return facts


def _activation_request(dec, call, side, values, request) -> None:
    facts = _activation_properties(call, side, values, "pActProperties", CLSID_ACTIVATION_PROPERTIES_IN,
                                   call.req_stub)
    if facts is not None:
        for prop in facts["properties"]:      # nothing to learn from a request
            _json_values(prop)


def _activation_response(dec, call, side, values, request) -> None:
    facts = _activation_properties(call, side, values, "ppActProperties", CLSID_ACTIVATION_PROPERTIES_OUT,
                                   call.resp_stub)
    if facts is None:
        return
    frame = _frame(call, 1)
    for e in facts.get("interfaces", ()):
        o = e.get("objref")
        if isinstance(o, ObjRef) and o.std is not None:
            dec.registry.learn_objref(o, iid=e.get("iid") or o.iid, frame=frame, conn=call.conn, source="activation")
            e["ipid"] = o.std.ipid
    dsa = facts.get("oxid_bindings") if isinstance(facts.get("oxid_bindings"), DualStringArray) else None
    oxid = facts.get("oxid")
    if isinstance(oxid, int):
        dec.registry.learn_oxid(oxid, bindings=dsa, ipid_remunknown=facts.get("ipid_remunknown"),
                                authn_hint=facts.get("authn_hint"), version=facts.get("server_version"), frame=frame)
        if facts.get("ipid_remunknown"):
            dec.registry.learn_ipid(facts["ipid_remunknown"], IID_IREMUNKNOWN, oxid=oxid, frame=frame,
                                    conn=call.conn, source="activation")
    for prop in facts["properties"]:
        _json_values(prop)
    _json_values(facts)


def _remote_activation_request(dec, call, side, values, request) -> None:
    _name_iids(side, "pIIDs")


def _remote_activation_response(dec, call, side, values, request) -> None:
    """IActivation::RemoteActivation: the exporter of the new object and its interface pointers."""
    dsa = _show_bindings(side, "ppdsaOxidBindings", values)
    _learn_oxid(dec, call, values.get("pOxid"), dsa, values, "pipidRemUnknown", "pAuthnHint", "pServerVersion",
                "activation")
    iids = (request or {}).get("pIIDs") or []
    _learn_pointers(dec, call, values.get("ppInterfaceData") or [], iids, "activation")
    p = _param(side, "ppInterfaceData")
    if p is not None:
        p["interfaces"] = [_if.interface_name(i) for i in iids]


def _resolve_oxid_response(dec, call, side, values, request) -> None:
    """ResolveOxid(2): the bindings of the OXID the request named, when the call succeeded."""
    dsa = _show_bindings(side, "ppdsaOxidBindings", values)
    if _status(side.get("return")) == 0:
        _learn_oxid(dec, call, (request or {}).get("pOxid"), dsa, values, "pipidRemUnknown", "pAuthnHint",
                    "pComVersion", "resolver")


def _server_alive2_response(dec, call, side, values, request) -> None:
    _show_bindings(side, "ppdsaOrBindings", values)


# (interface, method) -> (request hook, response hook); IRemUnknown2 inherits IRemUnknown's methods.
DCOM_HOOKS = {
    ("IRemoteSCMActivator", "RemoteGetClassObject"): (_activation_request, _activation_response),
    ("IRemoteSCMActivator", "RemoteCreateInstance"): (_activation_request, _activation_response),
    ("IActivation", "RemoteActivation"): (_remote_activation_request, _remote_activation_response),
    ("IObjectExporter", "ResolveOxid"): (None, _resolve_oxid_response),
    ("IObjectExporter", "ResolveOxid2"): (None, _resolve_oxid_response),
    ("IObjectExporter", "ServerAlive2"): (None, _server_alive2_response),
    ("IRemUnknown", "RemQueryInterface"): (_rem_qi_request, _rem_qi_response),
    ("IRemUnknown", "RemAddRef"): (_rem_refs_request, None),
    ("IRemUnknown", "RemRelease"): (_rem_refs_request, None),
    ("IRemUnknown2", "RemQueryInterface2"): (_rem_qi_request, _rem_qi2_response),
}


def _hooks(info: dict, method: str) -> tuple:
    """The hooks of a method, found on the interface that declares it (IRemUnknown2 inherits
    RemQueryInterface from IRemUnknown). Looked up once per (interface, method): every
    RemRelease and RemQueryInterface of a session asks again."""
    key = (info["name"], method)
    hooks = _HOOKS_FOUND.get(key)
    if hooks is None:
        hooks = _HOOKS_FOUND[key] = next(
            (h for h in (DCOM_HOOKS.get((i["name"], method)) for i in _if.base_chain(info)) if h is not None),
            (None, None))
    return hooks


_HOOKS_FOUND: dict[tuple[str, str], tuple] = {}


def _method(iid: str | None, opnum: int | None) -> tuple:
    """(interface entry, plan or None, hooks) of a call, looked up once per known interface
    and opnum: a session sends the same few methods (RemRelease, RemQueryInterface, ping)
    over and over. Unknown interfaces are not cached, so hostile UUIDs cannot grow it."""
    key = (iid, opnum)
    found = _METHODS.get(key)
    if found is not None:
        return found
    info = _if.interface_by_uuid(iid)
    plan = None
    if info is not None and info["name"] in TABLE_DECODED and opnum is not None:
        plan = method_plan(info["name"], opnum)
        if plan is not None and plan.error:
            plan = None
    found = (info, plan, _hooks(info, plan.method) if plan else (None, None))
    if info is not None and iid == info["uuid"] and (plan is not None or opnum in _if.methods_of(iid)):
        _METHODS[key] = found
    return found


_METHODS: dict[tuple, tuple] = {}


def _json_values(d: dict) -> None:
    """The objects kept until the registry has learned from them, turned into JSON in place:
    a DUALSTRINGARRAY under "oxid_bindings" (its bindings as text go to
    "oxid_bindings_text"), an OXID (hex text), the OBJREFs of the "interfaces" handed out."""
    dsa = d.get("oxid_bindings")
    if isinstance(dsa, DualStringArray):
        d["oxid_bindings"] = dsa.to_dict()
        d["oxid_bindings_text"] = dsa.bindings_text()
    if isinstance(d.get("oxid"), int):
        d["oxid"] = hex64(d["oxid"])
    for e in d.get("interfaces", ()):
        if isinstance(e.get("objref"), ObjRef):
            e["objref"] = e["objref"].to_dict()


def _flatten_props(blob: dict) -> dict:
    """The facts an analyst looks for, lifted out of an activation property list."""
    out: dict = {}
    for p in blob["properties"]:
        name = p["name"]
        if name == "InstantiationInfoData":
            out["clsid"] = p["class_id"]
            out["class_name"] = p["class_name"]
            out["requested_iids"] = p["requested_iids"]
            out["requested_interfaces"] = [_if.interface_name(i) for i in p["requested_iids"]]
        elif name == "SecurityInfoData" and "server_name" in p:
            out["server_name"] = p["server_name"]
        elif name == "ScmRequestInfoData" and "requested_protseqs" in p:
            out["requested_protseqs"] = p["requested_protseqs"]
        elif name == "ScmReplyInfoData":
            if "oxid" in p:
                out["oxid"] = p["oxid"]
                out["ipid_remunknown"] = p["ipid_remunknown"]
                out["authn_hint"] = p["authn_hint"]
                out["server_version"] = p["server_version"]
            if "oxid_bindings" in p:
                out["oxid_bindings"] = p["oxid_bindings"]
        elif name == "PropsOutInfo":
            out["interfaces"] = p["interfaces"]
    out["properties"] = blob["properties"]
    return out


# ---------------------------------------------------------------------------------------
# the decoder

class DcomDecoder:
    """Names calls, decodes DCOM parameters and ORPC headers, feeds the IPID registry."""

    def __init__(self, registry: IpidRegistry | None = None):
        self.registry = registry if registry is not None else IpidRegistry()

    def decode_call(self, call: Call) -> None:
        guarded("dcom", self._decode, call)

    # naming --------------------------------------------------------------------------

    def _name(self, call: Call, notes: list) -> str | None:
        ctx = call.interface_uuid.lower() if call.interface_uuid else None
        iid, source = None, None
        if call.ipid:
            e = self.registry.lookup(call.ipid)
            if e is not None and e.iid:
                iid, source = e.iid, "ipid"
                if ctx and ctx != iid:
                    if _if.derives_from(ctx, iid):
                        iid = ctx              # the bind names a more derived interface of that pointer
                    elif not _if.derives_from(iid, ctx):
                        notes.append(f"IPID {call.ipid} is {e.interface or e.iid} (frame {e.frame}) "
                                     f"but the bind context is {_if.interface_name(ctx) or ctx}")
            else:
                notes.append(f"IPID {call.ipid} was not seen in any OBJREF before this call"
                             + ("; named from the bind context" if ctx else ""))
        if iid is None and ctx:
            iid, source = ctx, "context"
        if iid is not None:
            call.interface_uuid = iid
        call.interface_source = source
        call.interface = _if.interface_name(iid)
        call.method = _if.method_name(iid, call.opnum)
        return iid

    # decoding ------------------------------------------------------------------------

    def _decode(self, call: Call) -> None:
        notes: list[str] = []
        iid = self._name(call, notes)
        info, plan, hooks = _method(iid, call.opnum)
        orpc = info["orpc"] if info is not None else bool(call.ipid)
        little = (call.drep & 0x10) != 0
        decoded: dict = {}
        values: list[dict | None] = [None, None]
        ok = [False, False]

        for direction, stub in ((0, call.req_stub), (1, call.resp_stub)):
            if stub is None or (direction and call.fault is not None):
                continue
            side: dict = {}
            decoded["request" if direction == 0 else "response"] = side
            ok[direction], values[direction] = self._decode_stub(call, direction, side, little,
                                                                 orpc or (plan is not None and plan.header), plan)
            notes += side.pop("notes", ())
            hook = hooks[direction]
            if hook is not None and values[direction] is not None:
                try:
                    hook(self, call, side, values[direction], values[0])
                except DecodeError as e:
                    self._error(call, direction, e)
                    ok[direction] = False

        # every interface pointer on the wire teaches the registry, whoever carries it
        for direction, stub in ((0, call.req_stub), (1, call.resp_stub)):
            if not stub or (plan is not None and ok[direction]) or OBJREF_SIGNATURE not in stub:
                continue
            errs: list[DecodeError] = []
            found = scan_objrefs(stub, errs)
            frame = _frame(call, direction)
            for _, o in found:
                if o.framed:
                    self.registry.learn_objref(o, frame=frame, conn=call.conn)
            if found:
                decoded.setdefault("request" if direction == 0 else "response", {})["objrefs"] = \
                    [o.to_dict() for _, o in found]
            for e in errs[:MAX_SCAN_ERRORS]:
                self._error(call, direction, e)
            if len(errs) > MAX_SCAN_ERRORS:
                call.errors.append(ErrorRecord(
                    stage="dcom", reason=f"{len(errs) - MAX_SCAN_ERRORS} more malformed OBJREF candidates",
                    frame=_frame(call, direction), conn=call.conn, structure="OBJREF", kind="dcom.objref_flood"))

        if notes:
            decoded.setdefault("notes", []).extend(notes)
        if decoded:
            call.decoded = decoded

    def _decode_stub(self, call: Call, direction: int, out: dict, little: bool, header: bool,
                     plan) -> tuple[bool, dict | None]:
        """One direction's stub into `out`: ORPCTHIS / ORPCTHAT (2.2.13) first where the call
        carries one, then the method's parameters from the table, or, for a method not decoded
        here, where its parameters start. (ok, native values): not ok after a DecodeError, which
        becomes an error record of the call; what was decoded before it stays in `out`."""
        stub = call.resp_stub if direction else call.req_stub
        r = NdrReader(stub, little_endian=little)
        try:
            if header:
                if direction:
                    out["orpcthat"] = read_orpcthat(r)
                else:
                    out["orpcthis"] = read_orpcthis(r)
        except DecodeError as e:
            self._error(call, direction, e)
            return False, None
        if plan is None:
            out["params_offset"] = r.pos
            return True, None
        d = decode_direction(plan, stub, r.pos, little, None, call, direction == 1)
        out["params"] = d.params
        if direction:
            out["return"] = d.ret
        if d.notes:
            out.setdefault("notes", []).extend(d.notes)
        for e in d.errors:
            self._error(call, direction, e)
        return not d.errors, d.values

    def _error(self, call: Call, direction: int, e: DecodeError) -> None:
        call.errors.append(ErrorRecord(stage="dcom", reason=e.reason, frame=_frame(call, direction),
                                       conn=call.conn, structure=e.structure, offset=e.offset,
                                       kind="dcom." + getattr(e, "kind", "stub_malformed")))
