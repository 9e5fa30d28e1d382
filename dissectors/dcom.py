"""The DCOM layer (MS-DCOM 2.2, 3.1): names every call and decodes the DCOM methods.

  activation (3.1.2.5.2)               IRemoteSCMActivator::RemoteCreateInstance /
                                       RemoteGetClassObject (property blobs: activation.py),
                                       and the older IActivation::RemoteActivation
  IObjectExporter (3.1.2.5.1)          ResolveOxid(2), SimplePing, ComplexPing, ServerAlive(2)
  IRemUnknown(2) (3.1.1.5.6-7)         RemQueryInterface(2), RemAddRef, RemRelease

Every OBJREF (formats/objref.py) seen in a clear stub, every RemQueryInterface result
and every activation reply teaches the IPID registry (ipid_registry.py) which IPID is
which interface; a request's object UUID then names its interface.

`DcomDecoder.decode_call(call)` names a `records.Call`, decodes the DCOM calls'
parameters into `call.decoded = {"request": {...}, "response": {...}, "notes": [...]}` (JSON-able:
GUIDs as text, OXIDs/OIDs as "0x" hex text, HRESULTs as unsigned ints; "notes" only
when naming met something odd, e.g. an IPID never seen), decodes the ORPCTHIS /
ORPCTHAT (orpc.py) of every other ORPC call (leaving `params_offset`, where the
interface's own parameters start, for the WMI layer, and under "objrefs" every OBJREF
found in the stub, custom ones with `payload_offset` / `payload_length` of their MS-WMIO
or IWbemContextBuffer bytes) and reports malformed stubs as `ErrorRecord(stage="dcom")`;
it never raises.
"""

from __future__ import annotations

from ..formats.errors import DecodeError
from ..formats.objref import (MAX_SCAN_ERRORS, OBJREF_CUSTOM, OBJREF_SIGNATURE, DualStringArray, ObjRef, parse_stdobjref,
                              scan_objrefs)
from ..spec import interfaces as _if
from .activation import (decode_activation_properties, interface_pointers, ndr_dualstringarray, objref_summary,
                         read_objref)
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


def _hex64(v: int | None) -> str | None:
    return None if v is None else f"0x{v:016x}"


# ---------------------------------------------------------------------------------------
# per-method parameter decoders: req(r, out, dec, call) / resp(r, out, dec, call, request)

def _json_values(d: dict) -> None:
    """The objects kept until the registry has learned from them, turned into JSON in place:
    a DUALSTRINGARRAY under "oxid_bindings" (its bindings as text go to
    "oxid_bindings_text"), an OXID (hex text), the OBJREFs of the "interfaces" handed out."""
    dsa = d.get("oxid_bindings")
    if isinstance(dsa, DualStringArray):
        d["oxid_bindings"] = dsa.to_dict()
        d["oxid_bindings_text"] = dsa.bindings_text()
    if isinstance(d.get("oxid"), int):
        d["oxid"] = _hex64(d["oxid"])
    for e in d.get("interfaces", ()):
        if isinstance(e.get("objref"), ObjRef):
            e["objref"] = e["objref"].to_dict()


def _activation_objref(r: NdrReader, clsid_expected: str) -> tuple[dict, dict | None]:
    """An MInterfacePointer holding the ActivationProperties OBJREF_CUSTOM, and its decoded blob."""
    o = read_objref(r)
    blob = None
    if o.flags == OBJREF_CUSTOM and o.clsid == clsid_expected:
        blob = decode_activation_properties(r.buf, o.payload_offset, o.payload_length)
    return o.to_dict(), blob


def _flatten_props(out: dict, blob: dict) -> None:
    """Lift the facts an analyst looks for out of the property list."""
    out["properties"] = blob["properties"]
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


def _finish_oxid_reply(out: dict, dec: "DcomDecoder", call: Call, oxid: int | None, frame: int | None) -> None:
    """Teach the registry an exporter's bindings / IRemUnknown and render OXID values as text."""
    dsa = out.get("oxid_bindings")
    dsa = dsa if isinstance(dsa, DualStringArray) else None
    if oxid is not None:
        dec.registry.learn_oxid(oxid, bindings=dsa, ipid_remunknown=out.get("ipid_remunknown"),
                                authn_hint=out.get("authn_hint"), version=out.get("server_version"), frame=frame)
        if out.get("ipid_remunknown"):
            dec.registry.learn_ipid(out["ipid_remunknown"], IID_IREMUNKNOWN, oxid=oxid, frame=frame,
                                    conn=call.conn, source="activation" if "interfaces" in out else "resolver")
    _json_values(out)


def _activation_req(r: NdrReader, out: dict, dec, call: Call, create: bool) -> None:
    out["orpcthis"] = read_orpcthis(r)
    r.structure = "RemoteCreateInstance" if create else "RemoteGetClassObject"
    if create and r.referent():
        r.structure = "pUnkOuter"
        out["unk_outer"] = objref_summary(r)
    r.structure = "pActProperties"
    if r.referent():
        out["act_properties"], blob = _activation_objref(r, CLSID_ACTIVATION_PROPERTIES_IN)
        if blob is not None:
            for p in blob["properties"]:       # nothing to learn from a request
                _json_values(p)
            _flatten_props(out, blob)


def _activation_resp(r: NdrReader, out: dict, dec, call: Call, request: dict) -> None:
    out["orpcthat"] = read_orpcthat(r)
    r.structure = "ppActProperties"
    blob = None
    if r.referent():
        out["act_properties"], blob = _activation_objref(r, CLSID_ACTIVATION_PROPERTIES_OUT)
    r.structure = "HRESULT"
    out["hresult"] = r.u32()
    if blob is None:
        return
    _flatten_props(out, blob)
    frame = _frame(call, 1)
    oxid = out.get("oxid")
    requested = request.get("requested_iids") or []
    for i, e in enumerate(out.get("interfaces", ())):
        o = e.get("objref")
        if o is not None and o.std is not None:
            iid = e.get("iid") or (requested[i] if i < len(requested) else None) or o.iid
            dec.registry.learn_objref(o, iid=iid, frame=frame, conn=call.conn, source="activation")
            e["ipid"] = o.std.ipid
    for p in blob["properties"]:
        _json_values(p)
    _finish_oxid_reply(out, dec, call, oxid if isinstance(oxid, int) else None, frame)


def _create_req(r, out, dec, call):
    _activation_req(r, out, dec, call, True)


def _getclass_req(r, out, dec, call):
    _activation_req(r, out, dec, call, False)


def _remote_activation_req(r: NdrReader, out: dict, dec, call: Call) -> None:
    out["orpcthis"] = read_orpcthis(r)
    r.structure = "RemoteActivation"
    out["clsid"] = r.guid()
    out["class_name"] = _if.clsid_name(out["clsid"])
    if r.referent():
        out["object_name"] = r.wstring()
    if r.referent():
        out["object_storage"] = objref_summary(r)
    out["client_imp_level"] = r.u32()
    out["mode"] = r.u32()
    n_ifs = r.u32()
    iids = r.conformant_guids("RemoteActivation.pIIDs") if r.referent() else []
    if len(iids) != n_ifs:
        r.fail(f"Interfaces {n_ifs} but {len(iids)} IIDs")
    out["requested_iids"] = iids
    out["requested_interfaces"] = [_if.interface_name(i) for i in iids]
    n_seq = r.u16()
    seqs = r.u16_array(r.count(2, "aRequestedProtseqs"))
    if len(seqs) != n_seq:
        r.fail(f"cRequestedProtseqs {n_seq} but {len(seqs)} protocol sequences")
    out["requested_protseqs"] = seqs


def _returned_interfaces(objrefs: list[ObjRef | None], iids: list, hrs: list, dec, call: Call, source: str, *,
                         with_ipid: bool = False) -> list[dict]:
    """The interface pointers a reply hands out (RemoteActivation, RemQueryInterface2), one
    entry each: the IID the request asked for at that position (else the OBJREF's own), its
    HRESULT and the OBJREF, which the registry learns."""
    frame = _frame(call, 1)
    out = []
    for i, o in enumerate(objrefs):
        iid = iids[i] if i < len(iids) else (o.iid if o else None)
        e = {"iid": iid, "interface": _if.interface_name(iid), "hresult": hrs[i] if i < len(hrs) else None}
        if o is not None:
            e["objref"] = o.to_dict()
            if with_ipid and o.std is not None:
                e["ipid"] = o.std.ipid
            dec.registry.learn_objref(o, iid=iid, frame=frame, conn=call.conn, source=source)
        out.append(e)
    return out


def _remote_activation_resp(r: NdrReader, out: dict, dec, call: Call, request: dict) -> None:
    out["orpcthat"] = read_orpcthat(r)
    r.structure = "RemoteActivation"
    oxid = r.u64()
    out["oxid"] = oxid
    if r.referent():
        out["oxid_bindings"] = ndr_dualstringarray(r)
    r.structure = "RemoteActivation"
    out["ipid_remunknown"] = r.guid()
    out["authn_hint"] = r.u32()
    out["server_version"] = f"{r.u16()}.{r.u16()}"
    out["hresult"] = r.u32()
    objrefs = interface_pointers(r, "ppInterfaceData")
    hrs = r.conformant_u32s("pResults")
    out["status"] = r.u32()
    out["interfaces"] = _returned_interfaces(objrefs, request.get("requested_iids") or [], hrs, dec, call,
                                             "activation", with_ipid=True)
    _finish_oxid_reply(out, dec, call, oxid, _frame(call, 1))


def _resolve_oxid_req(r: NdrReader, out: dict, dec, call: Call) -> None:
    r.structure = "ResolveOxid"
    out["oxid"] = _hex64(r.u64())
    n = r.u16()
    seqs = r.u16_array(r.count(2, "arRequestedProtseqs"))
    if len(seqs) != n:
        r.fail(f"cRequestedProtseqs {n} but {len(seqs)} protocol sequences")
    out["requested_protseqs"] = seqs


def _resolve_oxid_resp(r: NdrReader, out: dict, dec, call: Call, request: dict, v2: bool = False) -> None:
    r.structure = "ResolveOxid2" if v2 else "ResolveOxid"
    if r.referent():
        out["oxid_bindings"] = ndr_dualstringarray(r)
        r.structure = "ResolveOxid2" if v2 else "ResolveOxid"
    out["ipid_remunknown"] = r.guid()
    out["authn_hint"] = r.u32()
    if v2:
        out["server_version"] = f"{r.u16()}.{r.u16()}"
    out["status"] = r.u32()
    oxid = request.get("oxid")
    ok = out["status"] == 0
    _finish_oxid_reply(out, dec, call, int(oxid, 16) if (oxid and ok) else None, _frame(call, 1))


def _resolve_oxid2_resp(r, out, dec, call, request):
    _resolve_oxid_resp(r, out, dec, call, request, True)


def _simple_ping_req(r: NdrReader, out: dict, dec, call: Call) -> None:
    r.structure = "SimplePing"
    out["set_id"] = _hex64(r.u64())


def _status_resp(r: NdrReader, out: dict, dec, call: Call, request: dict) -> None:
    r.structure = "error_status_t"
    out["status"] = r.u32()


def _complex_ping_req(r: NdrReader, out: dict, dec, call: Call) -> None:
    r.structure = "ComplexPing"
    out["set_id"] = _hex64(r.u64())
    out["sequence_num"] = r.u16()
    n_add = r.u16()
    n_del = r.u16()
    add = r.u64_array(r.count(8, "AddToSet")) if r.referent() else []
    rem = r.u64_array(r.count(8, "DelFromSet")) if r.referent() else []
    if len(add) != n_add or len(rem) != n_del:
        r.fail(f"cAddToSet {n_add} / cDelFromSet {n_del} but {len(add)} / {len(rem)} OIDs")
    out["add_to_set"] = [_hex64(v) for v in add]
    out["del_from_set"] = [_hex64(v) for v in rem]


def _complex_ping_resp(r: NdrReader, out: dict, dec, call: Call, request: dict) -> None:
    r.structure = "ComplexPing"
    out["set_id"] = _hex64(r.u64())
    out["ping_backoff_factor"] = r.u16()
    out["status"] = r.u32()


def _server_alive2_resp(r: NdrReader, out: dict, dec, call: Call, request: dict) -> None:
    r.structure = "ServerAlive2"
    out["server_version"] = f"{r.u16()}.{r.u16()}"
    if r.referent():
        dsa = ndr_dualstringarray(r)
        out["or_bindings"] = dsa.to_dict()
        out["or_bindings_text"] = dsa.bindings_text()
    r.structure = "ServerAlive2"
    r.u32()                                    # pReserved
    out["status"] = r.u32()


def _requested_iids(r: NdrReader, out: dict, what: str) -> None:
    """cIids (unsigned short) and the conformant IID array it counts, as RemQueryInterface
    and RemQueryInterface2 (3.1.1.5.6) both end their requests."""
    n = r.u16()
    iids = r.conformant_guids(what)
    if len(iids) != n:
        r.fail(f"cIids {n} but {len(iids)} IIDs")
    out["iids"] = iids
    out["interfaces"] = [_if.interface_name(i) for i in iids]


def _rem_qi_req(r: NdrReader, out: dict, dec, call: Call) -> None:
    r.structure = "RemQueryInterface"
    out["ipid"] = r.guid()
    e = dec.registry.lookup(out["ipid"])
    out["object_interface"] = e.interface if e else None
    out["refs"] = r.u32()
    _requested_iids(r, out, "RemQueryInterface.iids")


def _rem_qi_resp(r: NdrReader, out: dict, dec, call: Call, request: dict) -> None:
    r.structure = "RemQueryInterface"
    results = []
    if r.referent():
        n = r.count(48, "ppQIResults")
        for _ in range(n):
            r.structure = "REMQIRESULT"
            r.align(8)
            hr = r.u32()
            r.align(8)
            r.need(40)
            std = parse_stdobjref(r.buf, r.pos, r.end)
            r.pos += 40
            results.append((hr, std))
    r.structure = "RemQueryInterface"
    out["hresult"] = r.u32()
    iids = request.get("iids") or []
    frame = _frame(call, 1)
    res = []
    for i, (hr, std) in enumerate(results):
        iid = iids[i] if i < len(iids) else None
        e = {"iid": iid, "interface": _if.interface_name(iid), "hresult": hr}
        if hr & 0x80000000 == 0:
            e["std"] = std.to_dict()
            if iid:
                dec.registry.learn_ipid(std.ipid, iid, oxid=std.oxid, oid=std.oid, frame=frame, conn=call.conn,
                                        source="remqi", public_refs=std.public_refs)
        res.append(e)
    out["results"] = res


def _rem_qi2_req(r: NdrReader, out: dict, dec, call: Call) -> None:
    r.structure = "RemQueryInterface2"
    out["ipid"] = r.guid()
    e = dec.registry.lookup(out["ipid"])
    out["object_interface"] = e.interface if e else None
    _requested_iids(r, out, "RemQueryInterface2.iids")


def _rem_qi2_resp(r: NdrReader, out: dict, dec, call: Call, request: dict) -> None:
    r.structure = "RemQueryInterface2"
    hrs = r.conformant_u32s("RemQueryInterface2.phr")
    objrefs = interface_pointers(r, "RemQueryInterface2.ppMIF")
    out["hresult"] = r.u32()
    out["results"] = _returned_interfaces(objrefs, request.get("iids") or [], hrs, dec, call, "remqi")


def _rem_refs_req(r: NdrReader, out: dict, dec, call: Call) -> None:
    r.structure = "REMINTERFACEREF"
    n = r.u16()
    m = r.count(24, "InterfaceRefs")
    if m != n:
        r.fail(f"cInterfaceRefs {n} but a conformance of {m}", r.pos - 4)
    refs = []
    for _ in range(m):
        ipid = r.guid()
        e = dec.registry.lookup(ipid)
        refs.append({"ipid": ipid, "interface": e.interface if e else None,
                     "public_refs": r.u32(), "private_refs": r.u32()})
    out["interface_refs"] = refs


def _rem_addref_resp(r: NdrReader, out: dict, dec, call: Call, request: dict) -> None:
    r.structure = "RemAddRef"
    out["results"] = r.conformant_u32s("RemAddRef.pResults")
    out["hresult"] = r.u32()


def _hresult_resp(r: NdrReader, out: dict, dec, call: Call, request: dict) -> None:
    r.structure = "HRESULT"
    out["hresult"] = r.u32()


# (interface IID, opnum) -> (request decoder, response decoder); IRemUnknown2 inherits IRemUnknown's.
_DECODERS = {
    (IID_ISYSTEMACTIVATOR, 3): (_getclass_req, _activation_resp),
    (IID_ISYSTEMACTIVATOR, 4): (_create_req, _activation_resp),
    (IID_IACTIVATION, 0): (_remote_activation_req, _remote_activation_resp),
    (IID_IOBJECTEXPORTER, 0): (_resolve_oxid_req, _resolve_oxid_resp),
    (IID_IOBJECTEXPORTER, 1): (_simple_ping_req, _status_resp),
    (IID_IOBJECTEXPORTER, 2): (_complex_ping_req, _complex_ping_resp),
    (IID_IOBJECTEXPORTER, 3): (None, _status_resp),
    (IID_IOBJECTEXPORTER, 4): (_resolve_oxid_req, _resolve_oxid2_resp),
    (IID_IOBJECTEXPORTER, 5): (None, _server_alive2_resp),
    (IID_IREMUNKNOWN, 3): (_rem_qi_req, _rem_qi_resp),
    (IID_IREMUNKNOWN, 4): (_rem_refs_req, _rem_addref_resp),
    (IID_IREMUNKNOWN, 5): (_rem_refs_req, _hresult_resp),
    (IID_IREMUNKNOWN2, 6): (_rem_qi2_req, _rem_qi2_resp),
}


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
        info = _if.interface_by_uuid(iid)
        orpc = info["orpc"] if info is not None else bool(call.ipid)
        key_iid = IID_IREMUNKNOWN if (iid == IID_IREMUNKNOWN2 and call.opnum in (3, 4, 5)) else iid
        req_fn, resp_fn = _DECODERS.get((key_iid, call.opnum), (None, None))
        structured = (key_iid, call.opnum) in _DECODERS
        little = (call.drep & 0x10) != 0
        decoded: dict = {}
        request: dict = {}
        ok = [False, False]

        if call.req_stub is not None:
            ok[0] = self._decode_stub(call, 0, request, little, orpc, structured, req_fn)
            decoded["request"] = request

        if call.resp_stub is not None and call.fault is None:
            response: dict = {}
            # the response decoder also sees the request: a reply's arrays follow what was asked
            ok[1] = self._decode_stub(call, 1, response, little, orpc, structured, resp_fn, request)
            decoded["response"] = response

        # every interface pointer on the wire teaches the registry, whoever carries it
        for direction, stub in ((0, call.req_stub), (1, call.resp_stub)):
            if not stub or (structured and ok[direction]) or OBJREF_SIGNATURE not in stub:
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
                    frame=_frame(call, direction), conn=call.conn, structure="OBJREF"))

        if notes:
            decoded["notes"] = notes
        if decoded:
            call.decoded = decoded

    def _decode_stub(self, call: Call, direction: int, out: dict, little: bool, orpc: bool, structured: bool,
                     fn, *request) -> bool:
        """One direction's stub into `out`: ORPCTHIS / ORPCTHAT (2.2.13) first on an ORPC
        interface, then the method's decoder, or where its parameters start for a method that
        has none. False after a DecodeError, which becomes an error record of the call; what
        was decoded before it stays in `out`."""
        r = NdrReader(call.resp_stub if direction else call.req_stub, little_endian=little)
        try:
            if orpc:
                if direction:
                    out["orpcthat"] = read_orpcthat(r)
                else:
                    out["orpcthis"] = read_orpcthis(r)
            if fn is not None:
                fn(r, out, self, call, *request)
            elif not structured:
                out["params_offset"] = r.pos
            return True
        except DecodeError as e:
            self._error(call, direction, e)
            return False

    def _error(self, call: Call, direction: int, e: DecodeError) -> None:
        call.errors.append(ErrorRecord(stage="dcom", reason=e.reason, frame=_frame(call, direction),
                                       conn=call.conn, structure=e.structure, offset=e.offset))
