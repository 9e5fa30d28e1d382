"""MS-WMI 2.2.13 IWbemContext: the IWbemContextBuffer marshaling structures.

An IWbemContext travels custom-marshaled (MS-DCOM 2.2.18.6 OBJREF_CUSTOM,
unmarshaler CLSID 674B6698-EE92-11D0-AD71-00C04FD8FDFF); the OBJREF's
pObjectData is an IWbemContextBuffer (2.2.13.1): a GUID and a list of named,
typed properties (IWbemContextProperty, 2.2.13.2), whose names and BSTR values
are IWbemContextStrings (2.2.13.3) and whose array values are
IWbemContextArrays (2.2.13.4).  Property types are MS-OAUT 2.2.7 VARTYPEs.

VT_UNKNOWN values.  The spec says a VT_UNKNOWN value "MUST be marshaled as a
buffer for the IWbemClassObject interface", and in its own words (2.2.4 and
2.2.13, "Marshaling buffer layout") the marshaling buffer of a custom-marshaled
interface is the OBJREF_CUSTOM's pObjectData, which for IWbemClassObject is an
MS-WMIO EncodingUnit (2.2.4).  So an embedded object is encoded here as a bare
EncodingUnit, self-delimited by its ObjectEncodingLength.  Because a
CoMarshalInterface-style writer would instead emit the whole OBJREF_CUSTOM
(MEOW, IID_IWbemClassObject, CLSID 4590F812-1D3A-11D0-891F-00AA004B2E24,
cbExtension, reserved, then that EncodingUnit), the decoder accepts that form
too and records it in ContextProperty.objref so the encoder reproduces it.
No capture at hand carries an IWbemContext, so neither form is confirmed by
real traffic.
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass, field
from enum import IntEnum

from construct import (
    Bytes, Construct, ConstructError, ExprAdapter, Float32l, Float64l, Int8sl, Int8ul,
    Int16sl, Int16ul, Int32sl, Int32ul, Padded, Pass, Rebuild, Struct, Subconstruct, len_, this,
)

from ..spec import interfaces as _if
from . import wmio
from .cim import named
from .declarations import Located, construct_failure
from .errors import DecodeError, EncodeError
from .objref import ObjrefCustomHeader

__all__ = [
    "VarType", "VT_ARRAY", "ContextProperty", "WbemContext",
    "parse_context", "build_context", "parse_context_objref", "build_context_objref",
    "CLSID_WBEM_CONTEXT_UNMARSHALER", "IID_IWBEM_CONTEXT",
]


IID_IWBEM_CONTEXT = uuid.UUID(_if.uuid_of("IWbemContext"))
CLSID_WBEM_CONTEXT_UNMARSHALER = uuid.UUID(_if.uuid_of("WbemContext unmarshaler"))
IID_IWBEM_CLASS_OBJECT = uuid.UUID(_if.uuid_of("IWbemClassObject"))
CLSID_WBEM_CLASS_OBJECT_UNMARSHALER = uuid.UUID(_if.uuid_of("WbemClassObject unmarshaler"))


class VarType(IntEnum):
    """The MS-OAUT 2.2.7 VARENUM values 2.2.13.2 allows as PropertyType."""

    VT_NULL = 1
    VT_I2 = 2
    VT_I4 = 3
    VT_R4 = 4
    VT_R8 = 5
    VT_BSTR = 8
    VT_BOOL = 11
    VT_UNKNOWN = 13
    VT_I1 = 16
    VT_UI1 = 17
    VT_UI2 = 18
    VT_UI4 = 19


VT_ARRAY = 0x2000


def type_name(vartype: int) -> str:
    """"VT_I4", "VT_ARRAY|VT_BSTR", or hex for a type outside 2.2.13.2."""
    base = vartype & ~VT_ARRAY
    try:
        name = VarType(base).name
    except ValueError:
        name = f"0x{base:04X}"
    return f"VT_ARRAY|{name}" if vartype & VT_ARRAY else name


# ---------------------------------------------------------------------------
# declarations
# ---------------------------------------------------------------------------

class CappedArray(Subconstruct):
    """Array(count, subcon) whose count is checked against the bytes left first.

    min_size is the fewest bytes one element can take.  Zero-sized elements
    (VT_NULL) take no input at all, so their count has a fixed ceiling instead,
    lest 8 bytes of input ask for a 4-billion-item list.
    """

    ZERO_SIZE_CEILING = 65536

    def __init__(self, count, subcon, min_size: int, what: str):
        super().__init__(subcon)
        self.count = count
        self.min_size = min_size
        self.what = what

    def _parse(self, stream, context, path):
        count = self.count(context)
        here = stream.tell()
        stream.seek(0, io.SEEK_END)
        left = stream.tell() - here
        stream.seek(here)
        if self.min_size == 0:
            if count > self.ZERO_SIZE_CEILING:
                raise ConstructError(f"{count} {self.what} of size 0: more than {self.ZERO_SIZE_CEILING}",
                                     path=path)
        elif count * self.min_size > left:
            raise ConstructError(f"{count} {self.what} cannot fit in the {left} bytes left", path=path)
        return [self.subcon._parsereport(stream, context, path) for _ in range(count)]

    def _build(self, obj, stream, context, path):
        return [self.subcon._build(item, stream, context, path) for item in obj]


# 2.2.13.3: a character count, then that many UTF-16 code units, no NUL.
IWbemContextString = Located("IWbemContextString", ExprAdapter(
    Struct(
        "StringLength" / Rebuild(Int32ul, lambda ctx: len(ctx.Characters) // 2),
        "Characters" / Bytes(this.StringLength * 2),
    ),
    lambda raw, ctx: raw.Characters.decode("utf-16-le", "surrogatepass"),
    lambda text, ctx: {"Characters": text.encode("utf-16-le", "surrogatepass")},
))

# MS-OAUT VARIANT_BOOL: 0xFFFF is TRUE; any non-zero value reads as true.
VariantBool = ExprAdapter(Int16ul, lambda raw, ctx: raw != 0, lambda v, ctx: 0xFFFF if v else 0)

# MS-DCOM 2.2.18.1 OBJREF + 2.2.18.6 OBJREF_CUSTOM up to pObjectData, declared in formats/objref.
ObjrefCustom = ObjrefCustomHeader


class _ObjectMarshalingBuffer(Construct):
    """VT_UNKNOWN value: an IWbemClassObject marshaling buffer (see module doc).

    Parses to (object, objref) where objref says whether the EncodingUnit came
    wrapped in an OBJREF_CUSTOM; builds from the same pair.
    """

    def _parse(self, stream, context, path):
        start = stream.tell()
        head = stream.read(ObjrefCustom.size)
        stream.seek(start)
        objref = head[:4] == b"MEOW"
        if objref:
            try:
                values = ObjrefCustom.unpack(head, 0)
            except DecodeError as e:
                raise e.rebased(start) from None
            if uuid.UUID(bytes_le=values[2]) != IID_IWBEM_CLASS_OBJECT:
                raise DecodeError("OBJREF_CUSTOM.iid", start + 8,
                                  f"must be IID_IWbemClassObject, found {uuid.UUID(bytes_le=values[2])}")
            stream.seek(start + ObjrefCustom.size)
        unit_start = stream.tell()
        prefix = stream.read(8)
        if len(prefix) < 8:
            raise DecodeError("EncodingUnit", unit_start, "truncated: 8 bytes needed")
        length = int.from_bytes(prefix[4:], "little")
        body = stream.read(length)
        if len(body) < length:
            raise DecodeError("EncodingUnit.ObjectEncodingLength", unit_start + 4,
                              f"{length} bytes announced, {len(body)} left")
        try:
            obj = wmio.parse_encoding_unit(prefix + body, 0)
        except DecodeError as e:
            raise e.rebased(unit_start) from None
        return obj, objref

    def _build(self, value, stream, context, path):
        obj, objref = value
        unit = wmio.build_encoding_unit(obj)
        if objref:
            stream.write(ObjrefCustom.pack(
                iid=IID_IWBEM_CLASS_OBJECT.bytes_le, clsid=CLSID_WBEM_CLASS_OBJECT_UNMARSHALER.bytes_le,
                cbExtension=0, reserved=len(unit)))
        stream.write(unit)
        return value


ObjectMarshalingBuffer = Located("IWbemClassObject marshaling buffer", _ObjectMarshalingBuffer())

# 2.2.13.2 PropertyValue of a non-array property: small scalars sit in the
# first bytes of an 8-byte slot.
SCALAR_VALUES = {
    VarType.VT_NULL: Pass,
    VarType.VT_I1: Padded(8, Int8sl),
    VarType.VT_UI1: Padded(8, Int8ul),
    VarType.VT_I2: Padded(8, Int16sl),
    VarType.VT_UI2: Padded(8, Int16ul),
    VarType.VT_BOOL: Padded(8, VariantBool),
    VarType.VT_I4: Padded(8, Int32sl),
    VarType.VT_UI4: Padded(8, Int32ul),
    VarType.VT_R4: Padded(8, Float32l),
    VarType.VT_R8: Float64l,
    VarType.VT_BSTR: IWbemContextString,
    VarType.VT_UNKNOWN: ObjectMarshalingBuffer,
}

# 2.2.13.4 Elements: packed at their natural size, except VT_R4, whose table
# row says an 8-byte slot; an ElementSize of 4 is read as packed floats.
# (element construct, accepted ElementSize values, ElementSize written, min bytes)
ARRAY_ELEMENTS = {
    VarType.VT_NULL: (Pass, (0,), 0, 0),
    VarType.VT_I1: (Int8sl, (1,), 1, 1),
    VarType.VT_UI1: (Int8ul, (1,), 1, 1),
    VarType.VT_I2: (Int16sl, (2,), 2, 2),
    VarType.VT_UI2: (Int16ul, (2,), 2, 2),
    VarType.VT_BOOL: (VariantBool, (2,), 2, 2),
    VarType.VT_I4: (Int32sl, (4,), 4, 4),
    VarType.VT_UI4: (Int32ul, (4,), 4, 4),
    VarType.VT_R4: (None, (4, 8), 8, 4),
    VarType.VT_R8: (Float64l, (8,), 8, 8),
    # <4>/<5>: ElementSize is the pointer size of the sender (4 or 8), not a stride.
    VarType.VT_BSTR: (IWbemContextString, None, 8, 4),
    VarType.VT_UNKNOWN: (ObjectMarshalingBuffer, None, 8, 8),
}


def _element_construct(base: int, element_size: int):
    con = ARRAY_ELEMENTS[base][0]
    return con if con is not None else Padded(element_size, Float32l)


class _ArrayElements(Construct):
    """IWbemContextArray.Elements: ElementCount values of the property's base type."""

    def _parse(self, stream, context, path):
        base = context._.PropertyType & ~VT_ARRAY
        _, accepted, _, min_size = ARRAY_ELEMENTS[base]
        size = context.ElementSize
        if accepted is not None and size not in accepted:
            raise ConstructError(f"ElementSize {size} does not match {type_name(base)} "
                                 f"(expected {' or '.join(map(str, accepted))})", path=path)
        elements = CappedArray(lambda ctx: ctx.ElementCount,
                               _element_construct(base, size), min_size, "elements")
        return elements._parsereport(stream, context, path)

    def _build(self, obj, stream, context, path):
        base = context._.PropertyType & ~VT_ARRAY
        con = _element_construct(base, context.ElementSize)
        return [con._build(item, stream, context, path) for item in obj]


IWbemContextArray = Located("IWbemContextArray", Struct(
    "ElementCount" / Rebuild(Int32ul, len_(this.Elements)),
    "ElementSize" / Int32ul,
    "Elements" / _ArrayElements(),
))


class _PropertyValue(Construct):
    """2.2.13.2 PropertyValue, chosen by PropertyType."""

    @staticmethod
    def _allowed(vartype: int) -> bool:
        return vartype & ~VT_ARRAY in VarType._value2member_map_ and not vartype & ~(VT_ARRAY | 0xFF)

    def _choose(self, vartype: int):
        return IWbemContextArray if vartype & VT_ARRAY else SCALAR_VALUES[vartype & ~VT_ARRAY]

    def _parse(self, stream, context, path):
        vartype = context.PropertyType
        if not self._allowed(vartype):
            raise DecodeError("IWbemContextProperty.PropertyType", stream.tell() - 2,
                              f"0x{vartype:04X} ({type_name(vartype)}) is not a type 2.2.13.2 allows")
        return self._choose(vartype)._parsereport(stream, context, path)

    def _build(self, obj, stream, context, path):
        return self._choose(context.PropertyType)._build(obj, stream, context, path)


IWbemContextProperty = Located("IWbemContextProperty", Struct(
    "PropertyName" / IWbemContextString,
    "PropertyFlags" / Int32ul,
    "PropertyType" / Int16ul,
    "PropertyValue" / _PropertyValue(),
))

GUID = ExprAdapter(Bytes(16), lambda raw, ctx: uuid.UUID(bytes_le=raw), lambda u, ctx: u.bytes_le)

# the fewest bytes a property takes: empty name, flags, type, VT_NULL value
_MIN_PROPERTY_SIZE = 4 + 4 + 2

IWbemContextBuffer = Located("IWbemContextBuffer", Struct(
    "NumGuids" / Rebuild(Int32ul, len_(this.Guids)),
    "Guids" / CappedArray(this.NumGuids, GUID, 16, "GUIDs"),
    "NumProps" / Rebuild(Int32ul, len_(this.Properties)),
    "Properties" / CappedArray(this.NumProps, IWbemContextProperty, _MIN_PROPERTY_SIZE, "properties"),
))


# ---------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------

@dataclass
class ContextProperty:
    """One IWbemContextProperty.

    type: PropertyType, a VarType possibly ORed with VT_ARRAY.
    value: None (VT_NULL), int, float, bool, str, a wmio WmiClass/WmiInstance
    (VT_UNKNOWN), or a list of those for an array.
    element_size: the array's ElementSize (defaults to what 64-bit Windows sends).
    objref: VT_UNKNOWN objects were (are to be) wrapped in an OBJREF_CUSTOM
    (always False after decoding an empty array: nothing shows the form).
    """

    name: str
    type: int
    value: object = None
    flags: int = 0
    element_size: int | None = None
    objref: bool = False

    def __post_init__(self):
        if self.type & VT_ARRAY and self.element_size is None:
            entry = ARRAY_ELEMENTS.get(self.type & ~VT_ARRAY)
            self.element_size = entry[2] if entry else 0

    @property
    def type_name(self) -> str:
        return type_name(self.type)

    def to_json(self) -> dict:
        out = {"name": self.name, "type": self.type_name, "value": _json_value(self.value)}
        if self.flags:
            out["flags"] = self.flags
        if self.type & VT_ARRAY:
            out["element_size"] = self.element_size
        if self.objref:
            out["objref"] = True
        return out


def _json_value(v):
    if isinstance(v, list):
        return [_json_value(x) for x in v]
    if isinstance(v, (wmio.WmiClass, wmio.WmiInstance)):
        return wmio.to_json(v)
    return v


@dataclass
class WbemContext:
    """An IWbemContextBuffer (2.2.13.1)."""

    guids: list[uuid.UUID] = field(default_factory=list)
    properties: list[ContextProperty] = field(default_factory=list)
    size: int = field(default=0, compare=False)   # bytes taken in the buffer

    def get(self, name: str, default=None):
        """Value of the property of that name (case-insensitive, as WMI names are)."""
        p = named(self.properties, name)
        return default if p is None else p.value

    def to_json(self) -> dict:
        return {"structure": "IWbemContextBuffer", "guids": [str(g) for g in self.guids],
                "properties": [p.to_json() for p in self.properties]}


# ---------------------------------------------------------------------------
# parse / build
# ---------------------------------------------------------------------------

def parse_context(buf, offset: int = 0, end: int | None = None) -> WbemContext:
    """Decode the IWbemContextBuffer at buf[offset:end] (2.2.13.1)."""
    data = bytes(buf[:end]) if end is not None else buf
    if offset < 0 or offset > len(data):
        raise DecodeError("IWbemContextBuffer", offset, "offset outside the buffer")
    stream = io.BytesIO(data)
    stream.seek(offset)
    try:
        raw = IWbemContextBuffer.parse_stream(stream)
    except DecodeError:
        raise
    except RecursionError:
        raise DecodeError("IWbemContextBuffer", offset, "nesting too deep") from None
    except (ConstructError, ValueError, OverflowError, IndexError) as e:
        # Located names every structure; this is the last line of defence
        raise DecodeError("IWbemContextBuffer", stream.tell(), str(e)) from None
    props = []
    for p in raw.Properties:
        value, objref, element_size = p.PropertyValue, False, None
        base = p.PropertyType & ~VT_ARRAY
        if p.PropertyType & VT_ARRAY:
            element_size = value.ElementSize
            value = list(value.Elements)
        if base == VarType.VT_UNKNOWN:
            if p.PropertyType & VT_ARRAY:
                objref = any(o for _, o in value)
                value = [obj for obj, _ in value]
            else:
                value, objref = value
        props.append(ContextProperty(p.PropertyName, p.PropertyType, value, p.PropertyFlags,
                                     element_size, objref))
    return WbemContext(list(raw.Guids), props, size=stream.tell() - offset)


def build_context(ctx: WbemContext) -> bytes:
    """Encode an IWbemContextBuffer; EncodeError if a value does not fit its type."""
    props = []
    for p in ctx.properties:
        base = p.type & ~VT_ARRAY
        if not _PropertyValue._allowed(p.type):
            raise EncodeError(f"IWbemContextProperty {p.name!r}: type 0x{p.type:04X} not allowed")
        value = p.value
        if base == VarType.VT_UNKNOWN:
            value = [(v, p.objref) for v in value] if p.type & VT_ARRAY else (value, p.objref)
        if p.type & VT_ARRAY:
            if not isinstance(value, (list, tuple)):
                raise EncodeError(f"IWbemContextProperty {p.name!r}: an array type needs a list")
            value = {"ElementSize": p.element_size, "Elements": list(value)}
        props.append({"PropertyName": p.name, "PropertyFlags": p.flags,
                      "PropertyType": p.type, "PropertyValue": value})
    try:
        return IWbemContextBuffer.build({"Guids": list(ctx.guids), "Properties": props})
    except ConstructError as e:
        path, message = construct_failure(e)
        raise EncodeError(f"IWbemContextBuffer.{path}: {message}") from None
    except (TypeError, ValueError, OverflowError, AttributeError) as e:
        if isinstance(e, EncodeError):
            raise
        raise EncodeError(f"IWbemContextBuffer: {e}") from None


def parse_context_objref(buf, offset: int = 0, end: int | None = None) -> WbemContext:
    """Decode an IWbemContext OBJREF_CUSTOM (MEOW ... CLSID 674B6698-...) and its buffer."""
    values = ObjrefCustom.unpack(buf, offset, end)
    iid, clsid = uuid.UUID(bytes_le=values[2]), uuid.UUID(bytes_le=values[3])
    if iid != IID_IWBEM_CONTEXT:
        raise DecodeError("OBJREF_CUSTOM.iid", offset + 8, f"must be IID_IWbemContext, found {iid}")
    if clsid != CLSID_WBEM_CONTEXT_UNMARSHALER:
        raise DecodeError("OBJREF_CUSTOM.clsid", offset + 24,
                          f"must be {CLSID_WBEM_CONTEXT_UNMARSHALER}, found {clsid}")
    ctx = parse_context(buf, offset + ObjrefCustom.size, end)
    ctx.size += ObjrefCustom.size
    return ctx


def build_context_objref(ctx: WbemContext) -> bytes:
    """The OBJREF_CUSTOM a client sends for an IWbemContext parameter."""
    body = build_context(ctx)
    return ObjrefCustom.pack(iid=IID_IWBEM_CONTEXT.bytes_le, clsid=CLSID_WBEM_CONTEXT_UNMARSHALER.bytes_le,
                             cbExtension=0, reserved=len(body)) + body
