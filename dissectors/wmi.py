"""The WMI layer (MS-WMI 3.1.4; IDL in section 6): every parameter of every WMI call.

The parameters are read and written by the table interpreter (dissectors/interpreter.py)
from the signatures of wmiscope/spec/interfaces.py: the table is the program. This module
holds what only code can do for MS-WMI, registered there as hooks: IWbemClassObject and
IWbemContext travel as OBJREF_CUSTOM whose payload is an MS-WMIO EncodingUnit (MS-WMI
2.2.4) or an IWbemContextBuffer (2.2.13), decoded once per distinct payload and shown
as JSON once per object.

Three parameters carry MS-WMI encodings inside NDR byte arrays, decoded with the state
the caller keeps across calls (`WmiState`):
  IWbemWCOSmartEnum::Next pBuffer        an ObjectArray (2.2.14, 3.1.4.7.1), against the
                                         enumeration's ClassCache
  IWbemRemoteRefresher::RemoteRefresh    WBEM_REFRESHED_OBJECT blobs (2.2.15-2.2.19), against
  paObjects                              the template of their request id
  IWbemObjectSink::Indicate apObjArray   after the sink answered WBEM_S_NEW_STYLE (3.1.4.2.1)
                                         the objects come as an ObjectArray (bPacketType 0)
                                         instead of interface pointers; MS-WMI does not show
                                         that call's NDR framing, so a stub that is not the
                                         IDL's array of interface pointers is searched for the
                                         ObjectArray header ("WBEMDATA").

`WmiDecoder.decode_call(call)` fills call.decoded["request"/"response"]["params"] and
["response"]["return"]; its layout is in `WmiDecoder`'s docstring.  Malformed stubs
become ErrorRecord(stage="wmi"); an error inside an object (the OBJREF or its payload)
does not stop the parameters after it, an NDR framing error does (they are listed as
not decoded).
"""

from __future__ import annotations

import struct
import weakref
from typing import Protocol

from ..formats import context as _context
from ..formats import object_array as _oa
from ..formats import refresher as _refresher
from ..formats import wmio
from ..formats.errors import DecodeError
from ..formats.objref import (CLSID_WBEM_CLASS_OBJECT_MARSHALER, CLSID_WBEM_CONTEXT_MARSHALER, OBJREF_CUSTOM,
                              build_objref)
from ..spec import interfaces as _if
from . import interpreter as _ndr
from .interpreter import (
    REF_TO_NULL, InterfacePointer, StubDecode, decode_direction, encode_request, encode_response, located,
    method_plan, plain,
)
from .ndr import NdrReader
from .orpc import read_orpcthat, read_orpcthis
from .records import Call, ErrorRecord, guarded
from .records import call_frame as _frame

__all__ = [
    "WmiDecoder", "WmiState", "DefaultWmiState", "InterfacePointer", "StubDecode",
    "decode_stub", "encode_request", "encode_response", "plain", "method_plan", "REF_TO_NULL", "object_json",
    "IID_IWBEM_CLASS_OBJECT", "IID_IWBEM_CONTEXT",
]

IID_IWBEM_CLASS_OBJECT = _if.uuid_of("IWbemClassObject")
IID_IWBEM_CONTEXT = _if.uuid_of("IWbemContext")
_WBEMDATA = b"WBEMDATA"


# ---------------------------------------------------------------------------------------
# the state kept across calls

class WmiState(Protocol):
    def class_cache(self, call) -> _oa.ClassCache: ...

    def refresher_template(self, call, request_id: int): ...


class DefaultWmiState:
    """No memory across calls: a fresh ClassCache per call, no refresher template."""

    def class_cache(self, call) -> _oa.ClassCache:
        return _oa.ClassCache()

    def refresher_template(self, call, request_id: int):
        return None


_JSON_OF: dict[int, tuple] = {}     # id(object) -> (weak reference, its JSON), for shared objects


def _object_json_shared(obj):
    """wmio.to_json, once per object: objects from the payload cache are shared by every
    call that carried the same bytes, and rendering a class costs more than decoding
    its JSON text. Keyed by identity (the dataclasses are unhashable), checked through
    a weak reference so a recycled id never returns another object's JSON."""
    hit = _JSON_OF.get(id(obj))
    if hit is not None and hit[0]() is obj:
        return hit[1]
    out = wmio.to_json(obj)
    if len(_JSON_OF) >= 4096:
        _JSON_OF.clear()
    key = id(obj)
    # The entry goes with its object, so the JSON kept is that of objects still held
    # (by the payload cache or a record), not of up to 4096 dead ones.
    _JSON_OF[key] = (weakref.ref(obj, lambda _, key=key: _JSON_OF.pop(key, None)), out)
    return out



def _wmio_objref(v) -> bytes:
    return build_objref(IID_IWBEM_CLASS_OBJECT, OBJREF_CUSTOM, clsid=CLSID_WBEM_CLASS_OBJECT_MARSHALER,
                        payload=wmio.build_encoding_unit(v))


def _object_summary(obj) -> dict | None:
    if isinstance(obj, wmio.WmiInstance):
        return {"object": "instance", "class": obj.class_name, "path": obj.path}
    if isinstance(obj, wmio.WmiClass):
        return {"object": "class", "class": obj.name, "superclass": obj.superclass}
    if isinstance(obj, _context.WbemContext):
        return {"object": "context", "properties": [p.to_json() for p in obj.properties]}
    return None


def summary_json(obj) -> dict | None:
    """A WmiClass / WmiInstance as the one-line summaries read it (report.values.props):
    the object_json layout cut to its kind, class and property values; None for other
    objects. The calls table shows no more of an object, and most objects it decodes
    it never renders in full."""
    if isinstance(obj, wmio.WmiInstance):
        values = obj.values
        return {"kind": "instance", "class": obj.class_name,
                "properties": {p.name: {"value": wmio.json_value(values.get(p.name))}
                               for p in obj.class_.properties}}
    if isinstance(obj, wmio.WmiClass):
        return {"kind": "class", "name": obj.name}
    return None


def object_json(obj):
    """A Param's "object" as JSON: WmiClass / WmiInstance by wmio.to_json, contexts and
    ObjectArrays by their own to_json, lists item by item."""
    if obj is None:
        return None
    if isinstance(obj, (wmio.WmiClass, wmio.WmiInstance)):
        return _object_json_shared(obj)
    if isinstance(obj, list):
        return [object_json(x) for x in obj]
    return obj.to_json()



def _object_array_json(oa: _oa.ObjectArray) -> dict:
    objs = []
    for obj, kind, cid in zip(oa.objects, oa.object_types, oa.class_ids):
        e = {"bObjectType": _oa.ObjectType(kind).name}
        if cid is not None:
            e["classID"] = str(cid)
        e.update(_object_summary(obj) or {})
        objs.append(e)
    return {"bPacketType": oa.packet_type_name, "dwNumObjects": len(oa.objects), "objects": objs}



def _parse_array_at(buf: bytes, start: int, end: int, cache) -> _oa.ObjectArray:
    return located("ObjectArray", start, _oa.parse_object_array, buf[start:end], cache, 0)


def _special_object_array(pp, v, d, ctx) -> None:
    """IWbemWCOSmartEnum::Next pBuffer: an ObjectArray (2.2.14) against the enumeration's cache."""
    if not v or not ctx.objects:
        return
    cache = ctx.state.class_cache(ctx.call)
    try:
        oa = _parse_array_at(ctx.buf, v.offset, v.offset + len(v), cache)
    except DecodeError as e:
        ctx.soft.append(e)
        return
    d["object"] = oa
    d["value"]["ObjectArray"] = _object_array_json(oa)
    returned = ctx.params.get("puReturned")
    if isinstance(returned, int) and returned != len(oa.objects):
        ctx.notes.append(f"puReturned {returned} but the ObjectArray holds {len(oa.objects)} objects")


def _special_refreshed(pp, v, d, ctx) -> None:
    """IWbemRemoteRefresher::RemoteRefresh paObjects: each blob against its request's template."""
    if not v or not ctx.objects:
        return
    objects = []
    for i, (item, j) in enumerate(zip(v, d["value"])):
        rid = item.get("m_lRequestId")
        btype = item.get("m_lBlobType")
        blob = item.get("m_pbBlob") or b""
        decoded = None
        if btype != _refresher.WbemInstanceBlobType.WBEM_BLOB_TYPE_ERROR:
            template = ctx.state.refresher_template(ctx.call, rid)
            if template is None:
                ctx.notes.append(f"WBEM_REFRESHED_OBJECT[{i}] (m_lRequestId {rid}): no refresher template "
                                 f"known for this request id; blob kept raw")
                j["template"] = None
            else:
                try:
                    decoded = located("WBEM_REFRESHED_OBJECT.m_pbBlob", getattr(blob, "offset", 0),
                                       _refresher.RefreshedObject(rid, btype, bytes(blob)).decode, template)
                except DecodeError as e:
                    ctx.soft.append(e)
                else:
                    insts = decoded if isinstance(decoded, list) else [decoded]
                    j["instances"] = [_object_summary(x) for x in insts if x is not None]
        objects.append(decoded)
    d["object"] = objects


def _indicate_object_array(pp, start: int, r: NdrReader, ctx) -> dict | None:
    """IWbemObjectSink::Indicate whose apObjArray is no array of interface pointers: the
    ObjectArray of an optimized Indicate (bPacketType 0), found by its header."""
    buf = ctx.buf
    i = buf.find(_WBEMDATA, start + 4)
    if i < 0 or buf[i - 4:i] != b"\x00\x00\x00\x00":
        return None
    at = i - 4
    try:
        size1 = struct.unpack_from("<I", buf, i + 12)[0]
        oa = _parse_array_at(buf, at, min(len(buf), at + 26 + size1), ctx.state.class_cache(ctx.call))
    except (DecodeError, struct.error):
        return None
    end = at + oa.size
    r.pos = end
    ctx.notes.append(f"IWbemObjectSink::Indicate carries an ObjectArray (optimized Indicate, "
                     f"{len(oa.objects)} objects) at offset {at}; {at - start} bytes of framing before it")
    return {"name": pp.name, "type": pp.type, "encoding": "ObjectArray", "offset": at, "length": end - at,
            "pad": 0, "value": {"ObjectArray": _object_array_json(oa), "framing": buf[start:at].hex()},
            "object": oa}


# special -> fn(pp, value, param dict, ctx): decodes what the parameter's NDR value carries;
# special -> fn(pp, start, reader, ctx): reads the parameter some other way when its IDL form
# does not decode (a param dict, or None to report the IDL form's error).

def _prepare_object_array(v, scope: dict, values: dict):
    """IWbemWCOSmartEnum::Next pBuffer given as objects: the ObjectArray built from them."""
    if not isinstance(v, (list, tuple)):
        return v
    scope.setdefault("puReturned", len(v))
    return _oa.build_object_array(list(v), _oa.PacketType.NEXT)


def _prepare_refreshed(v, scope: dict, values: dict):
    """RemoteRefresh paObjects given as RefreshedObject items: the IDL's structures."""
    if not isinstance(v, (list, tuple)):
        return v
    return [{"m_lRequestId": x.request_id, "m_lBlobType": x.blob_type, "m_lBlobLength": len(x.blob),
             "m_pbBlob": x.blob} if isinstance(x, _refresher.RefreshedObject) else x for x in v]


# MS-WMI's hooks into the table interpreter: the payloads of its custom-marshaled objects
# (MS-WMI 2.2.4, 2.2.13), and the parameters of interfaces.SPECIAL_PARAMS.
_ndr.PAYLOAD_DECODERS.update({
    CLSID_WBEM_CLASS_OBJECT_MARSHALER: ("EncodingUnit", lambda b: wmio.parse_encoding_unit(b, 0)),
    CLSID_WBEM_CONTEXT_MARSHALER: ("IWbemContextBuffer", lambda b: _context.parse_context(b, 0)),
})
_ndr.OBJREF_ENCODERS += [((wmio.WmiClass, wmio.WmiInstance), _wmio_objref),
                         ((_context.WbemContext,), _context.build_context_objref)]
_ndr.OBJECT_SUMMARIES.append(_object_summary)
_ndr.PARAM_HOOKS.update({"object_array": _special_object_array, "refreshed_objects": _special_refreshed})
_ndr.PARAM_FALLBACKS["indicate"] = _indicate_object_array
_ndr.ENCODE_HOOKS.update({"object_array": _prepare_object_array, "refreshed_objects": _prepare_refreshed})


def decode_stub(interface: str, method, stub: bytes, *, response: bool = False, params_offset: int | None = None,
                little_endian: bool = True, state: WmiState | None = None, call=None) -> StubDecode:
    """Decode one stub of a WMI method (ORPCTHIS / ORPCTHAT read first unless params_offset is given)."""
    plan = method_plan(interface, method)
    if plan is None or plan.error:
        raise KeyError(f"{interface}::{method}: " + (plan.error if plan else "no such method in the table"))
    header = None
    if params_offset is None:
        r = NdrReader(stub, little_endian=little_endian)
        try:
            header = read_orpcthat(r) if response else read_orpcthis(r)
        except DecodeError as e:
            return StubDecode([], None, {}, [e], [])
        params_offset = r.pos
    out = decode_direction(plan, stub, params_offset, little_endian, state or DefaultWmiState(), call, response)
    out.values = {k: plain(v) for k, v in out.values.items()}
    out.header = header
    return out


class WmiDecoder:
    """Decodes the parameters of WMI calls (interface group "wmi") after the DCOM layer.

    call.decoded gains, per direction decoded:
      ["request"]["params"]  = [Param, ...]   the [in] / [in,out] parameters in wire order
      ["response"]["params"] = [Param, ...]   the [out] / [in,out] parameters in wire order
      ["response"]["return"] = {"value": 0, "name": "WBEM_S_NO_ERROR",
                                "text": "Indicates a successful completion to the method call.",
                                "offset": N, "pad": N}
      ["notes"] += [...]                      odd but legal things (trailing bytes, non-zero padding,
                                              blobs kept raw for want of a template)
    Param = {"name", "type" (table type string), "offset", "length" (in the stub, the
    deferred pointees included), "pad" (alignment bytes skipped right before it), "value"
    (JSON-able: int / str / None / list / dict for structures and unions ({arm: value}),
    {"value", "name", "text"} for enumerations and HRESULTs, {"flags", "names"} for flag
    sets, {"length", "hex"[, "truncated"]} for byte arrays, an ISO 8601 UTC string for a
    FILETIME, and for an interface pointer {"objref": kind, "iid", "interface", "ipid",
    "bindings", "clsid", "object": "class"|"instance"|"context", "class", "path", ...}),
    and when present "object" (WmiClass | WmiInstance | WbemContext | ObjectArray, or a list
    for arrays; not JSON), "objref" (the OBJREF as dcom.ObjRef.to_dict() plus "ipid", for a
    single interface pointer), "objrefs" (the OBJREFs inside an array or a structure),
    "error" ({"structure", "offset", "reason"})}.
    """

    def __init__(self, state: WmiState | None = None, *, objects: bool = True):
        self.state = state if state is not None else DefaultWmiState()
        # objects=False: interface pointers are shown, but the MS-WMIO objects and
        # ObjectArrays inside them are not decoded (the outputs that never show them
        # - the calls table, stats - need not pay for them).
        self.objects = objects

    def decode_call(self, call: Call) -> None:
        guarded("wmi", self._decode, call)

    def _decode(self, call: Call) -> None:
        info = _if.interface_by_uuid(call.interface_uuid)
        if info is None or info["group"] != "wmi" or info["local"] or call.decoded is None:
            return
        plan = method_plan(info["name"], call.opnum) if call.opnum is not None else None
        decoded = call.decoded
        if plan is None or plan.error:
            decoded.setdefault("notes", []).append(
                f"{info['name']} opnum {call.opnum}: " + (plan.error if plan else "no such method; not decoded"))
            return
        little = (call.drep & 0x10) != 0
        for direction, stub in ((0, call.req_stub), (1, call.resp_stub)):
            part = decoded.get("request" if direction == 0 else "response")
            if stub is None or part is None or "params_offset" not in part:
                continue
            if direction == 1 and call.fault is not None:
                continue
            out = decode_direction(plan, stub, part["params_offset"], little, self.state, call, direction == 1,
                                    self.objects)
            part["params"] = out.params
            if direction == 1:
                part["return"] = out.ret
            if out.notes:
                decoded.setdefault("notes", []).extend(out.notes)
            frame = _frame(call, direction)
            for e in out.errors:
                call.errors.append(ErrorRecord(stage="wmi", reason=e.reason, frame=frame, conn=call.conn,
                                               structure=e.structure, offset=e.offset,
                                               kind="wmi." + getattr(e, "kind", "stub_malformed")))


