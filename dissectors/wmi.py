"""The WMI layer (MS-WMI 3.1.4; IDL in section 6): every parameter of every WMI call.

One small NDR interpreter reads and writes the type vocabulary of the interface table
(wmiscope/spec/interfaces.py): the table is the program.  Each method's signature is
compiled once into a plan (a list of typed parameters); decoding a call walks its plan
over the stub after ORPCTHIS / ORPCTHAT, encoding walks the same plan the other way.

NDR as MIDL marshals these signatures (C706 14, MS-RPCE 2.2.5):
  - a top-level [unique] pointer (BSTR, interface pointer, unique<T>) is its referent ID,
    the pointee right after it; pointers embedded in a structure or an array have their
    pointees deferred until that construct ends (NdrReader.defer / flush);
  - an interface pointer is a unique pointer to an MInterfacePointer (MS-DCOM 2.2.14)
    holding an OBJREF; IWbemClassObject and IWbemContext travel as OBJREF_CUSTOM whose
    payload is an MS-WMIO EncodingUnit (MS-WMI 2.2.4) or an IWbemContextBuffer (2.2.13);
  - a non-encapsulated union (_WBEM_REFRESH_INFO.m_Info) sends its discriminant first.

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

import datetime
import struct
import weakref
from dataclasses import dataclass
from typing import Protocol

from ..formats import context as _context
from ..formats import object_array as _oa
from ..formats import refresher as _refresher
from ..formats import wmio
from ..formats.errors import DecodeError, EncodeError
from ..spec import interfaces as _if
from ..spec import ndr_types as _types
from ..spec import wbem as _wc
from .dcom import (
    CLSID_WBEM_CLASS_OBJECT_MARSHALER, CLSID_WBEM_CONTEXT_MARSHALER, OBJREF_CUSTOM, ObjRef,
    build_objref, parse_objref, read_orpcthat, read_orpcthis, write_orpcthat, write_orpcthis,
)
from .ndr import GUID_NULL, NdrReader, NdrWriter
from .records import Call, ErrorRecord, guarded
from .records import call_frame as _frame

__all__ = [
    "WmiDecoder", "WmiState", "DefaultWmiState", "InterfacePointer", "StubDecode",
    "decode_stub", "encode_request", "encode_response", "plain", "method_plan", "REF_TO_NULL", "object_json",
    "IID_IWBEM_CLASS_OBJECT", "IID_IWBEM_CONTEXT",
]

IID_IWBEM_CLASS_OBJECT = _if.uuid_of("IWbemClassObject")
IID_IWBEM_CONTEXT = _if.uuid_of("IWbemContext")
MAX_HEX = 64                       # bytes of a byte array shown in its JSON value

_FILETIME_EPOCH = datetime.datetime(1601, 1, 1, tzinfo=datetime.timezone.utc)
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


# ---------------------------------------------------------------------------------------
# native values

class Blob(bytes):
    """Bytes read from a stub; `offset` says where they start in it (compares as bytes)."""

    offset = 0


@dataclass(slots=True, eq=False)
class InterfacePointer:
    """One MInterfacePointer read from a stub: its OBJREF bytes, the parsed OBJREF and, for
    the custom-marshaled WMI objects, the decoded object."""

    offset: int                     # of the OBJREF (abData) in the stub
    data: bytes
    objref: ObjRef | None = None
    obj: object = None              # WmiClass | WmiInstance | WbemContext
    error: DecodeError | None = None

    def plain(self):
        return self.obj if self.obj is not None else bytes(self.data)


class _RefToNull:
    """A non-NULL [unique] pointer to a NULL interface pointer: what a caller of an
    [in, out, unique] IFoo** parameter sends to ask for the object back (as opposed to
    a NULL pointer: "do not return it")."""

    __slots__ = ()

    def __repr__(self):
        return "REF_TO_NULL"


REF_TO_NULL = _RefToNull()
_PENDING = object()                # a pointee not read yet (filled when the pointer's construct ends)


def plain(v):
    """A decoded native value as encode_request/encode_response take it: interface pointers
    become their object (WmiClass / WmiInstance / WbemContext) or their OBJREF bytes."""
    if isinstance(v, InterfacePointer):
        return v.plain()
    if isinstance(v, Blob):
        return bytes(v)
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v


class _Ctx:
    """Per stub: the buffer, errors that did not stop the walk, the caller's state."""

    __slots__ = ("buf", "soft", "state", "call", "notes", "params", "objects")

    def __init__(self, buf: bytes, state, call, objects: bool = True):
        self.buf = buf
        self.objects = objects
        self.soft: list[DecodeError] = []
        self.state = state
        self.call = call
        self.notes: list[str] = []
        self.params: dict = {}


def _size_of(expr, scope: dict, ctx) -> int | None:
    """The value a size_is / length_is names, when already decoded (structure field or parameter)."""
    if expr is None:
        return None
    if isinstance(expr, int):
        return expr
    if isinstance(expr, _types.Expr):             # e.g. (size+7)&~7
        return expr.evaluate(lambda name: _size_of(name, scope, ctx))
    v = scope.get(expr) if expr in scope else (ctx.params.get(expr) if ctx is not None else None)
    if v is None or isinstance(v, (list, bytes, str)):
        return None
    return _wc.enum_value(v)


# ---------------------------------------------------------------------------------------
# type nodes: read(r, ctx, scope, holder, key) stores the value in holder[key] (a non-NULL
# pointer stores _PENDING and its deferred pointee replaces it); write(w, v, ctx, scope).
# scope: the structure being read (or the parameters so far), where size_is names are found.

class _Node:
    __slots__ = ("text", "align", "min_size", "ann")

    def __init__(self, text: str, align: int, min_size: int):
        self.text = text
        self.align = align
        self.min_size = min_size
        self.ann = None                 # enumerations naming this value (HRESULT, flags ...)


class _Prim(_Node):
    __slots__ = ("rd", "wr", "bits", "signed")
    _TABLE = {
        "byte": ("u8", 1, False), "ushort": ("u16", 2, False), "short": ("i16", 2, True),
        "ulong": ("u32", 4, False), "long": ("i32", 4, True), "uhyper": ("u64", 8, False),
        "hyper": ("i64", 8, True), "float": ("f32", 4, None), "double": ("f64", 8, None),
        "HRESULT": ("u32", 4, False), "error_status_t": ("u32", 4, False),
    }

    def __init__(self, text: str):
        meth, size, signed = self._TABLE[text]
        super().__init__(text, size, size)
        self.rd = getattr(NdrReader, meth)
        self.wr = getattr(NdrWriter, meth)
        self.bits = size * 8
        self.signed = signed
        if text == "HRESULT":
            self.ann = ("HRESULT",)

    def read(self, r, ctx, scope, holder, key):
        holder[key] = self.rd(r)

    def write(self, w, v, ctx, scope):
        if self.signed is None:
            self.wr(w, float(v or 0))
            return
        n = _wc.enum_value(v) & ((1 << self.bits) - 1)
        if self.signed and n >= 1 << (self.bits - 1):
            n -= 1 << self.bits
        self.wr(w, n)


class _Guid(_Node):
    __slots__ = ()

    def read(self, r, ctx, scope, holder, key):
        holder[key] = r.guid()

    def write(self, w, v, ctx, scope):
        w.guid(v or GUID_NULL)


class _Filetime(_Node):
    """FILETIME (MS-DTYP 2.3.3): two ulongs, low part first; the value is the 64-bit count of
    100 ns since 1601-01-01 UTC."""

    __slots__ = ()

    def read(self, r, ctx, scope, holder, key):
        lo = r.u32()
        holder[key] = r.u32() << 32 | lo

    def write(self, w, v, ctx, scope):
        v = int(v or 0)
        w.u32(v & 0xFFFFFFFF)
        w.u32((v >> 32) & 0xFFFFFFFF)


class _WString(_Node):
    __slots__ = ()

    def read(self, r, ctx, scope, holder, key):
        holder[key] = r.wstring()

    def write(self, w, v, ctx, scope):
        w.wstring(v or "")


class _CString(_Node):
    __slots__ = ()

    def read(self, r, ctx, scope, holder, key):
        holder[key] = r.cstring()

    def write(self, w, v, ctx, scope):
        w.cstring(v or "")


class _Bstr(_Node):
    __slots__ = ()

    def read(self, r, ctx, scope, holder, key):
        holder[key] = r.bstr()

    def write(self, w, v, ctx, scope):
        w.bstr(v)


def _read_mip(r: NdrReader, ctx: _Ctx) -> InterfacePointer:
    """An MInterfacePointer pointee: the OBJREF and, for WMI's custom-marshaled objects,
    the object.  A bad OBJREF or payload is a soft error: the framing is intact."""
    off, n = r.interface_pointer_data()
    buf = r.buf
    p = InterfacePointer(off, buf[off:off + n])
    try:
        o = parse_objref(buf, off, off + n)
    except DecodeError as e:
        p.error = e
        ctx.soft.append(e)
        return p
    p.objref = o
    if ctx.objects and o.flags == OBJREF_CUSTOM and o.clsid in _PAYLOAD_DECODERS:
        start = o.payload_offset
        try:
            p.obj = _PAYLOADS.decode(o.clsid, start, buf[start:start + o.payload_length])
        except DecodeError as e:
            p.error = e
            ctx.soft.append(e)
    return p


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
    _JSON_OF[id(obj)] = (weakref.ref(obj), out)
    return out


class _PayloadCache:
    """Decoded WMI objects by their exact bytes, least recently used out.

    Sessions fetch the same class definitions again and again (every wmiexec run
    asks for Win32_Process; every login for __NAMESPACE and its provider classes),
    and a class is the costliest thing we decode. Objects from here are shared:
    callers read them, never change them. Bounded by a byte budget, not a count,
    since one object can be close to a megabyte.
    """

    def __init__(self, budget: int = 32 << 20, largest: int = 1 << 20):
        self.budget = budget
        self.largest = largest
        self.used = 0
        self.items: dict[tuple[str, bytes], object] = {}

    def decode(self, clsid: str, start: int, payload: bytes):
        structure, parse = _PAYLOAD_DECODERS[clsid]
        key = (clsid, payload)
        items = self.items
        obj = items.pop(key, None)
        if obj is None:
            # Errors are not kept: their offsets depend on where the payload sat.
            obj = _located(structure, start, parse, payload)
            if len(payload) > self.largest:
                return obj
            self.used += len(payload)
            while self.used > self.budget and items:
                old = next(iter(items))
                del items[old]
                self.used -= len(old[1])
        items[key] = obj
        return obj


_PAYLOADS = _PayloadCache()


_PAYLOAD_DECODERS = {
    CLSID_WBEM_CLASS_OBJECT_MARSHALER: ("EncodingUnit", lambda b: wmio.parse_encoding_unit(b, 0)),
    CLSID_WBEM_CONTEXT_MARSHALER: ("IWbemContextBuffer", lambda b: _context.parse_context(b, 0)),
}


def _objref_bytes(v) -> bytes:
    """What an interface pointer parameter is given as -> the OBJREF to send."""
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    if isinstance(v, InterfacePointer):
        return bytes(v.data)
    if isinstance(v, (wmio.WmiClass, wmio.WmiInstance)):
        return build_objref(IID_IWBEM_CLASS_OBJECT, OBJREF_CUSTOM, clsid=CLSID_WBEM_CLASS_OBJECT_MARSHALER,
                            payload=wmio.build_encoding_unit(v))
    if isinstance(v, _context.WbemContext):
        return _context.build_context_objref(v)
    raise EncodeError(f"an interface pointer needs OBJREF bytes, a WMI object or a context, "
                      f"not {type(v).__name__}")


class _Iface(_Node):
    """IFoo*: a unique pointer to an MInterfacePointer."""

    __slots__ = ("interface",)

    def __init__(self, text: str, interface: str):
        super().__init__(text, 4, 4)
        self.interface = interface

    def read(self, r, ctx, scope, holder, key):
        ref = r.referent()
        if ref:
            holder[key] = _PENDING
            r.defer(ref, self._pointee, r, ctx, holder, key, r.structure)
        else:
            holder[key] = None

    @staticmethod
    def _pointee(r, ctx, holder, key, structure):
        r.structure = structure          # where the pointer was, not where its construct ended
        holder[key] = _read_mip(r, ctx)

    def write(self, w, v, ctx, scope):
        if v is None or v is REF_TO_NULL:
            w.referent(False)
            return
        data = _objref_bytes(v)
        w.defer(w.referent(True), w.interface_pointer_data, data)


class _Mip(_Node):
    """A bare MInterfacePointer (conformant structure, no pointer in front)."""

    __slots__ = ()

    def read(self, r, ctx, scope, holder, key):
        holder[key] = _read_mip(r, ctx)

    def write(self, w, v, ctx, scope):
        w.interface_pointer_data(_objref_bytes(v))


# the built-in types of the grammar: (node class, alignment, smallest wire size)
_BUILTIN_NODES = {
    "GUID": lambda t: _Guid(t, 4, 16), "FILETIME": lambda t: _Filetime(t, 4, 8),
    "wstring": lambda t: _WString(t, 4, 12), "string": lambda t: _CString(t, 4, 12),
    "BSTR": lambda t: _Bstr(t, 4, 4), "MInterfacePointer": lambda t: _Mip(t, 4, 8),
}


class _Unique(_Node):
    __slots__ = ("inner",)

    def __init__(self, text: str, inner: _Node):
        super().__init__(text, 4, 4)
        self.inner = inner
        self.ann = inner.ann

    def read(self, r, ctx, scope, holder, key):
        ref = r.referent()
        if ref:
            holder[key] = _PENDING
            r.defer(ref, self._pointee, r, ctx, scope, holder, key, r.structure)
        else:
            holder[key] = None

    def _pointee(self, r, ctx, scope, holder, key, structure):
        r.structure = structure
        if type(self.inner) is _Iface and _single_pointer_form(r):
            ctx.notes.append(f"{structure}: [unique] interface pointer sent as one pointer to the "
                             f"MInterfacePointer instead of the IDL's two (offset {r.pos}); read as such")
            holder[key] = _read_mip(r, ctx)
            return
        self.inner.read(r, ctx, scope, holder, key)
        if holder[key] is None:
            holder[key] = REF_TO_NULL

    def write(self, w, v, ctx, scope):
        ref = w.referent(v is not None)
        if ref:
            w.defer(ref, self.inner.write, w, None if v is REF_TO_NULL else v, ctx, scope)


def _single_pointer_form(r: NdrReader) -> bool:
    """Whether an [in, out, unique] IFoo** comes as a single unique pointer (conformance,
    ulCntData, OBJREF right after the outer referent), as some hand-built stubs have it.
    Unambiguous: in the IDL form the word after the inner referent is the conformance, and
    a conformance equal to "MEOW" (1.4 GB) cannot fit a stub."""
    p = r.pos + (-(r.pos - r.base) % 4)
    b = r.buf
    return p + 12 <= r.end and b[p + 8:p + 12] == b"MEOW" and b[p:p + 4] == b[p + 4:p + 8] != b"\0\0\0\0"


def _check_count(r, what: str, expr, scope, ctx, n: int, at: int) -> None:
    want = _size_of(expr, scope, ctx)
    if want is not None and not isinstance(expr, int) and (want & 0xFFFFFFFF) != n:
        ctx.soft.append(DecodeError(r.structure, at, f"{what} count {n} does not match {expr} = {want}"))


class _Array(_Node):
    """array<T,n>: conformant array (max count, then the elements)."""

    __slots__ = ("elem", "size", "fast")
    _FAST = {"long": NdrReader.i32_array, "ulong": NdrReader.u32_array, "HRESULT": NdrReader.u32_array,
             "error_status_t": NdrReader.u32_array, "GUID": NdrReader.guid_array}

    def __init__(self, text: str, elem: _Node, size):
        super().__init__(text, max(4, elem.align), 4)
        self.elem = elem
        self.size = size
        self.fast = self._FAST.get(elem.text)
        self.ann = elem.ann

    def _elements(self, r, ctx, scope, holder, key, n):
        if self.elem.text == "byte":
            at = r.pos
            b = Blob(r.raw(n))
            b.offset = at
            holder[key] = b
        elif self.fast is not None:
            holder[key] = self.fast(r, n)
        else:
            out = [None] * n
            holder[key] = out
            read = self.elem.read
            for i in range(n):
                read(r, ctx, scope, out, i)

    def read(self, r, ctx, scope, holder, key):
        at = r.pos
        n = r.count(self.elem.min_size, self.text)
        _check_count(r, "array", self.size, scope, ctx, n, at)
        self._elements(r, ctx, scope, holder, key, n)

    def _write_elements(self, w, v, ctx, scope):
        if self.elem.text == "byte":
            w.raw(bytes(v))
            return
        write = self.elem.write
        for x in v:
            write(w, x, ctx, scope)

    def write(self, w, v, ctx, scope):
        v = v if v is not None else []
        w.count(len(v))
        self._write_elements(w, v, ctx, scope)


class _VArray(_Array):
    """varray<T,n,l>: conformant varying array (max count, offset, actual count, elements)."""

    __slots__ = ("length",)

    def __init__(self, text: str, elem: _Node, size, length):
        super().__init__(text, elem, size)
        self.length = length
        self.min_size = 12

    def read(self, r, ctx, scope, holder, key):
        mx = r.u32()                   # the bound need not fit the buffer: only actual count does
        at = r.pos
        _, n = r.varying(mx, self.elem.min_size, self.text)
        _check_count(r, "array actual", self.length, scope, ctx, n, at + 4)
        self._elements(r, ctx, scope, holder, key, n)

    def write(self, w, v, ctx, scope):
        v = v if v is not None else []
        mx = _size_of(self.size, scope, None)
        w.u32(max(mx if mx is not None else 0, len(v)))
        w.u32(0)
        w.u32(len(v))
        self._write_elements(w, v, ctx, scope)


class _Struct(_Node):
    __slots__ = ("name", "fields")

    def __init__(self, name: str):
        super().__init__(name, 1, 0)
        self.name = name
        self.fields: list[tuple[str, _Node, tuple | None]] = []

    def finish(self, fields):
        self.fields = fields
        self.align = max((n.align for _, n, _ in fields), default=1)
        self.min_size = sum(n.min_size for _, n, _ in fields)

    def read(self, r, ctx, scope, holder, key):
        r.align(self.align)
        d: dict = {}
        holder[key] = d
        name = self.name
        for fname, node, _ in self.fields:
            r.structure = name + "." + fname
            node.read(r, ctx, d, d, fname)

    def write(self, w, v, ctx, scope):
        v = dict(v or {})
        for fname, node, _ in self.fields:      # derive counts the caller left out
            if isinstance(node, _Unique) and isinstance(node.inner, _Array):
                node = node.inner
            if isinstance(node, _Array) and isinstance(node.size, str) and v.get(node.size) is None \
                    and v.get(fname) is not None:
                v[node.size] = len(v[fname])
        w.align(self.align)
        for fname, node, _ in self.fields:
            node.write(w, v.get(fname), ctx, v)


class _Union(_Node):
    """A non-encapsulated union: the discriminant, then the arm it selects; the value is
    {arm name: arm value}."""

    __slots__ = ("name", "switch", "switch_is", "arms", "by_name")

    def __init__(self, name: str, switch: _Prim, switch_is: str, arms):
        super().__init__(name, max([switch.align] + [n.align for _, _, n in arms]), switch.min_size)
        self.name = name
        self.switch = switch
        self.switch_is = switch_is
        self.arms = {v: (an, n) for v, an, n in arms}
        self.by_name = {an: (v, n) for v, an, n in arms}

    def read(self, r, ctx, scope, holder, key):
        r.align(self.align)
        r.structure = self.name
        at = r.pos
        cell = [None]
        self.switch.read(r, ctx, scope, cell, 0)
        disc = cell[0]
        want = _size_of(self.switch_is, scope, None)
        if want is not None and want != disc:
            ctx.soft.append(DecodeError(self.name, at, f"discriminant {disc} differs from {self.switch_is} {want}"))
        arm = self.arms.get(disc)
        if arm is None:
            r.fail(f"discriminant {disc} selects no arm", at)
        d: dict = {}
        holder[key] = d
        arm[1].read(r, ctx, scope, d, arm[0])

    def write(self, w, v, ctx, scope):
        v = v or {}
        name = next(iter(v), None)
        if name in self.by_name:
            disc, node = self.by_name[name]
        else:
            disc = _size_of(self.switch_is, scope, None) or 0
            name, node = self.arms.get(disc, (None, None))
            if node is None:
                raise EncodeError(f"{self.name}: no arm for discriminant {disc}")
        w.align(self.align)
        self.switch.write(w, disc, ctx, scope)
        node.write(w, v.get(name), ctx, scope)


# ---------------------------------------------------------------------------------------
# compiling type strings and method signatures

_NODES: dict[str, _Node] = {}


def _node(text: str) -> _Node:
    """The node of a type string of the table's vocabulary (cached: structures are shared).
    The grammar (wmiscope.spec.ndr_types) says what the string means; KeyError if it rejects it."""
    text = text.strip()
    n = _NODES.get(text)
    if n is not None:
        return n
    try:
        t = _types.parse(text)
    except _types.TypeStringError as e:
        raise KeyError(str(e)) from None
    if isinstance(t, _types.Unique):
        n = _Unique(text, _node(t.inner.text))
    elif isinstance(t, _types.VArray):
        n = _VArray(text, _node(t.element.text), t.size, t.length)
    elif isinstance(t, _types.Array):
        n = _Array(text, _node(t.element.text), t.size)
    elif isinstance(t, _types.InterfacePointer):
        n = _Iface(text, t.interface)
    elif isinstance(t, _types.Primitive):
        n = _Prim(text)
    elif isinstance(t, _types.Builtin):
        n = _BUILTIN_NODES[text](text)
    else:
        spec = _if.STRUCTS[t.name]
        if "union" in spec:
            u = spec["union"]
            n = _Union(text, _Prim(u["switch_type"]), u["switch_is"],
                       [(v, an, _node(at)) for v, an, at in u["arms"]])
        else:
            if not spec["fields"]:
                raise KeyError(f"structure {text} has no field list")
            n = _Struct(text)
            _NODES[text] = n           # before the fields: a structure may name itself
            n.finish([(f, _node(ft), _wc.field_annotation(text, f)) for f, ft in spec["fields"]])
    _NODES[text] = n
    return n


@dataclass(slots=True)
class _ParamPlan:
    name: str
    type: str
    node: _Node
    ann: tuple | None
    special: str | None


@dataclass(slots=True)
class _MethodPlan:
    interface: str
    method: str
    opnum: int
    label: str                     # "IWbemServices::ExecQuery"
    request: list
    response: list
    returns: _Node
    error: str | None = None       # a type the interpreter does not know


_PLANS: dict[tuple[str, int], _MethodPlan | None] = {}


def method_plan(interface: str, method) -> _MethodPlan | None:
    """The compiled plan of a method, by interface name or UUID and method name or opnum."""
    info = _if.interface_by_name(interface) or _if.interface_by_uuid(interface)
    if info is None:
        return None
    methods = _if.methods_of(info["uuid"])
    if isinstance(method, str):
        m = next((m for m in methods.values() if m["name"] == method), None)
        opnum = m["opnum"] if m else None
    else:
        opnum = method
    if opnum is None:
        return None
    key = (info["name"], opnum)
    if key in _PLANS:
        return _PLANS[key]
    m = methods.get(opnum)
    if m is None:
        return None                # not cached: hostile opnums must not grow the cache
    plan = _PLANS[key] = _compile(info, m)
    return plan


def _compile(info: dict, m: dict) -> _MethodPlan:
    chain = [i["name"] for i in _if.base_chain(info)]
    req, resp, error = [], [], None
    for p in m["params"]:
        if p.get("implicit"):
            continue
        try:
            node = _node(p["type"])
        except KeyError as e:
            error = str(e)
            break
        where = [(i, m["name"], p["name"]) for i in chain]
        ann = next((a for a in (_wc.annotation(*w) for w in where) if a), None)
        special = next((s for s in (_if.special_param(*w) for w in where) if s), None)
        pp = _ParamPlan(p["name"], p["type"], node, ann or node.ann, special)
        if p["dir"] in ("in", "inout"):
            req.append(pp)
        if p["dir"] in ("out", "inout"):
            resp.append(pp)
    return _MethodPlan(info["name"], m["name"], m["opnum"], f"{info['name']}::{m['name']}", req, resp,
                       _node(m["returns"]), error)


# ---------------------------------------------------------------------------------------
# native -> JSON

def _filetime_text(v: int):
    try:
        t = _FILETIME_EPOCH + datetime.timedelta(microseconds=v // 10)
    except OverflowError:
        return v
    return t.isoformat().replace("+00:00", "Z")


def _bytes_json(b: bytes) -> dict:
    d = {"length": len(b), "hex": bytes(b[:MAX_HEX]).hex()}
    if len(b) > MAX_HEX:
        d["truncated"] = True
    return d


def _object_summary(obj) -> dict | None:
    if isinstance(obj, wmio.WmiInstance):
        return {"object": "instance", "class": obj.class_name, "path": obj.path}
    if isinstance(obj, wmio.WmiClass):
        return {"object": "class", "class": obj.name, "superclass": obj.superclass}
    if isinstance(obj, _context.WbemContext):
        return {"object": "context", "properties": [p.to_json() for p in obj.properties]}
    return None


def _objref_dict(o: ObjRef) -> dict:
    d = o.to_dict()
    if o.std is not None:
        d["ipid"] = o.std.ipid
    return d


def _ptr_json(p: InterfacePointer) -> dict:
    o = p.objref
    if o is None:
        return {"objref": None, "length": len(p.data),
                "error": p.error.reason if p.error else "not an OBJREF"}
    d = {"objref": o.kind, "iid": o.iid, "interface": o.interface}
    if o.std is not None:
        d["ipid"] = o.std.ipid
    if o.resolver is not None:
        d["bindings"] = o.resolver.bindings_text()
    if o.clsid is not None:
        d["clsid"] = o.clsid
    s = _object_summary(p.obj)
    if s is not None:
        d.update(s)
    if p.error is not None:
        d["error"] = p.error.reason
    return d


def _json(node: _Node, v, ann):
    if v is None or v is REF_TO_NULL:
        return None
    t = type(node)
    if t is _Prim:
        return _wc.describe(ann, v) if ann else v
    if t is _Filetime:
        return _filetime_text(v)
    if t is _Iface or t is _Mip:
        return _ptr_json(v)
    if t is _Unique:
        return _json(node.inner, v, ann)
    if t is _Array or t is _VArray:
        if isinstance(v, bytes):
            return _bytes_json(v)
        elem = node.elem
        if type(elem) is _Prim and not ann:
            return v
        return [_json(elem, x, ann) for x in v]
    if t is _Struct:
        return {f: _json(n, v.get(f), a or n.ann) for f, n, a in node.fields}
    if t is _Union:
        return {k: _json(node.by_name[k][1], x, node.by_name[k][1].ann) for k, x in v.items()}
    return v


def _pointers(v, out: list) -> list:
    if isinstance(v, InterfacePointer):
        out.append(v)
    elif isinstance(v, dict):
        for x in v.values():
            _pointers(x, out)
    elif isinstance(v, list):
        for x in v:
            _pointers(x, out)
    return out


def _unwrap(node: _Node) -> _Node:
    while type(node) is _Unique:
        node = node.inner
    return node


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


# ---------------------------------------------------------------------------------------
# decoding a stub

@dataclass
class StubDecode:
    """One direction of one call decoded: the contract's params / return, the native values
    (what encode_* take back: `plain` forms), errors (DecodeError, located in the stub) and notes."""

    params: list
    ret: dict | None
    values: dict
    errors: list
    notes: list
    header: dict | None = None


def _param_dict(pp: _ParamPlan, off: int, length: int, pad: int, v) -> dict:
    d = {"name": pp.name, "type": pp.type, "offset": off, "length": length, "pad": pad,
         "value": _json(pp.node, v, pp.ann)}
    if type(pp.node) is _Unique:
        d["referent"] = v is not None          # the [unique] pointer itself was not NULL
    ptrs = _pointers(v, [])
    if ptrs:
        base = _unwrap(pp.node)
        if type(base) in (_Iface, _Mip):
            p = ptrs[0]
            if p.objref is not None:
                d["objref"] = _objref_dict(p.objref)
            if p.obj is not None:
                d["object"] = p.obj
        elif type(base) in (_Array, _VArray) and type(base.elem) in (_Iface, _Mip) and isinstance(v, list):
            # one entry per array element, NULL pointers included, so indexes match "value"
            items = [x if isinstance(x, InterfacePointer) else None for x in v]
            d["objrefs"] = [_objref_dict(x.objref) if x is not None and x.objref else None for x in items]
            d["object"] = [x.obj if x is not None else None for x in items]
        else:
            d["objrefs"] = [_objref_dict(p.objref) if p.objref else None for p in ptrs]
            found = [p.obj for p in ptrs if p.obj is not None]
            if len(found) == 1:
                d["object"] = found[0]
            elif found:
                d["object"] = found
    return d


def _skipped(pp: _ParamPlan, failed: str) -> dict:
    return {"name": pp.name, "type": pp.type, "offset": None, "length": 0, "pad": 0, "value": None,
            "error": {"structure": pp.type, "offset": None, "reason": f"not decoded: {failed} is malformed"}}


def _decode_params(plan: _MethodPlan, plans: list, r: NdrReader, ctx: _Ctx, response: bool):
    params: list = []
    errors: list = []
    failed = None
    buf = r.buf
    for pp in plans:
        if failed is not None:
            params.append(_skipped(pp, failed))
            continue
        soft_at = len(ctx.soft)
        start = r.pos
        r.structure = f"{plan.label}.{pp.name}"
        cell = [None]
        try:
            r.align(pp.node.align)
            off = r.pos
            pp.node.read(r, ctx, ctx.params, cell, 0)
            r.flush()
        except DecodeError as e:
            fallback = _SPECIAL_FALLBACKS.get(pp.special)
            if fallback is not None:
                del ctx.soft[soft_at:]
                d = fallback(pp, start, r, ctx)
                if d is not None:
                    params.append(d)
                    continue
            errors.extend(ctx.soft[soft_at:])
            errors.append(e)
            d = {"name": pp.name, "type": pp.type, "offset": start, "length": 0, "pad": 0, "value": None,
                 "error": e.to_record()}
            params.append(d)
            failed = pp.name
            continue
        v = cell[0]
        ctx.params[pp.name] = v
        if off > start and buf[start:off].strip(b"\x00"):
            ctx.notes.append(f"{plan.label}: non-zero alignment padding {buf[start:off].hex()} "
                             f"before {pp.name} at offset {start}")
        d = _param_dict(pp, off, r.pos - off, off - start, v)
        special = _SPECIAL_DECODERS.get(pp.special)
        if special is not None:
            special(pp, v, d, ctx)
        if len(ctx.soft) > soft_at:
            d["error"] = ctx.soft[soft_at].to_record()
            errors.extend(ctx.soft[soft_at:])
        params.append(d)
    ret = None
    if response:
        if failed is None:
            start = r.pos
            r.structure = f"{plan.label} return value"
            try:
                r.align(4)
                off = r.pos
                value = r.u32()
            except DecodeError as e:
                errors.append(e)
            else:
                ret = _wc.describe(plan.returns.ann or ("HRESULT",), value)
                ret.update(offset=off, pad=off - start)
        else:
            ret = None
    return params, ret, errors, failed


def _object_array_json(oa: _oa.ObjectArray) -> dict:
    objs = []
    for obj, kind, cid in zip(oa.objects, oa.object_types, oa.class_ids):
        e = {"bObjectType": _oa.ObjectType(kind).name}
        if cid is not None:
            e["classID"] = str(cid)
        e.update(_object_summary(obj) or {})
        objs.append(e)
    return {"bPacketType": oa.packet_type_name, "dwNumObjects": len(oa.objects), "objects": objs}


def _located(structure: str, base: int, fn, *args):
    """fn(*args) with its DecodeError moved from the sub-buffer to the stub (at base), and any
    other failure of a format decoder turned into one."""
    try:
        return fn(*args)
    except DecodeError as e:
        raise e.rebased(base) from None
    except Exception as e:  # the format decoders promise DecodeError; a slip must not end the call
        raise DecodeError(structure, base, f"{type(e).__name__}: {e}") from None


def _parse_array_at(buf: bytes, start: int, end: int, cache) -> _oa.ObjectArray:
    return _located("ObjectArray", start, _oa.parse_object_array, buf[start:end], cache, 0)


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
                    decoded = _located("WBEM_REFRESHED_OBJECT.m_pbBlob", getattr(blob, "offset", 0),
                                       _refresher.RefreshedObject(rid, btype, bytes(blob)).decode, template)
                except DecodeError as e:
                    ctx.soft.append(e)
                else:
                    insts = decoded if isinstance(decoded, list) else [decoded]
                    j["instances"] = [_object_summary(x) for x in insts if x is not None]
        objects.append(decoded)
    d["object"] = objects


def _indicate_object_array(pp, start: int, r: NdrReader, ctx: _Ctx) -> dict | None:
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
_SPECIAL_DECODERS = {"object_array": _special_object_array, "refreshed_objects": _special_refreshed}
_SPECIAL_FALLBACKS = {"indicate": _indicate_object_array}


def _decode_direction(plan: _MethodPlan, stub: bytes, params_offset: int, little: bool, state, call,
                      response: bool, objects: bool = True) -> StubDecode:
    ctx = _Ctx(stub, state, call, objects)
    r = NdrReader(stub, params_offset, base=0, little_endian=little, structure=plan.label)
    plans = plan.response if response else plan.request
    params, ret, errors, failed = _decode_params(plan, plans, r, ctx, response)
    if failed is None and r.pos < len(stub) and not errors:
        ctx.notes.append(f"{plan.label} {'response' if response else 'request'}: "
                         f"{len(stub) - r.pos} bytes after the last parameter (offset {r.pos})")
    return StubDecode(params, ret, ctx.params, errors, ctx.notes)


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
    out = _decode_direction(plan, stub, params_offset, little_endian, state or DefaultWmiState(), call, response)
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
            out = _decode_direction(plan, stub, part["params_offset"], little, self.state, call, direction == 1,
                                    self.objects)
            part["params"] = out.params
            if direction == 1:
                part["return"] = out.ret
            if out.notes:
                decoded.setdefault("notes", []).extend(out.notes)
            frame = _frame(call, direction)
            for e in out.errors:
                call.errors.append(ErrorRecord(stage="wmi", reason=e.reason, frame=frame, conn=call.conn,
                                               structure=e.structure, offset=e.offset))


# ---------------------------------------------------------------------------------------
# encoding

def _prepare(plan: _MethodPlan, plans: list, values: dict) -> dict:
    """The caller's values, with the counts it left out derived from the arrays they size and
    the MS-WMI encodings given as objects built into their byte arrays."""
    scope = dict(values)
    for pp in plans:
        v = scope.get(pp.name)
        if pp.special == "object_array" and isinstance(v, (list, tuple)):
            v = scope[pp.name] = _oa.build_object_array(list(v), _oa.PacketType.NEXT)
            scope.setdefault("puReturned", len(values[pp.name]))
        elif pp.special == "refreshed_objects" and isinstance(v, (list, tuple)):
            v = scope[pp.name] = [{"m_lRequestId": x.request_id, "m_lBlobType": x.blob_type,
                                   "m_lBlobLength": len(x.blob), "m_pbBlob": x.blob}
                                  if isinstance(x, _refresher.RefreshedObject) else x for x in v]
        node = _unwrap(pp.node)
        if isinstance(node, _Array) and v is not None:
            for expr in (node.size, getattr(node, "length", None)):
                if isinstance(expr, str) and scope.get(expr) is None:
                    scope[expr] = len(v)
    return scope


def _encode(plan: _MethodPlan, plans: list, values: dict, w: NdrWriter) -> None:
    scope = _prepare(plan, plans, values)
    for pp in plans:
        pp.node.write(w, scope.get(pp.name), None, scope)
        w.flush()


def _plan_for(interface: str, method) -> _MethodPlan:
    plan = method_plan(interface, method)
    if plan is None or plan.error:
        raise KeyError(f"{interface}::{method}: " + (plan.error if plan else "no such method in the table"))
    return plan


def encode_request(interface: str, method, values: dict, *, cid: str = GUID_NULL, little_endian: bool = True,
                   orpc_flags: int = 0) -> bytes:
    """The request stub (ORPCTHIS, then the [in] parameters) of a WMI method.

    values: parameter name -> value: int / str / None, dicts for structures, lists for
    arrays, bytes for byte arrays; interface pointers as OBJREF bytes, or WmiClass /
    WmiInstance (IWbemClassObject, custom-marshaled with MS-WMIO) or WbemContext; counts
    left out are taken from the arrays they size; enumerations and flags as numbers or as
    the decoder's {"value"} / {"flags"} dicts."""
    plan = _plan_for(interface, method)
    w = NdrWriter(little_endian=little_endian)
    write_orpcthis(w, cid, flags=orpc_flags)
    _encode(plan, plan.request, values, w)
    return w.getvalue()


def encode_response(interface: str, method, values: dict, hresult: int = 0, *, little_endian: bool = True) -> bytes:
    """The response stub (ORPCTHAT, the [out] parameters, the HRESULT) of a WMI method.
    pBuffer of IWbemWCOSmartEnum::Next may be given as a list of objects (an ObjectArray is
    built), paObjects of RemoteRefresh as formats.refresher.RefreshedObject items."""
    plan = _plan_for(interface, method)
    w = NdrWriter(little_endian=little_endian)
    write_orpcthat(w)
    _encode(plan, plan.response, values, w)
    w.align(4)
    w.u32(_wc.enum_value(hresult) & 0xFFFFFFFF)
    return w.getvalue()
