"""Activation properties (MS-DCOM 2.2.22): the blobs IRemoteSCMActivator calls carry.

RemoteCreateInstance / RemoteGetClassObject send and receive one MInterfacePointer whose
OBJREF_CUSTOM (CLSID_ActivationPropertiesIn / Out) holds an activation properties BLOB:
dwSize, dwReserved, a CustomHeader naming each property by CLSID, then the properties,
each an NDR type-serialized structure (MS-RPCE 2.2.6). `decode_activation_properties`
reads the ones an analyst needs (class, requested interfaces, server name, protocol
sequences, the reply's OXID, bindings and interface pointers); `build_activation_properties`
writes a blob for the sample generator. The MInterfacePointer readers here are shared with
the DCOM method decoders.
"""

from __future__ import annotations

import struct

from ..formats.errors import DecodeError
from ..formats.objref import DualStringArray, ObjRef, parse_dualstringarray, parse_objref
from ..spec import interfaces as _if
from .ndr import GUID_NULL, NdrReader, NdrWriter

__all__ = ["ACTIVATION_PROPERTIES", "decode_activation_properties", "build_activation_properties",
           "serialize_type", "read_objref", "objref_summary", "interface_pointers", "ndr_dualstringarray",
           "MAX_ACTPROP_LIMIT"]

MAX_ACTPROP_LIMIT = 10                          # CustomHeader.cIfs range (2.2.28.1)
_U32 = struct.Struct("<I")


def _serialized(buf: bytes, p: int, end: int, structure: str) -> NdrReader:
    """A reader over one type-serialized structure: common header (2.2.6.1) + private header (2.2.6.2)."""
    if p + 16 > end:
        raise DecodeError(structure, p, f"need 16 bytes of serialization header, {max(end - p, 0)} left")
    version, endian = buf[p], buf[p + 1]
    if version != 1:
        raise DecodeError(structure, p, f"serialization version {version}, expected 1")
    if endian not in (0x10, 0x00):
        raise DecodeError(structure, p + 1, f"endianness 0x{endian:02x} is neither 0x10 nor 0x00")
    little = endian == 0x10
    hlen = struct.unpack_from("<H" if little else ">H", buf, p + 2)[0]
    if hlen != 8:
        raise DecodeError(structure, p + 2, f"CommonHeaderLength {hlen}, expected 8")
    blen = struct.unpack_from("<I" if little else ">I", buf, p + 8)[0]
    start = p + 16
    if blen > end - start:
        raise DecodeError(structure, p + 8, f"ObjectBufferLength {blen} exceeds the {end - start} bytes left")
    return NdrReader(buf, start, start + blen, base=start, little_endian=little, structure=structure)


def read_objref(r: NdrReader) -> ObjRef:
    """An MInterfacePointer pointee read in place: the OBJREF it carries."""
    off, n = r.interface_pointer_data()
    return parse_objref(r.buf, off, off + n)


def objref_summary(r: NdrReader) -> dict:
    """An MInterfacePointer pointee read in place, summarized by its OBJREF."""
    return read_objref(r).to_dict()


def interface_pointers(r: NdrReader, what: str) -> list[ObjRef | None]:
    """A conformant array of unique MInterfacePointer* (2.2.14): the referent IDs, then
    the pointee of each non-NULL one in order; a NULL pointer stays None."""
    refs = r.u32_array(r.count(4, what))
    return [read_objref(r) if ref else None for ref in refs]


def _prop_instantiation(r: NdrReader) -> dict:
    clsid = r.guid()
    d = {"class_id": clsid, "class_name": _if.clsid_name(clsid), "class_context": r.u32(),
         "activation_flags": r.u32(), "is_surrogate": r.i32()}
    n_iids = r.u32()
    d["instantiation_flags"] = r.u32()
    piid = r.referent()
    d["this_size"] = r.u32()
    d["client_version"] = f"{r.u16()}.{r.u16()}"
    iids = r.conformant_guids("InstantiationInfoData.pIID") if piid else []
    if len(iids) != n_iids:
        r.fail(f"cIID {n_iids} but {len(iids)} IIDs")
    d["requested_iids"] = iids
    return d


def _prop_special(r: NdrReader) -> dict:
    d = {"session_id": r.u32(), "remote_this_session_id": r.i32(), "client_impersonating": r.i32(),
         "partition_id_present": r.i32(), "default_authn_level": r.u32(), "partition": r.guid(),
         "prt_flags": r.u32(), "orig_class_context": r.u32(), "flags": r.u32()}
    return d


def _prop_activation_context(r: NdrReader) -> dict:
    d = {"client_ok": r.i32()}
    r.i32()
    r.u32()
    r.u32()
    client = r.referent()
    proto = r.referent()
    if client:
        d["client_context"] = objref_summary(r)
    if proto:
        d["prototype_context"] = objref_summary(r)
    return d


def _prop_location(r: NdrReader) -> dict:
    name = r.referent()
    d = {"process_id": r.u32(), "apartment_id": r.u32(), "context_id": r.u32()}
    if name:
        d["machine_name"] = r.wstring()
    return d


def _prop_security(r: NdrReader) -> dict:
    d = {"authn_flags": r.u32()}
    server_info = r.referent()
    reserved = r.referent()
    if server_info:                            # COSERVERINFO (2.2.22.2.7.1)
        r.structure = "COSERVERINFO"
        r.u32()
        name = r.referent()
        auth_info = r.referent()
        r.u32()
        if name:
            d["server_name"] = r.wstring()
        if auth_info:                          # COAUTHINFO: MUST be NULL; decoded when sent anyway
            r.structure = "COAUTHINFO"
            a = {"authn_svc": r.u32(), "authz_svc": r.u32()}
            princ = r.referent()
            a["authn_level"] = r.u32()
            a["impersonation_level"] = r.u32()
            identity = r.referent()
            a["capabilities"] = r.u32()
            if princ:
                a["server_princ_name"] = r.wstring()
            d["auth_info"] = a
            if identity:                       # COAUTHIDENTITY carries a password: not decoded, said so
                d["auth_identity"] = "present, not decoded"
                return d
    if reserved:
        r.structure = "SecurityInfoData"
        r.u32()
    return d


def _scm_info(r: NdrReader, structure: str, read_info) -> dict:
    """ScmRequestInfoData (2.2.22.2.4) and ScmReplyInfoData (2.2.22.2.8) share one layout:
    pdwReserved (a unique DWORD*, MUST be NULL) then a unique pointer to the custom
    structure, whose fields `read_info(r, d)` puts into the returned dict."""
    reserved = r.referent()
    info = r.referent()
    d: dict = {}
    if reserved:
        r.u32()
    if info:
        r.structure = structure
        read_info(r, d)
    return d


def _prop_scm_request(r: NdrReader) -> dict:
    return _scm_info(r, "customREMOTE_REQUEST_SCM_INFO", _remote_request_scm_info)


def _remote_request_scm_info(r: NdrReader, d: dict) -> None:
    """customREMOTE_REQUEST_SCM_INFO (2.2.22.2.4.1)."""
    d["client_imp_level"] = r.u32()
    n = r.u16()
    ref = r.referent()
    seqs = r.u16_array(r.count(2, "pRequestedProtseqs")) if ref else []
    if len(seqs) != n:
        r.fail(f"cRequestedProtseqs {n} but {len(seqs)} protocol sequences")
    d["requested_protseqs"] = seqs


def ndr_dualstringarray(r: NdrReader) -> DualStringArray:
    """DUALSTRINGARRAY as an NDR conformant structure: conformance, then the structure."""
    r.structure = "DUALSTRINGARRAY"
    n = r.count(2, "DUALSTRINGARRAY.aStringArray")
    start = r.pos
    dsa, end = parse_dualstringarray(r.buf, start, r.end, little_endian=r.little)
    if dsa.num_entries != n:
        r.fail(f"wNumEntries {dsa.num_entries} does not match the conformance {n}", start)
    r.pos = end
    return dsa


def _prop_props_out(r: NdrReader) -> dict:
    n = r.u32()
    piid, phr, pintf = r.referent(), r.referent(), r.referent()
    iids = r.conformant_guids("PropsOutInfo.piid") if piid else []
    hrs = r.conformant_u32s("PropsOutInfo.phresults") if phr else []
    objrefs = interface_pointers(r, "PropsOutInfo.ppIntfData") if pintf else []
    if not len(iids) == len(hrs) == len(objrefs) == n:
        r.fail(f"cIfs {n} but {len(iids)} IIDs, {len(hrs)} HRESULTs, {len(objrefs)} interface pointers")
    out = []
    for iid, hr, objref in zip(iids, hrs, objrefs):
        e = {"iid": iid, "hresult": hr, "interface": _if.interface_name(iid)}
        if objref is not None:
            e["objref"] = objref               # an ObjRef until the reply's decoder has learned it
        out.append(e)
    return {"interfaces": out}


def _prop_scm_reply(r: NdrReader) -> dict:
    return _scm_info(r, "customREMOTE_REPLY_SCM_INFO", _remote_reply_scm_info)


def _remote_reply_scm_info(r: NdrReader, d: dict) -> None:
    """customREMOTE_REPLY_SCM_INFO (2.2.22.2.8.1)."""
    d["oxid"] = r.u64()
    bindings = r.referent()
    d["ipid_remunknown"] = r.guid()
    d["authn_hint"] = r.u32()
    d["server_version"] = f"{r.u16()}.{r.u16()}"
    if bindings:
        d["oxid_bindings"] = ndr_dualstringarray(r)


def _prop_instance(r: NdrReader) -> dict:
    name = r.referent()
    d = {"mode": r.u32()}
    rot, stg = r.referent(), r.referent()
    if name:
        d["file_name"] = r.wstring()
    if rot:
        d["rot"] = objref_summary(r)
    if stg:
        d["storage"] = objref_summary(r)
    return d


# CLSID of a property (CustomHeader.pclsid) -> (spec name, decoder of its NDR body)
ACTIVATION_PROPERTIES = {
    _if.uuid_of(clsid): (name, fn) for clsid, name, fn in (
        ("InstantiationInfo", "InstantiationInfoData", _prop_instantiation),
        ("SpecialSystemProperties", "SpecialPropertiesData", _prop_special),
        ("ActivationContextInfo", "ActivationContextInfoData", _prop_activation_context),
        ("ServerLocationInfo", "LocationInfoData", _prop_location),
        ("SecurityInfo", "SecurityInfoData", _prop_security),
        ("ScmRequestInfo", "ScmRequestInfoData", _prop_scm_request),
        ("InstanceInfo", "InstanceInfoData", _prop_instance),
        ("ActivationPropertiesOut", "PropsOutInfo", _prop_props_out),    # CLSID_PropsOutInfo is the same
        ("ScmReplyInfo", "ScmReplyInfoData", _prop_scm_reply))
}


def decode_activation_properties(buf: bytes, offset: int, length: int) -> dict:
    """The activation properties BLOB (2.2.22) held by an OBJREF_CUSTOM of
    CLSID_ActivationPropertiesIn/Out: dwSize, dwReserved, CustomHeader, properties.

    Returns {"total_size", "destination_context", "properties": [{"name", "clsid",
    "offset", "size", ...fields}]}; the values the registry learns from stay objects
    (DUALSTRINGARRAY under "oxid_bindings", int "oxid", ObjRef under "interfaces"
    "objref") until the caller turns them into JSON (`_json_values`)."""
    end = offset + length
    if offset + 8 > end:
        raise DecodeError("ActivationPropertiesBlob", offset, "truncated dwSize / dwReserved")
    size = _U32.unpack_from(buf, offset)[0]
    if size > length - 8:
        raise DecodeError("ActivationPropertiesBlob", offset, f"dwSize {size} exceeds the {length - 8} bytes of the OBJREF")
    end = offset + 8 + size
    hdr_at = offset + 8
    r = _serialized(buf, hdr_at, end, "CustomHeader")
    total = r.u32()
    header_size = r.u32()
    r.u32()
    dest = r.u32()
    n = r.u32()
    if not 1 <= n <= MAX_ACTPROP_LIMIT:
        r.fail(f"cIfs {n} outside 1..{MAX_ACTPROP_LIMIT}", r.pos - 4)
    r.guid()                                   # classInfoClsid: GUID_NULL
    pclsid, psizes, preserved = r.referent(), r.referent(), r.referent()
    clsids = r.conformant_guids("CustomHeader.pclsid") if pclsid else []
    sizes = r.conformant_u32s("CustomHeader.pSizes") if psizes else []
    if preserved:
        r.u32()
    if len(clsids) != n or len(sizes) != n:
        r.fail(f"cIfs {n} but {len(clsids)} CLSIDs and {len(sizes)} sizes")
    if total > size or header_size > total:
        raise DecodeError("CustomHeader", hdr_at, f"totalSize {total} / headerSize {header_size} exceed dwSize {size}")
    props = []
    p = hdr_at + header_size
    for clsid, psize in zip(clsids, sizes):
        if psize > end - p:
            raise DecodeError("ActivationPropertiesBlob", p, f"property size {psize} exceeds the {end - p} bytes left")
        name, fn = ACTIVATION_PROPERTIES.get(clsid, (None, None))
        prop = {"name": name or _if.clsid_name(clsid), "clsid": clsid, "offset": p, "size": psize}
        if fn is not None:
            pr = _serialized(buf, p, p + psize, name)
            prop.update(fn(pr))
        props.append(prop)
        p += psize
    return {"total_size": total, "destination_context": dest, "properties": props}


def serialize_type(ndr: bytes, *, little_endian: bool = True) -> bytes:
    """NDR type serialization version 1 (MS-RPCE 2.2.6): headers + body padded to 8."""
    body = ndr + b"\x00" * (-len(ndr) % 8)
    if little_endian:
        return b"\x01\x10\x08\x00\xcc\xcc\xcc\xcc" + struct.pack("<II", len(body), 0) + body
    return b"\x01\x00\x00\x08\xcc\xcc\xcc\xcc" + struct.pack(">II", len(body), 0) + body


def build_activation_properties(properties: list[tuple[str, bytes]], *, dest_ctx: int = 2) -> bytes:
    """An activation properties BLOB from [(property CLSID, NDR body)] (bodies from NdrWriter)."""
    serialized = [(c, serialize_type(b)) for c, b in properties]
    w = NdrWriter()
    n = len(serialized)
    w.u32(0)                                   # totalSize, patched below
    w.u32(0)                                   # headerSize, patched below
    w.u32(0)
    w.u32(dest_ctx)
    w.u32(n)
    w.guid(GUID_NULL)
    w.referent()
    w.referent()
    w.referent(False)
    w.count(n)
    w.guid_array([c for c, _ in serialized])
    w.count(n)
    w.u32_array([len(s) for _, s in serialized])
    header = serialize_type(w.getvalue())
    total = len(header) + sum(len(s) for _, s in serialized)
    header = header[:16] + struct.pack("<II", total, len(header)) + header[24:]
    return struct.pack("<II", total, 0) + header + b"".join(s for _, s in serialized)
