"""The DCOM layer (MS-DCOM 2.2, 3.1): names every call and learns every interface pointer.

  ORPCTHIS / ORPCTHAT (2.2.13)        the implicit first parameter of every ORPC call
  OBJREF (2.2.18) in its four flavors  STANDARD / HANDLER / CUSTOM / EXTENDED, with
                                       STDOBJREF and DUALSTRINGARRAY (2.2.19)
  activation (2.2.22, 3.1.2.5.2)       IRemoteSCMActivator::RemoteCreateInstance /
                                       RemoteGetClassObject property blobs, and the
                                       older IActivation::RemoteActivation
  IObjectExporter (3.1.2.5.1)          ResolveOxid(2), SimplePing, ComplexPing, ServerAlive(2)
  IRemUnknown(2) (3.1.1.5.6-7)         RemQueryInterface(2), RemAddRef, RemRelease

`IpidRegistry` is the correlation state: every OBJREF seen on the wire, every
RemQueryInterface result and every activation reply teaches it which IPID is which
interface of which object (OXID, OID) and where its exporter listens. A request's
object UUID then names its interface on any connection, sealed or not.

`DcomDecoder.decode_call(call)` names a `records.Call`, decodes the DCOM calls'
parameters into `call.decoded = {"request": {...}, "response": {...}, "notes": [...]}` (JSON-able:
GUIDs as text, OXIDs/OIDs as "0x" hex text, HRESULTs as unsigned ints; "notes" only
when naming met something odd, e.g. an IPID never seen), decodes the ORPCTHIS /
ORPCTHAT of every other ORPC call (leaving `params_offset`, where the interface's own
parameters start, for the WMI layer, and under "objrefs" every OBJREF found in the
stub, custom ones with `payload_offset` / `payload_length` of their MS-WMIO or
IWbemContextBuffer bytes) and reports malformed stubs as `ErrorRecord(stage="dcom")`;
it never raises.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from ..formats.errors import DecodeError
from ..spec import dcom as _dcom
from ..spec import interfaces as _if
from .ndr import GUID_NULL, NdrReader, NdrWriter, guid_bytes, guid_text
from .records import Call, ErrorRecord, guarded
from .records import call_frame as _frame

__all__ = [
    "StringBinding", "SecurityBinding", "DualStringArray", "StdObjRef", "ObjRef",
    "parse_dualstringarray", "parse_objref", "scan_objrefs",
    "read_orpcthis", "read_orpcthat", "decode_activation_properties",
    "IpidEntry", "OxidEntry", "IpidRegistry", "DcomDecoder",
    "write_orpcthis", "write_orpcthat", "build_dualstringarray", "build_objref",
    "build_activation_properties", "serialize_type",
]

# ---------------------------------------------------------------------------------------
# constants (MS-DCOM 1.9, 2.2.18, 2.2.28)

OBJREF_SIGNATURE = _dcom.OBJREF_SIGNATURE.to_bytes(4, "little")    # b"MEOW"
OBJREF_STANDARD, OBJREF_HANDLER, OBJREF_CUSTOM, OBJREF_EXTENDED = (f for f, *_ in _dcom.OBJREF_FLAGS)
OBJREF_KINDS = {f: kind for f, _, kind, _ in _dcom.OBJREF_FLAGS}
OBJREF_EXTENDED_SIGNATURE = _dcom.OBJREF_EXTENDED_SIGNATURE
MAX_ACTPROP_LIMIT = 10                          # CustomHeader.cIfs range (2.2.28.1)
MAX_SCAN_ERRORS = 8                             # malformed OBJREF candidates reported one by one, per stub

IID_IREMUNKNOWN = _if.uuid_of("IRemUnknown")
IID_IREMUNKNOWN2 = _if.uuid_of("IRemUnknown2")
IID_ISYSTEMACTIVATOR = _if.uuid_of("IRemoteSCMActivator")
IID_IACTIVATION = _if.uuid_of("IActivation")
IID_IOBJECTEXPORTER = _if.uuid_of("IObjectExporter")

CLSID_ACTIVATION_PROPERTIES_IN = _if.uuid_of("ActivationPropertiesIn")
CLSID_ACTIVATION_PROPERTIES_OUT = _if.uuid_of("ActivationPropertiesOut")
CLSID_WBEM_CLASS_OBJECT_MARSHALER = _if.uuid_of("WbemClassObject unmarshaler")
CLSID_WBEM_CONTEXT_MARSHALER = _if.uuid_of("WbemContext unmarshaler")

# OBJREF_CUSTOM payloads whose format (MS-WMIO / IWbemContextBuffer) holds no OBJREF:
# scan_objrefs steps over them, so no byte of a WMI object can pose as an interface pointer.
OPAQUE_PAYLOAD_CLSIDS = frozenset((CLSID_WBEM_CLASS_OBJECT_MARSHALER, CLSID_WBEM_CONTEXT_MARSHALER))

TOWER_IDS = _dcom.TOWER_IDS

_U16 = struct.Struct("<H")
_U16X2 = struct.Struct("<HH")
_U32 = struct.Struct("<I")
_U32X2 = struct.Struct("<II")
_STDOBJREF = struct.Struct("<IIQQ")             # flags, cPublicRefs, oxid, oid (ipid follows)
_CUSTOM_HDR = struct.Struct("<II")              # cbExtension, reserved (size)
_ZERO_GUID = bytes(16)
_PORT = re.compile(r"\[(\d{1,5})\]$")


def _hex64(v: int | None) -> str | None:
    return None if v is None else f"0x{v:016x}"


# ---------------------------------------------------------------------------------------
# DUALSTRINGARRAY (2.2.19)

@dataclass(slots=True)
class StringBinding:
    tower_id: int
    network_addr: str

    @property
    def protseq(self) -> str:
        return TOWER_IDS.get(self.tower_id, f"tower_0x{self.tower_id:x}")

    @property
    def host(self) -> str:
        return _PORT.sub("", self.network_addr)

    @property
    def port(self) -> int | None:
        m = _PORT.search(self.network_addr)
        return int(m.group(1)) if m else None

    def text(self) -> str:
        return f"{self.protseq}:{self.network_addr}"

    def to_dict(self) -> dict:
        return {"tower_id": self.tower_id, "protseq": self.protseq, "network_addr": self.network_addr}


@dataclass(slots=True)
class SecurityBinding:
    authn_svc: int
    authz_svc: int
    princ_name: str

    def to_dict(self) -> dict:
        return {"authn_svc": self.authn_svc, "authz_svc": self.authz_svc, "princ_name": self.princ_name}


@dataclass(slots=True)
class DualStringArray:
    num_entries: int
    security_offset: int
    string_bindings: list[StringBinding]
    security_bindings: list[SecurityBinding]

    def bindings_text(self) -> list[str]:
        return [b.text() for b in self.string_bindings]

    def to_dict(self) -> dict:
        return {"num_entries": self.num_entries, "security_offset": self.security_offset,
                "string_bindings": [b.to_dict() for b in self.string_bindings],
                "security_bindings": [b.to_dict() for b in self.security_bindings]}


def _find_wnul(buf: bytes, start: int, end: int) -> int:
    """Offset of the first 16-bit NUL at an even distance from start, or -1."""
    p = start
    while True:
        i = buf.find(b"\x00\x00", p, end)
        if i < 0 or (i - start) & 1 == 0:
            return i
        p = i + 1


def parse_dualstringarray(buf: bytes, offset: int, end: int | None = None, *,
                          little_endian: bool = True, structure: str = "DUALSTRINGARRAY"
                          ) -> tuple[DualStringArray, int]:
    """A DUALSTRINGARRAY at `offset` (wNumEntries first); returns it and the offset after it."""
    end = len(buf) if end is None else min(end, len(buf))
    if offset + 4 > end:
        raise DecodeError(structure, offset, "truncated wNumEntries / wSecurityOffset")
    n, sec = struct.unpack_from("<HH" if little_endian else ">HH", buf, offset)
    stop = offset + 4 + 2 * n
    if stop > end:
        raise DecodeError(structure, offset, f"wNumEntries {n} runs past the end ({(end - offset - 4) // 2} entries left)")
    if sec > n:
        raise DecodeError(structure, offset + 2, f"wSecurityOffset {sec} is beyond wNumEntries {n}")
    enc = "utf-16-le" if little_endian else "utf-16-be"
    u16 = _U16 if little_endian else struct.Struct(">H")
    strings: list[StringBinding] = []
    p = offset + 4
    sec_start = p + 2 * sec
    while p + 2 <= sec_start:
        tower = u16.unpack_from(buf, p)[0]
        if tower == 0:
            break
        z = _find_wnul(buf, p + 2, sec_start)
        if z < 0:
            raise DecodeError(structure + ".STRINGBINDING", p, "network address not NUL-terminated before wSecurityOffset")
        strings.append(StringBinding(tower, buf[p + 2:z].decode(enc, "replace")))
        p = z + 2
    secs: list[SecurityBinding] = []
    p = sec_start
    while p + 2 <= stop:
        authn = u16.unpack_from(buf, p)[0]
        if authn == 0:
            break
        if p + 4 > stop:
            raise DecodeError(structure + ".SECURITYBINDING", p, "truncated wAuthzSvc")
        authz = u16.unpack_from(buf, p + 2)[0]
        z = _find_wnul(buf, p + 4, stop)
        if z < 0:
            raise DecodeError(structure + ".SECURITYBINDING", p, "principal name not NUL-terminated before wNumEntries")
        secs.append(SecurityBinding(authn, authz, buf[p + 4:z].decode(enc, "replace")))
        p = z + 2
    return DualStringArray(n, sec, strings, secs), stop


def build_dualstringarray(string_bindings, security_bindings=((0x0A, 0xFFFF, ""),)) -> bytes:
    """Hand-marshaled DUALSTRINGARRAY from [(tower_id, addr)] and [(authn, authz, princ)]."""
    s = b"".join(_U16.pack(t) + (a + "\x00").encode("utf-16-le") for t, a in string_bindings) + b"\x00\x00"
    z = b"".join(_U16X2.pack(n, m) + (p + "\x00").encode("utf-16-le") for n, m, p in security_bindings) + b"\x00\x00"
    return _U16X2.pack((len(s) + len(z)) // 2, len(s) // 2) + s + z


# ---------------------------------------------------------------------------------------
# OBJREF (2.2.18)

@dataclass(slots=True)
class StdObjRef:
    flags: int
    public_refs: int
    oxid: int
    oid: int
    ipid: str

    def to_dict(self) -> dict:
        return {"flags": self.flags, "public_refs": self.public_refs, "oxid": _hex64(self.oxid),
                "oid": _hex64(self.oid), "ipid": self.ipid}


@dataclass(slots=True)
class ObjRef:
    """One OBJREF. Offsets are absolute in the buffer it was parsed from."""

    offset: int
    length: int
    flags: int
    iid: str
    std: StdObjRef | None = None
    resolver: DualStringArray | None = None     # saResAddr: the object resolver's bindings
    clsid: str | None = None                    # HANDLER / CUSTOM
    cb_extension: int | None = None             # CUSTOM
    size: int | None = None                     # CUSTOM "reserved" (Windows: the payload size)
    payload_offset: int | None = None           # CUSTOM pObjectData
    payload_length: int | None = None
    elements: list[dict] | None = None          # EXTENDED DATAELEMENTs
    framed: bool = False                        # found inside an MInterfacePointer

    @property
    def kind(self) -> str:
        return OBJREF_KINDS.get(self.flags, "unknown")

    @property
    def interface(self) -> str | None:
        return _if.interface_name(self.iid)

    def to_dict(self) -> dict:
        d = {"offset": self.offset, "length": self.length, "kind": self.kind, "flags": self.flags,
             "iid": self.iid, "interface": self.interface}
        if self.std is not None:
            d["std"] = self.std.to_dict()
        if self.resolver is not None:
            d["resolver"] = self.resolver.to_dict()
            d["bindings"] = self.resolver.bindings_text()
        if self.clsid is not None:
            d["clsid"] = self.clsid
            d["clsid_name"] = _if.clsid_name(self.clsid)
        if self.flags == OBJREF_CUSTOM:
            d.update(cb_extension=self.cb_extension, size=self.size,
                     payload_offset=self.payload_offset, payload_length=self.payload_length)
        if self.elements is not None:
            d["elements"] = self.elements
        return d


def _parse_std(buf: bytes, p: int, end: int) -> StdObjRef:
    if p + 40 > end:
        raise DecodeError("STDOBJREF", p, f"need 40 bytes, {max(end - p, 0)} left")
    flags, refs, oxid, oid = _STDOBJREF.unpack_from(buf, p)
    return StdObjRef(flags, refs, oxid, oid, guid_text(buf, p + 24))


def parse_objref(buf: bytes, offset: int, end: int | None = None, *, resolver_end: int | None = None) -> ObjRef:
    """The OBJREF at `offset`, not reading past `end` (the MInterfacePointer's end when known),
    nor its DUALSTRINGARRAY past `resolver_end` when given.

    OBJREFs are hand-marshaled little-endian whatever the stub's data representation."""
    end = len(buf) if end is None else min(end, len(buf))
    if offset + 24 > end:
        raise DecodeError("OBJREF", offset, f"need 24 bytes of header, {max(end - offset, 0)} left")
    if buf[offset:offset + 4] != OBJREF_SIGNATURE:
        raise DecodeError("OBJREF", offset, "signature is not MEOW (0x574f454d)")
    flags = _U32.unpack_from(buf, offset + 4)[0]
    iid = guid_text(buf, offset + 8)
    p = offset + 24
    o = ObjRef(offset, 0, flags, iid)
    if flags in (OBJREF_STANDARD, OBJREF_HANDLER, OBJREF_EXTENDED):
        o.std = _parse_std(buf, p, end)
        p += 40
        if flags == OBJREF_HANDLER:
            if p + 16 > end:
                raise DecodeError("OBJREF_HANDLER", p, "truncated clsid")
            o.clsid = guid_text(buf, p)
            p += 16
        elif flags == OBJREF_EXTENDED:
            if p + 4 > end or _U32.unpack_from(buf, p)[0] != OBJREF_EXTENDED_SIGNATURE:
                raise DecodeError("OBJREF_EXTENDED", p, "Signature1 is not 0x4E535956")
            p += 4
        dsa_end = end if resolver_end is None else min(end, resolver_end)
        o.resolver, p = parse_dualstringarray(buf, p, dsa_end, structure="OBJREF.saResAddr")
        if flags == OBJREF_EXTENDED:
            p = _parse_data_elements(buf, p, end, o)
    elif flags == OBJREF_CUSTOM:
        if p + 24 > end:
            raise DecodeError("OBJREF_CUSTOM", p, f"need 24 bytes, {max(end - p, 0)} left")
        o.clsid = guid_text(buf, p)
        o.cb_extension, o.size = _CUSTOM_HDR.unpack_from(buf, p + 16)
        p += 24
        o.payload_offset = p
        o.payload_length = end - p
        p = end
    else:
        raise DecodeError("OBJREF", offset + 4, f"flags 0x{flags:x} is none of STANDARD/HANDLER/CUSTOM/EXTENDED")
    o.length = p - offset
    return o


def _parse_data_elements(buf: bytes, p: int, end: int, o: ObjRef) -> int:
    """OBJREF_EXTENDED: nElms, Signature2, then DATAELEMENTs (2.2.18.8)."""
    if p + 8 > end:
        raise DecodeError("OBJREF_EXTENDED", p, "truncated nElms / Signature2")
    n, sig = _U32X2.unpack_from(buf, p)
    if sig != OBJREF_EXTENDED_SIGNATURE:
        raise DecodeError("OBJREF_EXTENDED", p + 4, "Signature2 is not 0x4E535956")
    p += 8
    if n * 24 > end - p:
        raise DecodeError("OBJREF_EXTENDED", p - 8, f"nElms {n} exceeds the {end - p} bytes left")
    o.elements = []
    for _ in range(n):
        if p + 24 > end:
            raise DecodeError("DATAELEMENT", p, "truncated header")
        data_id = guid_text(buf, p)
        size, rounded = _U32X2.unpack_from(buf, p + 16)
        if rounded > end - p - 24 or size > rounded:
            raise DecodeError("DATAELEMENT", p + 16, f"cbSize {size} / cbRounded {rounded} exceed the {end - p - 24} bytes left")
        o.elements.append({"data_id": data_id, "size": size, "offset": p + 24})
        p += 24 + rounded
    return p


def scan_objrefs(stub: bytes, errors: list | None = None) -> list[tuple[int, ObjRef]]:
    """Every OBJREF in a clear stub, found by its signature, whatever carries it.

    A candidate is "MEOW", a valid flags value and a non-null IID. When the 8 bytes
    before it are an MInterfacePointer header (conformance == ulCntData, fitting the
    stub) the OBJREF is bounded by it and marked `framed`. The payload of a custom
    OBJREF is searched too (activation blobs nest OBJREFs), except WMI objects and
    contexts, which hold none. Candidates that fail to parse go to `errors`
    (DecodeError) when given; the scan goes on after them.

    No string binding contains "MEOW", so a candidate's DUALSTRINGARRAY is not read
    past the next signature: hostile stubs of overlapping candidates cost linear time."""
    out: list[tuple[int, ObjRef]] = []
    n = len(stub)
    find = stub.find
    pos = find(OBJREF_SIGNATURE)
    while pos >= 0:
        nxt = pos + 4
        next_sig = find(OBJREF_SIGNATURE, nxt)
        if pos + 24 <= n and _U32.unpack_from(stub, pos + 4)[0] in OBJREF_KINDS \
                and stub[pos + 8:pos + 24] != _ZERO_GUID:
            end, framed = n, False
            if pos >= 8:
                mx, cnt = _U32X2.unpack_from(stub, pos - 8)
                if mx == cnt and 24 <= cnt <= n - pos:
                    end, framed = pos + cnt, True
            try:
                o = parse_objref(stub, pos, end, resolver_end=next_sig if next_sig >= 0 else n)
            except DecodeError as e:
                if errors is not None:
                    errors.append(e)
            else:
                o.framed = framed
                if o.flags == OBJREF_CUSTOM and not framed and o.size is not None:
                    # unframed: trust the size field only as far as the buffer goes
                    o.payload_length = min(o.size, o.payload_length)
                    o.length = o.payload_offset + o.payload_length - pos
                out.append((pos, o))
                if o.flags != OBJREF_CUSTOM:
                    nxt = pos + o.length
                elif o.clsid in OPAQUE_PAYLOAD_CLSIDS:
                    nxt = o.payload_offset + o.payload_length
                else:
                    nxt = o.payload_offset
        pos = next_sig if nxt <= next_sig or next_sig < 0 else find(OBJREF_SIGNATURE, nxt)
    return out


def build_objref(iid: str, flags: int = OBJREF_STANDARD, *, ipid: str = GUID_NULL, oxid: int = 0,
                 oid: int = 0, public_refs: int = 5, std_flags: int = 0, resolver: bytes | None = None,
                 clsid: str | None = None, payload: bytes = b"", size: int | None = None,
                 elements=((GUID_NULL, b""),)) -> bytes:
    """An OBJREF of any flavor (resolver: a build_dualstringarray() result)."""
    out = OBJREF_SIGNATURE + _U32.pack(flags) + guid_bytes(iid)
    if flags == OBJREF_CUSTOM:
        return out + guid_bytes(clsid or GUID_NULL) + _CUSTOM_HDR.pack(0, len(payload) if size is None else size) + payload
    out += _STDOBJREF.pack(std_flags, public_refs, oxid, oid) + guid_bytes(ipid)
    if resolver is None:
        resolver = build_dualstringarray([])
    if flags == OBJREF_HANDLER:
        out += guid_bytes(clsid or GUID_NULL)
    if flags == OBJREF_EXTENDED:
        out += _U32.pack(OBJREF_EXTENDED_SIGNATURE)
    out += resolver
    if flags == OBJREF_EXTENDED:
        out += _U32X2.pack(len(elements), OBJREF_EXTENDED_SIGNATURE)
        for data_id, data in elements:
            rounded = (len(data) + 7) & ~7
            out += guid_bytes(data_id) + _U32X2.pack(len(data), rounded) + data.ljust(rounded, b"\x00")
    return out


# ---------------------------------------------------------------------------------------
# ORPCTHIS / ORPCTHAT (2.2.13)

def _read_extensions(r: NdrReader) -> list[dict]:
    """ORPC_EXTENT_ARRAY pointee: size, reserved, unique pointer to an array of unique ORPC_EXTENT*."""
    r.structure = "ORPC_EXTENT_ARRAY"
    r.u32()                                    # size: count of extents; the conformance below rules
    r.u32()
    out = []
    if r.referent():
        n = r.count(4, "ORPC_EXTENT_ARRAY.extent")
        refs = r.u32_array(n)
        for ref in refs:
            if not ref:
                continue
            r.structure = "ORPC_EXTENT"
            start = r.pos
            mx = r.count(1, "ORPC_EXTENT.data")
            ext_id = r.guid()
            size = r.u32()
            if size > mx:
                r.fail(f"size {size} exceeds the data conformance {mx}", start)
            data_at = r.pos
            r.skip(mx)
            out.append({"id": ext_id, "name": _if.clsid_name(ext_id), "size": size, "offset": data_at})
    return out


def read_orpcthis(r: NdrReader) -> dict:
    r.structure = "ORPCTHIS"
    major = r.u16()
    minor = r.u16()
    flags = r.u32()
    r.u32()                                    # reserved1
    cid = r.guid()
    d = {"version": f"{major}.{minor}", "flags": flags, "cid": cid}
    if r.referent():
        d["extensions"] = _read_extensions(r)
    return d


def read_orpcthat(r: NdrReader) -> dict:
    r.structure = "ORPCTHAT"
    d = {"flags": r.u32()}
    if r.referent():
        d["extensions"] = _read_extensions(r)
    return d


def write_orpcthis(w: NdrWriter, cid: str, *, version=(5, 7), flags: int = 0) -> None:
    w.u16(version[0])
    w.u16(version[1])
    w.u32(flags)
    w.u32(0)
    w.guid(cid)
    w.referent(False)


def write_orpcthat(w: NdrWriter, *, flags: int = 0) -> None:
    w.u32(flags)
    w.referent(False)


# ---------------------------------------------------------------------------------------
# activation properties (2.2.22): a blob of NDR type-serialized structures (MS-RPCE 2.2.6)

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


def _read_objref(r: NdrReader) -> ObjRef:
    """An MInterfacePointer pointee read in place: the OBJREF it carries."""
    off, n = r.interface_pointer_data()
    return parse_objref(r.buf, off, off + n)


def _objref_summary(r: NdrReader) -> dict:
    """An MInterfacePointer pointee read in place, summarized by its OBJREF."""
    return _read_objref(r).to_dict()


def _interface_pointers(r: NdrReader, what: str) -> list[ObjRef | None]:
    """A conformant array of unique MInterfacePointer* (2.2.14): the referent IDs, then
    the pointee of each non-NULL one in order; a NULL pointer stays None."""
    refs = r.u32_array(r.count(4, what))
    return [_read_objref(r) if ref else None for ref in refs]


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
        d["client_context"] = _objref_summary(r)
    if proto:
        d["prototype_context"] = _objref_summary(r)
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


def _ndr_dualstringarray(r: NdrReader) -> DualStringArray:
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
    objrefs = _interface_pointers(r, "PropsOutInfo.ppIntfData") if pintf else []
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
        d["oxid_bindings"] = _ndr_dualstringarray(r)


def _prop_instance(r: NdrReader) -> dict:
    name = r.referent()
    d = {"mode": r.u32()}
    rot, stg = r.referent(), r.referent()
    if name:
        d["file_name"] = r.wstring()
    if rot:
        d["rot"] = _objref_summary(r)
    if stg:
        d["storage"] = _objref_summary(r)
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


# ---------------------------------------------------------------------------------------
# the IPID registry

@dataclass(slots=True)
class IpidEntry:
    ipid: str
    iid: str | None = None
    oxid: int | None = None
    oid: int | None = None
    resolver: DualStringArray | None = None    # saResAddr of the OBJREF that carried it
    frame: int | None = None                   # where it was first learned
    conn: int | None = None
    source: str | None = None                  # objref | remqi | activation | resolver
    public_refs: int | None = None

    @property
    def interface(self) -> str | None:
        return _if.interface_name(self.iid)

    def to_dict(self) -> dict:
        return {"ipid": self.ipid, "iid": self.iid, "interface": self.interface, "oxid": _hex64(self.oxid),
                "oid": _hex64(self.oid), "frame": self.frame, "conn": self.conn, "source": self.source,
                "resolver": self.resolver.bindings_text() if self.resolver else None}


@dataclass(slots=True)
class OxidEntry:
    oxid: int
    bindings: DualStringArray | None = None    # the object exporter's string bindings
    ipid_remunknown: str | None = None
    authn_hint: int | None = None
    version: str | None = None
    frame: int | None = None

    def to_dict(self) -> dict:
        return {"oxid": _hex64(self.oxid), "bindings": self.bindings.bindings_text() if self.bindings else None,
                "ipid_remunknown": self.ipid_remunknown, "authn_hint": self.authn_hint,
                "version": self.version, "frame": self.frame}


class IpidRegistry:
    """IPID -> interface / object / exporter, OXID -> bindings: shared by every connection."""

    def __init__(self) -> None:
        self.ipids: dict[str, IpidEntry] = {}
        self.oxids: dict[int, OxidEntry] = {}
        self.conflicts = 0                     # IPIDs re-announced with an unrelated IID

    def __len__(self) -> int:
        return len(self.ipids)

    def __contains__(self, ipid) -> bool:
        return isinstance(ipid, str) and ipid.lower() in self.ipids

    def lookup(self, ipid: str | None) -> IpidEntry | None:
        return self.ipids.get(ipid.lower()) if ipid else None

    def oxid(self, oxid: int | None) -> OxidEntry | None:
        return self.oxids.get(oxid) if oxid is not None else None

    def learn_ipid(self, ipid: str, iid: str | None = None, *, oxid: int | None = None, oid: int | None = None,
                   resolver: DualStringArray | None = None, frame: int | None = None, conn: int | None = None,
                   source: str | None = None, public_refs: int | None = None) -> IpidEntry | None:
        key = ipid.lower()
        if key == GUID_NULL:
            return None
        iid = iid.lower() if iid else None
        e = self.ipids.get(key)
        if e is None:
            e = IpidEntry(key, iid, oxid, oid, resolver, frame, conn, source, public_refs)
            self.ipids[key] = e
            return e
        if iid and iid != e.iid:
            if e.iid is None or _if.derives_from(iid, e.iid):
                e.iid = iid                    # a more derived interface of the same pointer
            elif not _if.derives_from(e.iid, iid):
                self.conflicts += 1
        if e.oxid is None:
            e.oxid = oxid
        if e.oid is None:
            e.oid = oid
        if e.resolver is None:
            e.resolver = resolver
        if e.frame is None:
            e.frame, e.conn, e.source = frame, conn, source
        return e

    def learn_objref(self, objref: ObjRef, *, iid: str | None = None, frame: int | None = None,
                     conn: int | None = None, source: str = "objref") -> IpidEntry | None:
        s = objref.std
        if s is None:
            return None
        return self.learn_ipid(s.ipid, iid or objref.iid, oxid=s.oxid, oid=s.oid, resolver=objref.resolver,
                               frame=frame, conn=conn, source=source, public_refs=s.public_refs)

    def learn_oxid(self, oxid: int, *, bindings: DualStringArray | None = None, ipid_remunknown: str | None = None,
                   authn_hint: int | None = None, version: str | None = None, frame: int | None = None) -> OxidEntry:
        e = self.oxids.get(oxid)
        if e is None:
            e = self.oxids[oxid] = OxidEntry(oxid, frame=frame)
        if bindings is not None:
            e.bindings = bindings
        if ipid_remunknown is not None:
            e.ipid_remunknown = ipid_remunknown.lower()
        if authn_hint is not None:
            e.authn_hint = authn_hint
        if version is not None:
            e.version = version
        return e

    def bindings_for(self, ipid: str) -> list[str]:
        """Where the object behind `ipid` is reached: its exporter's bindings when its OXID
        was resolved, else the resolver bindings its OBJREF carried."""
        e = self.lookup(ipid)
        if e is None:
            return []
        ox = self.oxids.get(e.oxid) if e.oxid is not None else None
        if ox is not None and ox.bindings is not None:
            return ox.bindings.bindings_text()
        return e.resolver.bindings_text() if e.resolver else []

    def as_dict(self) -> dict:
        return {"ipids": [e.to_dict() for e in self.ipids.values()],
                "oxids": [e.to_dict() for e in self.oxids.values()], "conflicts": self.conflicts}


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
    o = _read_objref(r)
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
        out["unk_outer"] = _objref_summary(r)
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
        out["object_storage"] = _objref_summary(r)
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
        out["oxid_bindings"] = _ndr_dualstringarray(r)
    r.structure = "RemoteActivation"
    out["ipid_remunknown"] = r.guid()
    out["authn_hint"] = r.u32()
    out["server_version"] = f"{r.u16()}.{r.u16()}"
    out["hresult"] = r.u32()
    objrefs = _interface_pointers(r, "ppInterfaceData")
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
        out["oxid_bindings"] = _ndr_dualstringarray(r)
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
        dsa = _ndr_dualstringarray(r)
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
            std = _parse_std(r.buf, r.pos, r.end)
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
    objrefs = _interface_pointers(r, "RemQueryInterface2.ppMIF")
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
