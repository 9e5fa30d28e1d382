"""The table interpreter: every method of the interface table decoded and encoded from its signature.

Each method's signature (wmiscope.spec.interfaces, read through the one type grammar
wmiscope.spec.ndr_types) is compiled once into a plan, a list of typed parameters; decoding
a stub walks its plan over the bytes after ORPCTHIS / ORPCTHAT, encoding walks the same
plan the other way. NDR as MIDL marshals these signatures (C706 14, MS-RPCE 2.2.5):
  - a top-level [unique] pointer (BSTR, interface pointer, unique<T>) is its referent ID,
    the pointee right after it; pointers embedded in a structure or an array have their
    pointees deferred until that construct ends (NdrReader.defer / flush);
  - an interface pointer is a unique pointer to an MInterfacePointer (MS-DCOM 2.2.14)
    holding an OBJREF;
  - a non-encapsulated union (_WBEM_REFRESH_INFO.m_Info) sends its discriminant first.

What only code can do is registered here by the modules that know it, as small named hooks
beside the generated reading (as Wireshark's pidl .cnf files sit beside its generated
dissectors): PAYLOAD_DECODERS (the object an OBJREF_CUSTOM carries, by its CLSID),
OBJREF_ENCODERS (an object given to the encoder -> its OBJREF), OBJECT_SUMMARIES (what a
decoded object shows in JSON), PARAM_HOOKS / PARAM_FALLBACKS / ENCODE_HOOKS (the parameters
of interfaces.SPECIAL_PARAMS). dissectors/wmi.py registers MS-WMI's.
"""

from __future__ import annotations

import datetime
import struct
from dataclasses import dataclass
from typing import Callable

from ..formats.errors import DecodeError, EncodeError
from ..formats.guid import guid_text
from ..spec import interfaces as _if
from ..spec import ndr_types as _types
from ..spec import wbem as _wc
from ..formats.objref import OBJREF_CUSTOM, ObjRef, parse_objref
from .ndr import GUID_NULL, NdrReader, NdrWriter
from .orpc import write_orpcthat, write_orpcthis

__all__ = [
    "Blob", "InterfacePointer", "REF_TO_NULL", "plain", "method_plan", "StubDecode", "decode_direction",
    "encode_request", "encode_response", "object_summary", "located",
    "PAYLOAD_DECODERS", "OBJREF_ENCODERS", "OBJECT_SUMMARIES", "PARAM_HOOKS", "PARAM_FALLBACKS", "ENCODE_HOOKS",
]

MAX_HEX = 64                       # bytes of a byte array shown in its JSON value

_FILETIME_EPOCH = datetime.datetime(1601, 1, 1, tzinfo=datetime.timezone.utc)

# ---------------------------------------------------------------------------------------
# hooks (see the module docstring)

# OBJREF_CUSTOM CLSID -> (structure name for errors, parse(payload bytes) -> object)
PAYLOAD_DECODERS: dict[str, tuple[str, Callable[[bytes], object]]] = {}
# (types, fn(value) -> OBJREF bytes): objects the encoder takes for an interface pointer
OBJREF_ENCODERS: list[tuple[tuple, Callable[[object], bytes]]] = []
# fn(object) -> dict | None: the JSON summary of a decoded object inside an interface pointer
OBJECT_SUMMARIES: list[Callable[[object], dict | None]] = []
# SPECIAL_PARAMS encoding -> fn(param plan, native value, param dict, ctx): decodes what the
# parameter's NDR value carries
PARAM_HOOKS: dict[str, Callable] = {}
# encoding -> fn(param plan, start, reader, ctx) -> param dict | None: reads the parameter some
# other way when its IDL form does not decode (None: report the IDL form's error)
PARAM_FALLBACKS: dict[str, Callable] = {}
# encoding -> fn(value, scope, values) -> the value as the IDL form takes it (the encoder's
# side of PARAM_HOOKS)
ENCODE_HOOKS: dict[str, Callable] = {}


# ---------------------------------------------------------------------------------------
# native values

class Blob(bytes):
    """Bytes read from a stub; `offset` says where they start in it (compares as bytes)."""

    offset = 0


@dataclass(slots=True, eq=False)
class InterfacePointer:
    """One MInterfacePointer read from a stub: where its OBJREF bytes are, the parsed OBJREF
    and, for the custom-marshaled WMI objects, the decoded object."""

    offset: int                     # of the OBJREF (abData) in the stub
    length: int                     # of the OBJREF (its conformance; the stub may hold fewer)
    stub: bytes                     # the stub it was read from
    objref: ObjRef | None = None
    obj: object = None              # WmiClass | WmiInstance | WbemContext
    error: DecodeError | None = None

    @property
    def data(self) -> bytes:
        """The OBJREF's octets, cut from the stub when asked for: a WMI object makes most
        of them, and the decoder reads the payload in place (its cache keeps a copy)."""
        return self.stub[self.offset:self.offset + self.length]

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
    p = InterfacePointer(off, n, buf)
    try:
        o = parse_objref(buf, off, off + n)
    except DecodeError as e:
        p.error = e
        ctx.soft.append(e)
        return p
    p.objref = o
    if ctx.objects and o.flags == OBJREF_CUSTOM and o.clsid in PAYLOAD_DECODERS:
        start = o.payload_offset
        try:
            p.obj = _PAYLOADS.decode(o.clsid, buf, start, min(start + o.payload_length, len(buf)))
        except DecodeError as e:
            p.error = e
            ctx.soft.append(e)
    return p


class _PayloadCache:
    """Decoded WMI objects by their exact bytes, least recently used out.

    Sessions fetch the same class definitions again and again (every wmiexec run
    asks for Win32_Process; every login for __NAMESPACE and its provider classes),
    and a class is the costliest thing we decode. Objects from here are shared:
    callers read them, never change them. Bounded by a byte budget, not a count,
    since one object can be close to a megabyte.

    An entry is found by the payload's class, length and first and last octets, then
    its whole payload is compared with the stub's octets in place: hashing every
    payload (80 KB on average in object-rich traffic) cost more than decoding the PDUs
    that carried it, and a hit now copies nothing. Two payloads alike in all but their
    middle share a slot: the later one replaces the earlier.
    """

    # 4 MB of octets keep every hit the 60 MB-1 GB corpora had with 8 MB, and peak memory
    # then stops rising once a run is a few hundred MB in (issue 11: flat from 200 MB).
    def __init__(self, budget: int = 4 << 20, largest: int = 1 << 20):
        self.budget = budget
        self.largest = largest
        self.used = 0
        # (clsid, length, first octets, last octets) -> (payload, object)
        self.items: dict[tuple, tuple[bytes, object]] = {}
        self.misses = 0             # with `lookups`, for the benchmarks' hit rates
        self.lookups = 0

    _ENDS = 64                      # octets of each end in the key

    def decode(self, clsid: str, buf: bytes, start: int, end: int):
        """The object of the payload buf[start:end] (offsets in errors relative to buf)."""
        structure, parse = PAYLOAD_DECODERS[clsid]
        self.lookups += 1
        ends = self._ENDS
        key = (clsid, end - start, buf[start:start + ends], buf[max(start, end - ends):end])
        items = self.items
        entry = items.pop(key, None)
        if entry is not None:
            if buf.startswith(entry[0], start):
                items[key] = entry
                return entry[1]
            self.used -= len(entry[0])
        self.misses += 1
        payload = buf[start:end]
        # Errors are not kept: their offsets depend on where the payload sat.
        obj = located(structure, start, parse, payload)
        if obj is None or len(payload) > self.largest:
            return obj
        self.used += len(payload)
        while self.used > self.budget and items:
            old = next(iter(items))
            self.used -= len(items.pop(old)[0])
        items[key] = (payload, obj)
        return obj


_PAYLOADS = _PayloadCache()




def _objref_bytes(v) -> bytes:
    """What an interface pointer parameter is given as -> the OBJREF to send."""
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    if isinstance(v, InterfacePointer):
        return bytes(v.data)
    for types, encode in OBJREF_ENCODERS:
        if isinstance(v, types):
            return encode(v)
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


class _FlatLayout:
    """A structure of primitives and GUIDs only: where each field sits from the structure's
    (aligned) start, as one struct format. NDR aligns each field to its own size from there."""

    __slots__ = ("names", "le", "be", "size", "guids", "last_label")
    _CODES = {"u8": "B", "u16": "H", "i16": "h", "u32": "I", "i32": "i", "u64": "Q", "i64": "q",
              "f32": "f", "f64": "d"}

    @classmethod
    def of(cls, node: "_Struct") -> "_FlatLayout | None":
        if node.conformant or not node.fields:
            return None
        fmt, names, guids, off = "", [], [], 0
        for fname, n, _ in node.fields:
            t = type(n)
            if t is _Guid:
                code, size, align = "16s", 16, 4
            elif t is _Prim:
                code, size, align = cls._CODES[_Prim._TABLE[n.text][0]], n.min_size, n.align
            else:
                return None
            pad = -off % align
            fmt += "x" * pad
            off += pad
            if t is _Guid:
                guids.append((len(names), off))
            names.append(fname)
            fmt += code
            off += size
        self = cls()
        self.names = tuple(names)
        self.le = struct.Struct("<" + fmt)
        self.be = struct.Struct(">" + fmt)
        self.size = off
        self.guids = tuple(guids)
        self.last_label = node.name + "." + names[-1]
        return self


# the nodes whose values are their JSON already (their _json is the identity)
_LEAVES = frozenset((_Guid, _WString, _CString, _Bstr))

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
             "error_status_t": NdrReader.u32_array, "GUID": NdrReader.guid_array,
             "ushort": NdrReader.u16_array, "uhyper": NdrReader.u64_array}

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
    """A structure: its fields in order. One whose last member is a conformant array
    (DUALSTRINGARRAY, ORPC_EXTENT) is a conformant structure: NDR sends that array's
    conformance first, ahead of the structure (C706 14.3.7.1)."""

    __slots__ = ("name", "fields", "conformant", "_reads", "_json_fields", "_flat", "_all_leaves")

    def __init__(self, name: str):
        super().__init__(name, 1, 0)
        self.name = name
        self.fields: list[tuple[str, _Node, tuple | None]] = []
        self.conformant = False
        self._reads: list = []
        self._json_fields: list = []
        self._flat: _FlatLayout | None = None
        self._all_leaves = False

    def finish(self, fields):
        self.fields = fields
        # Worked out once per structure, not per value read: every REMINTERFACEREF of a
        # RemRelease, every REMQIRESULT, every STDOBJREF walks these.
        self._reads = [(fname, node, self.name + "." + fname) for fname, node, _ in fields]
        self._json_fields = [(f, n, a or n.ann, _is_leaf(n, a or n.ann)) for f, n, a in fields]
        self._all_leaves = all(leaf for *_, leaf in self._json_fields)
        self.align = max((n.align for _, n, _ in fields), default=1)
        self.min_size = sum(n.min_size for _, n, _ in fields)
        self.conformant = bool(fields) and type(fields[-1][1]) is _Array
        if self.conformant:
            self.align = max(self.align, 4)
        self._flat = _FlatLayout.of(self)

    def read(self, r, ctx, scope, holder, key):
        flat = self._flat
        if flat is not None:
            # Fixed-size structure (STDOBJREF, REMINTERFACEREF ...): one unpack for all
            # its fields. Short of octets, the field-by-field read below says where.
            p = r.pos
            rem = (p - r.base) % self.align
            if rem:
                p += self.align - rem
            if p + flat.size <= r.end:
                buf, little = r.buf, r.little
                vals = (flat.le if little else flat.be).unpack_from(buf, p)
                if flat.guids:
                    vals = list(vals)
                    for i, fo in flat.guids:
                        vals[i] = guid_text(buf, p + fo, little)
                holder[key] = dict(zip(flat.names, vals))
                r.pos = p + flat.size
                r.structure = flat.last_label
                return
        self._read_fields(r, ctx, scope, holder, key)

    def _read_fields(self, r, ctx, scope, holder, key):
        d: dict = {}
        holder[key] = d
        fields = self._reads
        if self.conformant:
            *fields, (last_name, last, last_label) = fields
            r.structure = last_label
            at = r.pos
            n = r.count(last.elem.min_size, last_label)
        r.align(self.align)
        for fname, node, label in fields:
            r.structure = label
            node.read(r, ctx, d, d, fname)
        if self.conformant:
            r.structure = last_label
            _check_count(r, "array", last.size, d, ctx, n, at)
            last._elements(r, ctx, d, d, last_name, n)

    def write(self, w, v, ctx, scope):
        v = dict(v or {})
        for fname, node, _ in self.fields:      # derive counts the caller left out
            if isinstance(node, _Unique) and isinstance(node.inner, _Array):
                node = node.inner
            if isinstance(node, _Array) and isinstance(node.size, str) and v.get(node.size) is None \
                    and v.get(fname) is not None:
                v[node.size] = len(v[fname])
        fields = self.fields
        if self.conformant:
            *fields, (last_name, last, _) = fields
            elements = v.get(last_name) or []
            w.count(len(elements))
        w.align(self.align)
        for fname, node, _ in fields:
            node.write(w, v.get(fname), ctx, v)
        if self.conformant:
            last._write_elements(w, elements, ctx, v)


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
    pointers: bool = True          # whether the type can hold an interface pointer at all
    label: str = ""                # "IWbemServices::ExecQuery.strQuery": where a DecodeError is
    leaf: bool = False             # whether the value is its own JSON (no _json walk per call)
    unique: bool = False           # a [unique] pointer: its referent ID is shown


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
    header: bool = False           # ORPCTHIS / ORPCTHAT written as parameters (the plain RPC
                                   # activation interfaces): read as the ORPC header, not here


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


def _holds_pointers(node: _Node, seen: set) -> bool:
    """Whether values of this type can contain an interface pointer (decided once per
    parameter, so that the values of the others are not searched for one)."""
    if isinstance(node, (_Iface, _Mip)):
        return True
    if id(node) in seen:
        return False
    seen.add(id(node))
    if isinstance(node, (_Unique, )):
        return _holds_pointers(node.inner, seen)
    if isinstance(node, _Array):
        return _holds_pointers(node.elem, seen)
    if isinstance(node, _Struct):
        return any(_holds_pointers(n, seen) for _, n, _ in node.fields)
    if isinstance(node, _Union):
        return any(_holds_pointers(n, seen) for _, n in node.arms.values())
    return False


def _compile(info: dict, m: dict) -> _MethodPlan:
    chain = [i["name"] for i in _if.base_chain(info)]
    req, resp, error, header = [], [], None, False
    for p in m["params"]:
        if p.get("implicit"):
            continue
        if p["type"] in ("ORPCTHIS", "ORPCTHAT"):
            header = True
            continue
        try:
            node = _node(p["type"])
        except KeyError as e:
            error = str(e)
            break
        where = [(i, m["name"], p["name"]) for i in chain]
        ann = next((a for a in (_wc.annotation(*w) for w in where) if a), None)
        special = next((s for s in (_if.special_param(*w) for w in where) if s), None)
        pp = _ParamPlan(p["name"], p["type"], node, ann or node.ann, special, _holds_pointers(node, set()),
                        f"{info['name']}::{m['name']}.{p['name']}", _is_leaf(node, ann or node.ann),
                        type(node) is _Unique)
        if p["dir"] in ("in", "inout"):
            req.append(pp)
        if p["dir"] in ("out", "inout"):
            resp.append(pp)
    return _MethodPlan(info["name"], m["name"], m["opnum"], f"{info['name']}::{m['name']}", req, resp,
                       _node(m["returns"]), error, header)


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


def object_summary(obj) -> dict | None:
    """What a decoded object shows in its interface pointer's JSON (OBJECT_SUMMARIES)."""
    if obj is None:
        return None
    for summary in OBJECT_SUMMARIES:
        s = summary(obj)
        if s is not None:
            return s
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
    s = object_summary(p.obj)
    if s is not None:
        d.update(s)
    if p.error is not None:
        d["error"] = p.error.reason
    return d


def _is_leaf(node: _Node, ann) -> bool:
    """Whether _json gives a value of this node back as it is (no annotation to describe it)."""
    t = type(node)
    return t in _LEAVES or (t is _Prim and not ann)


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
        if type(elem) in _LEAVES:
            return list(v)
        return [_json(elem, x, ann) for x in v]
    if t is _Struct:
        if node._all_leaves and len(v) == len(node._json_fields):
            return dict(v)          # read field by field in order: its keys are the fields
        # leaves copied straight: a struct's GUIDs and counts are most of what DCOM sends
        return {f: v.get(f) if leaf else _json(n, v.get(f), a) for f, n, a, leaf in node._json_fields}
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


def _param_dict(pp: _ParamPlan, off: int, length: int, pad: int, v, r: NdrReader) -> dict:
    d = {"name": pp.name, "type": pp.type, "offset": off, "length": length, "pad": pad,
         "value": v if pp.leaf else _json(pp.node, v, pp.ann)}
    if pp.unique:
        # the [unique] pointer's referent ID (0: NULL), as the traces print it ("Pointer To 0x00020000")
        d["referent"] = int.from_bytes(r.buf[off:off + 4], "little" if r.little else "big")
    ptrs = _pointers(v, []) if pp.pointers else None
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
        r.structure = pp.label
        cell = [None]
        try:
            r.align(pp.node.align)
            off = r.pos
            pp.node.read(r, ctx, ctx.params, cell, 0)
            r.flush()
        except DecodeError as e:
            fallback = PARAM_FALLBACKS.get(pp.special)
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
        d = _param_dict(pp, off, r.pos - off, off - start, v, r)
        special = PARAM_HOOKS.get(pp.special)
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


def located(structure: str, base: int, fn, *args):
    """fn(*args) with its DecodeError moved from the sub-buffer to the stub (at base), and any
    other failure of a format decoder turned into one."""
    try:
        return fn(*args)
    except DecodeError as e:
        raise e.rebased(base) from None
    except Exception as e:  # the format decoders promise DecodeError; a slip must not end the call
        raise DecodeError(structure, base, f"{type(e).__name__}: {e}") from None



def decode_direction(plan: _MethodPlan, stub: bytes, params_offset: int, little: bool, state, call,
                      response: bool, objects: bool = True) -> StubDecode:
    ctx = _Ctx(stub, state, call, objects)
    r = NdrReader(stub, params_offset, base=0, little_endian=little, structure=plan.label)
    plans = plan.response if response else plan.request
    params, ret, errors, failed = _decode_params(plan, plans, r, ctx, response)
    if failed is None and r.pos < len(stub) and not errors:
        # Legal NDR ends at the last parameter (auth padding is gone already): octets
        # left over mean a marshaling the table does not expect, and the values read
        # before them may be wrong (a unique pointer where a plain GUID belongs shifts
        # every later parameter by its referent ID). A named anomaly, not a note.
        e = DecodeError(f"{plan.label} {'response' if response else 'request'}", r.pos,
                        f"{len(stub) - r.pos} bytes after the last parameter")
        e.kind = "stub_trailing_bytes"      # the decoder prefixes its layer: wmi. / dcom.
        errors.append(e)
    return StubDecode(params, ret, ctx.params, errors, ctx.notes)



# ---------------------------------------------------------------------------------------
# encoding

def _prepare(plan: _MethodPlan, plans: list, values: dict) -> dict:
    """The caller's values, with the counts it left out derived from the arrays they size and
    the encodings of SPECIAL_PARAMS given as objects turned into their IDL form (ENCODE_HOOKS)."""
    scope = dict(values)
    for pp in plans:
        v = scope.get(pp.name)
        hook = ENCODE_HOOKS.get(pp.special)
        if hook is not None and v is not None:
            v = scope[pp.name] = hook(v, scope, values)
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
    """The request stub (ORPCTHIS, then the [in] parameters) of an ORPC method of the table.

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
    """The response stub (ORPCTHAT, the [out] parameters, the HRESULT) of an ORPC method of the table.
    pBuffer of IWbemWCOSmartEnum::Next may be given as a list of objects (an ObjectArray is
    built), paObjects of RemoteRefresh as formats.refresher.RefreshedObject items."""
    plan = _plan_for(interface, method)
    w = NdrWriter(little_endian=little_endian)
    write_orpcthat(w)
    _encode(plan, plan.response, values, w)
    w.align(4)
    w.u32(_wc.enum_value(hresult) & 0xFFFFFFFF)
    return w.getvalue()
