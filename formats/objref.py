"""OBJREF (MS-DCOM 2.2.18) and DUALSTRINGARRAY (2.2.19): how DCOM marshals an interface pointer.

The construct declarations below are the one description of these structures, and they
both parse and build:

  OBJREF              signature "MEOW", flags, iid, then the flavor the flags select:
    OBJREF_STANDARD   STDOBJREF, saResAddr                                   (2.2.18.4)
    OBJREF_HANDLER    STDOBJREF, clsid, saResAddr                            (2.2.18.5)
    OBJREF_CUSTOM     clsid, cbExtension, reserved (the payload size), pObjectData (2.2.18.6)
    OBJREF_EXTENDED   STDOBJREF, Signature1, saResAddr, nElms, Signature2,
                      DATAELEMENTs                                           (2.2.18.7-8)
  STDOBJREF           flags, cPublicRefs, oxid, oid, ipid                    (2.2.18.2)
  DUALSTRINGARRAY     wNumEntries, wSecurityOffset, aStringArray: STRINGBINDINGs then
                      SECURITYBINDINGs, each list ended by a zero               (2.2.19)

OBJREFs are hand-marshaled little-endian whatever the data representation of the stub
that carries them. `build_objref` / `build_dualstringarray` build through the
declarations. `parse_objref` reads the same layout through the fixed headers compiled
from them (formats.declarations.FixedHeader): OBJREFs are scanned for in every clear
stub, and construct's interpreter costs tens of microseconds per structure; a test
checks that both readings agree on real OBJREFs. Every failure is a located DecodeError.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

from construct import Array, Bytes, Const, CString, GreedyBytes, Int16ul, Int32ul, Int64ul, Rebuild, Struct, Switch, len_, this

from ..spec import dcom as _dcom
from ..spec import interfaces as _if
from .declarations import FixedHeader
from .errors import DecodeError
from .guid import GUID_NULL, guid_bytes, guid_text

__all__ = [
    "OBJREF", "OBJREF_STANDARD_BODY", "OBJREF_HANDLER_BODY", "OBJREF_CUSTOM_BODY", "OBJREF_EXTENDED_BODY",
    "STDOBJREF", "DUALSTRINGARRAY", "STRINGBINDING", "SECURITYBINDING", "DATAELEMENT", "ObjrefCustomHeader",
    "StringBinding", "SecurityBinding", "DualStringArray", "StdObjRef", "ObjRef",
    "parse_dualstringarray", "build_dualstringarray", "parse_stdobjref", "parse_objref", "build_objref", "scan_objrefs",
    "OBJREF_SIGNATURE", "OBJREF_STANDARD", "OBJREF_HANDLER", "OBJREF_CUSTOM", "OBJREF_EXTENDED", "OBJREF_KINDS",
    "OBJREF_EXTENDED_SIGNATURE", "TOWER_IDS", "OPAQUE_PAYLOAD_CLSIDS", "MAX_SCAN_ERRORS", "hex64",
]

OBJREF_SIGNATURE = _dcom.OBJREF_SIGNATURE.to_bytes(4, "little")    # b"MEOW"
OBJREF_STANDARD, OBJREF_HANDLER, OBJREF_CUSTOM, OBJREF_EXTENDED = (f for f, *_ in _dcom.OBJREF_FLAGS)
OBJREF_KINDS = {f: kind for f, _, kind, _ in _dcom.OBJREF_FLAGS}
OBJREF_EXTENDED_SIGNATURE = _dcom.OBJREF_EXTENDED_SIGNATURE
TOWER_IDS = _dcom.TOWER_IDS
MAX_SCAN_ERRORS = 8                             # malformed OBJREF candidates reported one by one, per stub

CLSID_WBEM_CLASS_OBJECT_MARSHALER = _if.uuid_of("WbemClassObject unmarshaler")
CLSID_WBEM_CONTEXT_MARSHALER = _if.uuid_of("WbemContext unmarshaler")
# OBJREF_CUSTOM payloads whose format (MS-WMIO / IWbemContextBuffer) holds no OBJREF:
# scan_objrefs steps over them, so no byte of a WMI object can pose as an interface pointer.
OPAQUE_PAYLOAD_CLSIDS = frozenset((CLSID_WBEM_CLASS_OBJECT_MARSHALER, CLSID_WBEM_CONTEXT_MARSHALER))

# ---------------------------------------------------------------------------------------
# the declarations

STRINGBINDING = Struct("wTowerId" / Int16ul, "aNetworkAddr" / CString("utf_16_le"))             # 2.2.19.3
SECURITYBINDING = Struct("wAuthnSvc" / Int16ul, "wAuthzSvc" / Int16ul,                           # 2.2.19.4
                         "aPrincName" / CString("utf_16_le"))
DUALSTRINGARRAY = Struct(
    "wNumEntries" / Rebuild(Int16ul, len_(this.aStringArray) // 2),
    "wSecurityOffset" / Int16ul,
    "aStringArray" / Bytes(this.wNumEntries * 2),
)
STDOBJREF = Struct("flags" / Int32ul, "cPublicRefs" / Int32ul, "oxid" / Int64ul, "oid" / Int64ul, "ipid" / Bytes(16))
DATAELEMENT = Struct(
    "dataID" / Bytes(16),
    "cbSize" / Int32ul,
    "cbRounded" / Rebuild(Int32ul, (len_(this.Data))),
    "Data" / Bytes(this.cbRounded),
)
_OBJREF_HEAD = Struct("signature" / Const(_dcom.OBJREF_SIGNATURE, Int32ul), "flags" / Int32ul, "iid" / Bytes(16))
_CUSTOM_HEAD = Struct("clsid" / Bytes(16), "cbExtension" / Int32ul, "reserved" / Int32ul)
OBJREF_STANDARD_BODY = Struct("std" / STDOBJREF, "saResAddr" / DUALSTRINGARRAY)
OBJREF_HANDLER_BODY = Struct("std" / STDOBJREF, "clsid" / Bytes(16), "saResAddr" / DUALSTRINGARRAY)
OBJREF_CUSTOM_BODY = Struct(*_CUSTOM_HEAD.subcons, "pObjectData" / GreedyBytes)
OBJREF_EXTENDED_BODY = Struct(
    "std" / STDOBJREF,
    "Signature1" / Const(OBJREF_EXTENDED_SIGNATURE, Int32ul),
    "saResAddr" / DUALSTRINGARRAY,
    "nElms" / Rebuild(Int32ul, len_(this.ElmArray)),
    "Signature2" / Const(OBJREF_EXTENDED_SIGNATURE, Int32ul),
    "ElmArray" / Array(this.nElms, DATAELEMENT),
)
OBJREF = Struct(*_OBJREF_HEAD.subcons, "u_objref" / Switch(this.flags, {
    OBJREF_STANDARD: OBJREF_STANDARD_BODY, OBJREF_HANDLER: OBJREF_HANDLER_BODY,
    OBJREF_CUSTOM: OBJREF_CUSTOM_BODY, OBJREF_EXTENDED: OBJREF_EXTENDED_BODY,
}))

# Fixed parts compiled for parsing (same declarations, one struct.Struct each).
_HEAD = FixedHeader("OBJREF", _OBJREF_HEAD).struct
_STD = FixedHeader("STDOBJREF", STDOBJREF).struct
_CUSTOM = FixedHeader("OBJREF_CUSTOM", _CUSTOM_HEAD).struct
# The whole header of an OBJREF_CUSTOM, as formats.context reads the IWbemContext one.
ObjrefCustomHeader = FixedHeader("OBJREF_CUSTOM", Struct(
    "signature" / Const(_dcom.OBJREF_SIGNATURE, Int32ul), "flags" / Const(OBJREF_CUSTOM, Int32ul),
    "iid" / Bytes(16), *_CUSTOM_HEAD.subcons))

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U32X2 = struct.Struct("<II")
_ZERO_GUID = bytes(16)
_PORT = re.compile(r"\[(\d{1,5})\]$")


def hex64(v: int | None) -> str | None:
    """An OXID or OID as the records show it: 16 hex digits (JSON numbers lose 64-bit precision)."""
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
    # Its record forms, made once: parse_dualstringarray shares one array among every
    # OBJREF that carries its octets (a server's bindings, in every pointer it hands out),
    # and like the array they are read, never changed.
    _dict: dict | None = field(default=None, repr=False, compare=False)
    _text: list | None = field(default=None, repr=False, compare=False)

    def bindings_text(self) -> list[str]:
        if self._text is None:
            self._text = [b.text() for b in self.string_bindings]
        return self._text

    def to_dict(self) -> dict:
        if self._dict is None:
            self._dict = {"num_entries": self.num_entries, "security_offset": self.security_offset,
                          "string_bindings": [b.to_dict() for b in self.string_bindings],
                          "security_bindings": [b.to_dict() for b in self.security_bindings]}
        return self._dict


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
    # A server's resolver bindings come back in every OBJREF it hands out: each distinct
    # array is decoded once (by its octets; one that fails is not kept, its error names
    # where it sat). The arrays are shared: read them, do not change them.
    key = (bytes(buf[offset:stop]), little_endian)
    dsa = _DSA_KNOWN.get(key)
    if dsa is None:
        dsa = _parse_dsa(buf, offset, stop, n, sec, little_endian, structure)
        if len(_DSA_KNOWN) >= _DSA_KEPT:
            _DSA_KNOWN.clear()
        _DSA_KNOWN[key] = dsa
    return dsa, stop


_DSA_KNOWN: dict[tuple[bytes, bool], "DualStringArray"] = {}
# About 1.8 KB an array (its octets and bindings): 512 machines' bindings at a time is
# under 1 MB, where 4,096 grew a run by 7 MB; one cleared is parsed again at its next sight.
_DSA_KEPT = 512


def _parse_dsa(buf, offset: int, stop: int, n: int, sec: int, little_endian: bool,
               structure: str) -> DualStringArray:
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
    return DualStringArray(n, sec, strings, secs)


def build_dualstringarray(string_bindings, security_bindings=((0x0A, 0xFFFF, ""),)) -> bytes:
    """A DUALSTRINGARRAY from [(tower_id, addr)] and [(authn, authz, princ)], built through the declarations."""
    s = b"".join(STRINGBINDING.build({"wTowerId": t, "aNetworkAddr": a}) for t, a in string_bindings) + b"\0\0"
    z = b"".join(SECURITYBINDING.build({"wAuthnSvc": n, "wAuthzSvc": m, "aPrincName": p})
                 for n, m, p in security_bindings) + b"\0\0"
    return DUALSTRINGARRAY.build({"wSecurityOffset": len(s) // 2, "aStringArray": s + z})


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
        return {"flags": self.flags, "public_refs": self.public_refs, "oxid": hex64(self.oxid),
                "oid": hex64(self.oid), "ipid": self.ipid}


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


def parse_stdobjref(buf: bytes, p: int, end: int) -> StdObjRef:
    if p + 40 > end:
        raise DecodeError("STDOBJREF", p, f"need 40 bytes, {max(end - p, 0)} left")
    flags, refs, oxid, oid, ipid = _STD.unpack_from(buf, p)
    return StdObjRef(flags, refs, oxid, oid, guid_text(ipid))


def parse_objref(buf: bytes, offset: int, end: int | None = None, *, resolver_end: int | None = None) -> ObjRef:
    """The OBJREF at `offset`, not reading past `end` (the MInterfacePointer's end when known),
    nor its DUALSTRINGARRAY past `resolver_end` when given."""
    end = len(buf) if end is None else min(end, len(buf))
    if offset + 24 > end:
        raise DecodeError("OBJREF", offset, f"need 24 bytes of header, {max(end - offset, 0)} left")
    if buf[offset:offset + 4] != OBJREF_SIGNATURE:
        raise DecodeError("OBJREF", offset, "signature is not MEOW (0x574f454d)")
    _, flags, iid = _HEAD.unpack_from(buf, offset)
    p = offset + 24
    o = ObjRef(offset, 0, flags, guid_text(iid))
    if flags in (OBJREF_STANDARD, OBJREF_HANDLER, OBJREF_EXTENDED):
        o.std = parse_stdobjref(buf, p, end)
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
        clsid, o.cb_extension, o.size = _CUSTOM.unpack_from(buf, p)
        o.clsid = guid_text(clsid)
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
        # The next signature bounds a standard OBJREF's DUALSTRINGARRAY only. A custom one
        # (a WMI object: tens of kilobytes) is not searched through here: the scan goes on
        # after its payload, or right after its signature.
        next_sig = None
        if pos + 24 <= n and (flags := _U32.unpack_from(stub, pos + 4)[0]) in OBJREF_KINDS \
                and stub[pos + 8:pos + 24] != _ZERO_GUID:
            end, framed = n, False
            if pos >= 8:
                mx, cnt = _U32X2.unpack_from(stub, pos - 8)
                if mx == cnt and 24 <= cnt <= n - pos:
                    end, framed = pos + cnt, True
            if flags != OBJREF_CUSTOM:
                next_sig = find(OBJREF_SIGNATURE, nxt)
            try:
                o = parse_objref(stub, pos, end, resolver_end=None if next_sig is None or next_sig < 0 else next_sig)
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
        pos = next_sig if next_sig is not None and (nxt <= next_sig or next_sig < 0) \
            else find(OBJREF_SIGNATURE, nxt)
    return out


def build_objref(iid: str, flags: int = OBJREF_STANDARD, *, ipid: str = GUID_NULL, oxid: int = 0,
                 oid: int = 0, public_refs: int = 5, std_flags: int = 0, resolver: bytes | None = None,
                 clsid: str | None = None, payload: bytes = b"", size: int | None = None,
                 elements=((GUID_NULL, b""),)) -> bytes:
    """An OBJREF of any flavor, built through the OBJREF declaration (resolver: a
    build_dualstringarray() result)."""
    if flags == OBJREF_CUSTOM:
        body = {"clsid": guid_bytes(clsid or GUID_NULL), "cbExtension": 0,
                "reserved": len(payload) if size is None else size, "pObjectData": payload}
    else:
        dsa = DUALSTRINGARRAY.parse(resolver if resolver is not None else build_dualstringarray([]))
        body = {"std": {"flags": std_flags, "cPublicRefs": public_refs, "oxid": oxid, "oid": oid,
                        "ipid": guid_bytes(ipid)},
                "saResAddr": dsa, "clsid": guid_bytes(clsid or GUID_NULL),
                "ElmArray": [{"dataID": guid_bytes(data_id), "cbSize": len(data),
                              "Data": data.ljust((len(data) + 7) & ~7, b"\x00")} for data_id, data in elements]}
    return OBJREF.build({"flags": flags, "iid": guid_bytes(iid), "u_objref": body})
