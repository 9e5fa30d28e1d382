"""[MS-WMIO] the WMI object encoding: CIM classes and instances on the wire.

Two layers:

raw    construct declarations that read like the spec's ABNF (section 2.2).
       HeapRefs stay numbers, heaps and ValueTables stay bytes; the only
       interpretation is bit twiddling inside small named Adapters (HeapRef's
       dictionary bit, HeapLength's top bit, NdTable's two bits per
       property).  The raw layer is lossless: RawObjectBlock.build(parse(b))
       gives b back, for Windows's encodings too.
model  WmiClass / WmiInstance / Property / Method / Qualifier, with every
       HeapRef resolved to a Python value.  A HeapView decodes each heap item
       at most once; the raw structs are compiled (construct's codegen) and
       ValueTable cells are read with precompiled struct.Struct objects.

Building goes model -> raw (with a canonical heap layout) -> construct build.
An object decoded from bytes remembers its raw form; as long as the model is
unchanged, building it again gives the original bytes, whatever layout the
encoder chose.  Pass canonical=True to force our own layout.

Every decoding failure is a DecodeError naming the spec structure and the
absolute offset in the buffer handed to the public function.
"""

from __future__ import annotations

import copy
import io as _io
import struct
from dataclasses import dataclass, field
from typing import Any

from construct import (
    Adapter, Array, Bytes, Computed, Const, Construct, Container, If, Int8sl, Int8ul,
    Int16sl, Int16ul, Int32sl, Int32ul, Int64sl, Int64ul, Float32l, Float64l,
    ListContainer, Struct, Subconstruct, Switch, Tell, this,
)
from construct.core import ConstructError

from . import cim
from .cim import (
    CIM_ARRAY_FLAG, CIM_INHERITED_FLAG, CIM_TYPE_MASK, CimType, DmtfDateTime,
    DICTIONARY_INDEX, DICTIONARY_STRINGS, QualifierFlavor, flavor_names, named,
)
from .declarations import compiled_parser
from .errors import DecodeError, EncodeError

__all__ = [
    "CimType", "CIM_ARRAY_FLAG", "CIM_INHERITED_FLAG", "QualifierFlavor", "DmtfDateTime",
    "Qualifier", "Property", "Method", "WmiClass", "WmiInstance",
    "ObjectFlags", "ENCODING_UNIT_SIGNATURE",
    "parse_encoding_unit", "parse_object_block", "parse_instance_noclass", "parse_instance_parts",
    "build_encoding_unit", "build_object_block", "build_instance_noclass", "build_instance_parts",
    "build_instance_parts_sized",
    "to_json", "to_mof", "new_class", "new_instance", "flavor_names",
    "RawEncodingUnit", "RawObjectBlock", "RawEncodingUnitInstanceNoClass", "parse_raw",
]

ENCODING_UNIT_SIGNATURE = 0x12345678  # 2.2.77
HEAPREF_NULL = 0xFFFFFFFF              # 2.2.69: "HeapItem is not present"
DICTIONARY_BIT = 0x80000000            # 2.2.69: high bit of a HeapStringRef
HEAP_LENGTH_BIT = 0x80000000           # 2.2.66: HeapLength always has its MS bit set

MAX_DEPTH = 16        # nested ObjectBlocks (method signatures, embedded objects)
BUDGET_FACTOR = 16    # nested objects may re-read at most this many times the input


class ObjectFlags:
    """2.2.6 ObjectFlags bits."""

    CIM_CLASS = 0x01
    CIM_INSTANCE = 0x02
    HAS_DECORATION = 0x04
    PROTOTYPE = 0x10
    KEY_PROPERTY_MISSING = 0x40


# --------------------------------------------------------------------------
# raw layer: small named constructs
# --------------------------------------------------------------------------

def _reason(e: BaseException) -> str:
    msg = str(e).strip() or type(e).__name__
    # construct prefixes "Error in path (parsing) -> ..."; keep the message only
    return msg.splitlines()[-1][:200]


class Spec(Subconstruct):
    """Names a spec structure: any failure inside it becomes a DecodeError
    carrying that name and the absolute offset where the structure starts
    (the innermost named structure wins)."""

    def __init__(self, name: str, subcon):
        super().__init__(subcon)
        self.specname = name
        self.name = subcon.name

    def _fail(self, start: int, e: BaseException):
        if isinstance(e, DecodeError):
            raise e
        raise DecodeError(self.specname, start, _reason(e)) from None

    def _parse(self, stream, context, path):
        start = stream.tell()
        try:
            return self.subcon._parsereport(stream, context, path)
        except Exception as e:  # noqa: BLE001 - every decoder error becomes DecodeError
            self._fail(start, e)

    def _build(self, obj, stream, context, path):
        return self.subcon._build(obj, stream, context, path)

    def _sizeof(self, context, path):
        return self.subcon._sizeof(context, path)

    def _emitparse(self, code):
        code.linkedinstances[id(self)] = self
        fname = f"parse_spec_{code.allocateId()}"
        inner = self.subcon._compileparse(code)
        code.append(f"""
            def {fname}(io, this):
                start = io.tell()
                try:
                    return {inner}
                except Exception as e:
                    linkedinstances[{id(self)}]._fail(start, e)
        """)
        return f"{fname}(io, this)"


class _LinkedAdapter(Adapter):
    """Adapter that construct's compiler inlines as a call to _decode (instead
    of falling back to interpreting the whole enclosing structure)."""

    def _emitparse(self, code):
        code.linkedinstances[id(self)] = self
        return f"linkedinstances[{id(self)}]._decode({self.subcon._compileparse(code)}, this, None)"


class DictionaryRef(int):
    """2.2.80 DictionaryReference: a HeapStringRef naming a well-known string."""

    __slots__ = ()

    @property
    def string(self) -> str | None:
        return DICTIONARY_STRINGS[self] if self < len(DICTIONARY_STRINGS) else None

    def __repr__(self):
        return f"DictionaryRef({int(self)}:{self.string!r})"


class HeapRefAdapter(_LinkedAdapter):
    """2.2.69 HeapRef: offset into the current Heap; 0xFFFFFFFF is NULL (None);
    with the top bit set (HeapStringRef only) a DictionaryRef."""

    def _decode(self, obj, context, path):
        if obj == HEAPREF_NULL:
            return None
        if obj & DICTIONARY_BIT:
            return DictionaryRef(obj & ~DICTIONARY_BIT)
        return obj

    def _encode(self, obj, context, path):
        if obj is None:
            return HEAPREF_NULL
        if isinstance(obj, DictionaryRef):
            return DICTIONARY_BIT | int(obj)
        return obj


class HeapLengthAdapter(_LinkedAdapter):
    """2.2.66 HeapLength: 31-bit length of the HeapItems, MS bit always set.
    A missing top bit is kept (as a negative number) so the raw layer stays
    lossless; the model layer treats the low 31 bits as the length."""

    def _decode(self, obj, context, path):
        return obj & ~HEAP_LENGTH_BIT if obj & HEAP_LENGTH_BIT else -obj - 1

    def _encode(self, obj, context, path):
        return obj | HEAP_LENGTH_BIT if obj >= 0 else -obj - 1


class NdTableAdapter(_LinkedAdapter):
    """2.2.26 NdTable / 2.2.27 NullAndDefaultFlag: two bits per property,
    packed four to an octet, low bits first.  Decodes to one small int per
    slot (bit 0 = NULL, bit 1 = default/inherited), unused slots included."""

    def _decode(self, obj, context, path):
        return [(o >> s) & 3 for o in obj for s in (0, 2, 4, 6)]

    def _encode(self, obj, context, path):
        out = bytearray((len(obj) + 3) // 4)
        for i, v in enumerate(obj):
            out[i >> 2] |= (v & 3) << ((i & 3) * 2)
        return bytes(out)


def nd_table_length(property_count: int) -> int:
    """2.2.26: octetCount = (PropertyCount - 1) / 4 + 1 (0 octets for 0 properties)."""
    return (property_count + 3) // 4


def read_encoded_string(buf, pos: int, end: int) -> tuple[str, int, int]:
    """2.2.78 Encoded-String at buf[pos:end] -> (text, flag, end of string).

    Flag 0: one octet per character (the low octet of UTF-16, i.e. Latin-1),
    NUL-terminated.  Flag 1: UTF-16LE, terminated by a 16-bit NUL.
    Raises ValueError when malformed."""
    if pos >= end:
        raise ValueError("Encoded-String: no flag octet")
    flag = buf[pos]
    if flag == 0:
        z = buf.find(b"\0", pos + 1, end)
        if z < 0:
            raise ValueError("Encoded-String: no NUL terminator")
        return buf[pos + 1:z].decode("latin-1"), 0, z + 1
    if flag == 1:
        i = pos + 1
        while True:
            z = buf.find(b"\0\0", i, end)
            if z < 0:
                raise ValueError("Encoded-String: no UTF-16 NUL terminator")
            if (z - pos - 1) & 1 == 0:
                return buf[pos + 1:z].decode("utf-16-le", "surrogatepass"), 1, z + 2
            i = z + 1
    raise ValueError(f"Encoded-String: flag {flag} is neither 0 nor 1")


def _flag(s: str) -> int:
    """Encoded-String-Flag: 0 (one octet per character) when every character fits."""
    return 0 if all(ord(c) < 0x100 for c in s) else 1


def encode_string(s: str, flag: int | None = None) -> bytes:
    """2.2.78 Encoded-String; flag None picks the one-octet form when it can."""
    if flag is None:
        flag = _flag(s)
    if flag == 0:
        return b"\0" + s.encode("latin-1") + b"\0"
    return b"\1" + s.encode("utf-16-le", "surrogatepass") + b"\0\0"


class EncodedStringConstruct(Construct):
    """2.2.78 Encoded-String = Encoded-String-Flag *Character Null.
    Raw value: Container(Encoded_String_Flag, Character) so both forms survive."""

    def _parse(self, stream, context, path):
        start = stream.tell()
        chunk = b""
        while True:  # read ahead in chunks: these strings are short names
            more = stream.read(128)
            chunk += more
            try:
                text, flag, end = read_encoded_string(chunk, 0, len(chunk))
                break
            except ValueError:
                if not more or (chunk and chunk[0] > 1):
                    raise
        stream.seek(start + end)
        return Container(Encoded_String_Flag=flag, Character=text)

    def _build(self, obj, stream, context, path):
        stream.write(encode_string(obj.Character, obj.Encoded_String_Flag))
        return obj

    def _emitparse(self, code):
        code.linkedinstances[id(self)] = self
        return f"linkedinstances[{id(self)}]._parse(io, this, None)"


class RepeatWithin(Subconstruct):
    """*Item filling exactly `length` octets of the same stream (QualifierSet,
    DerivationList: an EncodingLength followed by items until it is used up)."""

    def __init__(self, length, subcon):
        super().__init__(subcon)
        self.length = length

    def _check(self, start, end, pos):
        if pos != end:
            raise ValueError(f"items overrun their EncodingLength by {pos - end} octets")

    def _parse(self, stream, context, path):
        length = self.length(context) if callable(self.length) else self.length
        if length < 0:
            raise ValueError(f"EncodingLength {length} is too small")
        start = stream.tell()
        end = start + length
        items = ListContainer()
        while stream.tell() < end:
            items.append(self.subcon._parsereport(stream, context, path))
        self._check(start, end, stream.tell())
        return items

    def _build(self, obj, stream, context, path):
        for item in obj:
            self.subcon._build(item, stream, context, path)
        return obj

    def _emitparse(self, code):
        code.linkedinstances[id(self)] = self
        fname = f"parse_repeatwithin_{code.allocateId()}"
        code.append(f"""
            def {fname}(io, this):
                length = {self.length!r}
                if length < 0:
                    raise ValueError("EncodingLength " + str(length) + " is too small")
                start = io.tell()
                end = start + length
                items = ListContainer()
                while io.tell() < end:
                    items.append({self.subcon._compileparse(code)})
                linkedinstances[{id(self)}]._check(start, end, io.tell())
                return items
        """)
        return f"{fname}(io, this)"


class Bounded(Subconstruct):
    """A block whose length is given beforehand (ObjectEncodingLength,
    MethodSignatureBlock.EncodingLength): parsed in place, it must not run
    past the length; octets left over (2.2.1 allows a larger length) are kept
    under the key "Trailing" so that building gives them back."""

    def __init__(self, length, subcon):
        super().__init__(subcon)
        self.length = length

    def _finish(self, obj, stream, end):
        pos = stream.tell()
        if pos > end:
            raise ValueError(f"block runs {pos - end} octets past its declared length")
        trailing = stream.read(end - pos) if pos < end else b""
        if len(trailing) != end - pos:
            raise ValueError("declared length runs past the end of the data")
        obj["Trailing"] = trailing
        return obj

    def _parse(self, stream, context, path):
        length = self.length(context) if callable(self.length) else self.length
        end = stream.tell() + length
        obj = self.subcon._parsereport(stream, context, path)
        return self._finish(obj, stream, end)

    def _build(self, obj, stream, context, path):
        self.subcon._build(obj, stream, context, path)
        stream.write(obj.get("Trailing", b"") or b"")
        return obj

    def _emitparse(self, code):
        code.linkedinstances[id(self)] = self
        fname = f"parse_bounded_{code.allocateId()}"
        code.append(f"""
            def {fname}(io, this):
                end = io.tell() + {self.length!r}
                obj = {self.subcon._compileparse(code)}
                return linkedinstances[{id(self)}]._finish(obj, io, end)
        """)
        return f"{fname}(io, this)"


def _cell(type_expr):
    """2.2.71 EncodedValue as an inline cell, chosen by a CimType expression:
    numbers, BOOL and char16 inline; arrays, strings and objects a 4-octet
    HeapRef (kept as a plain number here: the type says what it points to)."""
    cases = {
        CimType.SINT8: Int8sl, CimType.UINT8: Int8ul, CimType.SINT16: Int16sl,
        CimType.UINT16: Int16ul, CimType.SINT32: Int32sl, CimType.UINT32: Int32ul,
        CimType.SINT64: Int64sl, CimType.UINT64: Int64ul, CimType.REAL32: Float32l,
        CimType.REAL64: Float64l, CimType.BOOLEAN: Int16ul, CimType.CHAR16: Int16ul,
    }
    return Switch(type_expr, {int(k): v for k, v in cases.items()}, default=Int32ul)


# --------------------------------------------------------------------------
# raw layer: the ABNF of section 2.2
# --------------------------------------------------------------------------

HeapRef = HeapRefAdapter(Int32ul)                       # 2.2.69
HeapStringRef = HeapRef                                 # 2.2.68
EncodedString = EncodedStringConstruct()                # 2.2.78

Decoration = Spec("Decoration", Struct(                 # 2.2.7
    "DecServerName" / EncodedString,                    # 2.2.8
    "DecNamespaceName" / EncodedString,                 # 2.2.9
))

# 2.2.66 Heap = HeapLength *HeapItem (the items stay bytes in the raw layer)
Heap = Spec("Heap", Struct(
    "HeapLength" / HeapLengthAdapter(Int32ul),
    "_offset" / Tell,
    "HeapItem" / Bytes(this.HeapLength & 0x7FFFFFFF),
))

Qualifier = Spec("Qualifier", Struct(                   # 2.2.60
    "QualifierName" / HeapStringRef,                    # 2.2.61
    "QualifierFlavor" / Int8ul,                         # 2.2.62
    "QualifierType" / Int32ul,                          # 2.2.63 CimType
    "QualifierValue" / _cell(this.QualifierType & ~CIM_INHERITED_FLAG),  # 2.2.64 EncodedValue
))

QualifierSet = Spec("QualifierSet", Struct(             # 2.2.59
    "EncodingLength" / Int32ul,
    "Qualifier" / RepeatWithin(this.EncodingLength - 4, Qualifier),
))

ClassHeader = Spec("ClassHeader", Struct(               # 2.2.16
    "EncodingLength" / Int32ul,                         # the whole ClassPart
    "ReservedOctet" / Int8ul,
    "ClassNameRef" / HeapStringRef,                     # 2.2.19
    "NdTableValueTableLength" / Int32ul,                # 2.2.28
))

ClassNameEncoding = Spec("ClassNameEncoding", Struct(   # 2.2.18
    "ClassName" / EncodedString,
    "EncodingLength" / Int32ul,                         # length of the Encoded-String
))

DerivationList = Spec("DerivationList", Struct(         # 2.2.17
    "EncodingLength" / Int32ul,
    "ClassNameEncoding" / RepeatWithin(this.EncodingLength - 4, ClassNameEncoding),
))

PropertyLookup = Struct(                                # 2.2.23
    "PropertyNameRef" / HeapStringRef,                  # 2.2.24
    "PropertyInfoRef" / HeapRef,                        # 2.2.25
)

PropertyLookupTable = Spec("PropertyLookupTable", Struct(  # 2.2.21
    "PropertyCount" / Int32ul,                          # 2.2.22
    "PropertyLookup" / Array(this.PropertyCount, PropertyLookup),
))

PropertyInfo = Spec("PropertyInfo", Struct(             # 2.2.30 (a HeapItem)
    "PropertyType" / Int32ul,                           # 2.2.31 CimType | Inherited
    "DeclarationOrder" / Int16ul,                       # 2.2.33
    "ValueTableOffset" / Int32ul,                       # 2.2.34
    "ClassOfOrigin" / Int32ul,                          # 2.2.35
    "PropertyQualifierSet" / QualifierSet,              # 2.2.36
))

class TrailingOctets(Construct):
    """Octets between the end of a block's fields and the end its
    EncodingLength declares.  Parsing reads exactly that many (a negative
    count means the fields overran the length: an error); building writes
    whatever the raw Container holds, so a canonical build with none is not
    held to the length field (the builder computes that field afterwards)."""

    def __init__(self, length):
        super().__init__()
        self.length = length

    def _count(self, n):
        if n < 0:
            raise ValueError(f"fields overrun the EncodingLength by {-n} octets")
        return n

    def _parse(self, stream, context, path):
        n = self._count(self.length(context))
        data = stream.read(n)
        if len(data) != n:
            raise ValueError(f"EncodingLength runs {n - len(data)} octets past the end of the data")
        return data

    def _build(self, obj, stream, context, path):
        stream.write(obj or b"")
        return obj

    def _emitparse(self, code):
        code.linkedinstances[id(self)] = self
        fname = f"parse_trailing_{code.allocateId()}"
        code.append(f"""
            def {fname}(io, this):
                n = linkedinstances[{id(self)}]._count({self.length!r})
                data = io.read(n)
                if len(data) != n:
                    raise ValueError("EncodingLength runs past the end of the data")
                return data
        """)
        return f"{fname}(io, this)"


def _within(length, *fields):
    """Fields of a block whose EncodingLength (counted from the block's first
    octet) may exceed what the fields use: Windows pads some ClassParts, so
    the unused octets are kept as "Trailing" (lossless raw layer)."""
    return Struct(
        "_start" / Tell,
        *fields,
        "_end" / Tell,
        "Trailing" / TrailingOctets(length - (this._end - this._start)),
    )


ClassPart = Spec("ClassPart", _within(this.ClassHeader.EncodingLength,   # 2.2.15
    "ClassHeader" / ClassHeader,
    "DerivationList" / DerivationList,
    "ClassQualifierSet" / QualifierSet,                 # 2.2.20
    "PropertyLookupTable" / PropertyLookupTable,
    "_nd_offset" / Tell,
    "NdTable" / Spec("NdTable", NdTableAdapter(Bytes((this.PropertyLookupTable.PropertyCount + 3) // 4))),
    "ValueTable" / Spec("ValueTable", Bytes(               # 2.2.29
        this.ClassHeader.NdTableValueTableLength - (this.PropertyLookupTable.PropertyCount + 3) // 4)),
    "ClassHeap" / Heap,                                 # 2.2.37
))

MethodDescription = Spec("MethodDescription", Struct(   # 2.2.40
    "MethodName" / HeapStringRef,                       # 2.2.41
    "MethodFlags" / Int8ul,                             # 2.2.42
    "MethodPadding" / Bytes(3),                         # 2.2.43
    "MethodOrigin" / Int32ul,                           # 2.2.44
    "MethodQualifiers" / HeapRef,                       # 2.2.45 -> QualifierSet
    "InputSignature" / HeapRef,                         # 2.2.46 -> MethodSignatureBlock
    "OutputSignature" / HeapRef,                        # 2.2.47 -> MethodSignatureBlock
))

MethodsPart = Spec("MethodsPart", _within(this.EncodingLength,  # 2.2.38
    "EncodingLength" / Int32ul,
    "MethodCount" / Int16ul,                            # 2.2.39
    "MethodCountPadding" / Int16ul,
    "MethodDescription" / Array(this.MethodCount, MethodDescription),
    "MethodHeap" / Heap,                                # 2.2.48
))

ClassAndMethodsPart = Struct(                           # 2.2.14
    "ClassPart" / ClassPart,
    "MethodsPart" / MethodsPart,
)

ClassType = Spec("ClassType", Struct(                   # 2.2.11
    "ParentClass" / ClassAndMethodsPart,                # 2.2.12
    "CurrentClass" / ClassAndMethodsPart,               # 2.2.13
))

InstancePropQualifierSet = Spec("InstancePropQualifierSet", Struct(  # 2.2.65
    "InstPropQualSetFlag" / Int8ul,                     # 1: none, 2: one per property
    "QualifierSet" / If(this.InstPropQualSetFlag == 2, Array(this._.property_count, QualifierSet)),
))


def _instance_fields(nd_length, data_length):
    """The InstanceType fields after CurrentClass (2.2.53), shared with
    EncodingUnitInstanceNoClass (2.2.3); the lengths come from the class."""
    return (
        "_start" / Tell,
        "EncodingLength" / Int32ul,                     # itself and all that follows
        "InstanceFlags" / Int8ul,                       # 2.2.54
        "InstanceClassName" / HeapStringRef,            # 2.2.55
        "_nd_offset" / Tell,
        "NdTable" / Spec("NdTable", NdTableAdapter(Bytes(nd_length))),
        "InstanceData" / Spec("InstanceData", Bytes(data_length)),  # 2.2.56
        "property_count" / Computed(this._nd_count),
        "InstanceQualifierSet" / QualifierSet,          # 2.2.57
        "InstancePropQualifierSet" / InstancePropQualifierSet,
        "InstanceHeap" / Heap,                          # 2.2.58
        "_end" / Tell,
        "Trailing" / TrailingOctets(this.EncodingLength - (this._end - this._start)),
    )


_cur = this.CurrentClass
InstanceType = Spec("InstanceType", Struct(             # 2.2.53
    "CurrentClass" / ClassPart,
    "_nd_count" / Computed(_cur.PropertyLookupTable.PropertyCount),
    *_instance_fields(
        (_cur.PropertyLookupTable.PropertyCount + 3) // 4,
        _cur.ClassHeader.NdTableValueTableLength - (_cur.PropertyLookupTable.PropertyCount + 3) // 4),
))

ObjectBlock = Spec("ObjectBlock", Struct(               # 2.2.5
    "ObjectFlags" / Int8ul,                             # 2.2.6
    "Decoration" / If(this.ObjectFlags & ObjectFlags.HAS_DECORATION, Decoration),
    "ClassType" / If(this.ObjectFlags & ObjectFlags.CIM_CLASS, ClassType),          # 2.2.10 Encoding
    "InstanceType" / If((this.ObjectFlags & ObjectFlags.CIM_CLASS) == 0, InstanceType),
))

EncodingUnit = Spec("EncodingUnit", Struct(             # 2.2.1
    "Signature" / Const(ENCODING_UNIT_SIGNATURE, Int32ul),  # 2.2.77
    "ObjectEncodingLength" / Int32ul,                   # 2.2.4
    "ObjectBlock" / Bounded(this.ObjectEncodingLength, ObjectBlock),
))

# 2.2.70 MethodSignatureBlock and the CIM-TYPE-OBJECT EncodedValue (2.2.71):
# a length, then (when non-zero) an ObjectBlock of that length.
MethodSignatureBlock = Spec("MethodSignatureBlock", Struct(
    "EncodingLength" / Int32ul,
    "ObjectBlock" / If(this.EncodingLength > 0, Bounded(this.EncodingLength, ObjectBlock)),
))
EmbeddedObject = Spec("EmbeddedObject", Struct(
    "ObjectEncodingLength" / Int32ul,
    "ObjectBlock" / Bounded(this.ObjectEncodingLength, ObjectBlock),
))

# 2.2.3 EncodingUnitInstanceNoClass: InstanceType without CurrentClass; the
# class comes from a previous full instance (parse with nd_count/nd_length/
# data_length taken from that class).
EncodingUnitInstanceNoClass = Spec("EncodingUnitInstanceNoClass", Struct(
    "ObjectFlags" / Int8ul,
    "Decoration" / If(this.ObjectFlags & ObjectFlags.HAS_DECORATION, Decoration),
    "_nd_count" / Computed(this._params.nd_count),
    *_instance_fields(this._params.nd_length, this._params.data_length),
))

# [MS-WMI] 2.2.19 RefreshedSingleInstance minus its leading size: the parts
# of an instance that change between refreshes.
InstanceParts = Spec("RefreshedSingleInstance", Struct(
    "_nd_count" / Computed(this._params.nd_count),
    "property_count" / Computed(this._nd_count),
    "_nd_offset" / Tell,
    "NdTable" / Spec("NdTable", NdTableAdapter(Bytes(this._params.nd_length))),
    "InstanceData" / Spec("InstanceData", Bytes(this._params.data_length)),
    "InstanceQualifierSet" / QualifierSet,
    "InstancePropQualifierSet" / InstancePropQualifierSet,
    "InstanceHeap" / Heap,
))

# the InstanceType fields after CurrentClass: to measure their EncodingLength, and to
# parse an instance whose ClassPart is known (_instance_of_known_class)
_InstanceBody = Struct("_nd_count" / Computed(this._params.nd_count),
                       *_instance_fields(this._params.nd_length, this._params.data_length))

RawEncodingUnit = EncodingUnit
RawObjectBlock = ObjectBlock
RawEncodingUnitInstanceNoClass = EncodingUnitInstanceNoClass

class _Compiled:
    """A declaration's compiled parser, compiled when first used.

    Compiling the declarations costs about a tenth of a second, which commands that
    never decode an object (the calls table, stats) need not pay at start-up. After the
    first parse the compiled parser's own method answers directly."""

    __slots__ = ("decl", "parse_stream")

    def __init__(self, decl):
        self.decl = decl

    def __getattr__(self, name):
        if name != "parse_stream":
            raise AttributeError(name)
        parse = self.parse_stream = compiled_parser(self.decl).parse_stream
        return parse


_C_ENCODING_UNIT = _Compiled(EncodingUnit)
_C_OBJECT_BLOCK = _Compiled(ObjectBlock)
_C_NOCLASS = _Compiled(EncodingUnitInstanceNoClass)
_C_INSTANCE_PARTS = _Compiled(InstanceParts)
_C_PROPERTY_INFO = _Compiled(PropertyInfo)
_C_QUALIFIER_SET = _Compiled(QualifierSet)
_C_SIGNATURE = _Compiled(MethodSignatureBlock)
_C_EMBEDDED = _Compiled(EmbeddedObject)
_C_INSTANCE_BODY = _Compiled(Spec("InstanceType", _InstanceBody))


def compile_parsers() -> None:
    """Compiles every parser now (a process about to fork workers does it once for all)."""
    for c in (_C_ENCODING_UNIT, _C_OBJECT_BLOCK, _C_NOCLASS, _C_INSTANCE_PARTS, _C_PROPERTY_INFO,
              _C_QUALIFIER_SET, _C_SIGNATURE, _C_EMBEDDED, _C_INSTANCE_BODY):
        c.parse_stream  # noqa: B018 - the attribute's first read compiles


def _window(buf, offset: int, end: int | None, structure: str):
    """(stream, size): a stream over the `size` octets of buf[offset:end] alone
    (_window_bytes)."""
    data = _window_bytes(buf, offset, end, structure)
    return _io.BytesIO(data), len(data)


def _window_bytes(buf, offset: int, end: int | None, structure: str) -> bytes:
    """The octets of buf[offset:end] alone.

    Only that window is copied (nothing when it is the whole of a bytes
    object), so a caller walking many objects of one large buffer (an
    ObjectArray, a WBEM_INSTANCE_BLOB) pays for each object once.  Stream
    positions count from `offset`: the raw layer's positions are relative
    to it, and _run and the model layer add it back to every error offset.
    """
    size = len(buf)
    if end is None or end > size:
        end = size
    if offset < 0 or offset > end:
        raise DecodeError(structure, offset, f"offset outside the {end}-octet buffer")
    if offset or end != size or not isinstance(buf, bytes):
        buf = bytes(memoryview(buf)[offset:end])
    return buf


def _run(compiled, stream, structure: str, base: int, **params):
    """Parse the raw layer from a _window starting at `base` of the caller's buffer."""
    try:
        return compiled.parse_stream(stream, **params)
    except DecodeError as e:
        raise e.rebased(base) from None
    except (ConstructError, struct.error, IndexError, ValueError, UnicodeDecodeError, OverflowError) as e:
        raise DecodeError(structure, base + stream.tell(), _reason(e)) from None


def parse_raw(buf: bytes, offset: int = 0, end: int | None = None, *, unit: bool = True) -> Container:
    """The raw layer alone: an EncodingUnit (unit=True) or bare ObjectBlock as
    construct Containers (HeapRefs as numbers, heaps as bytes; the positions
    kept in _-prefixed fields count from `offset`)."""
    structure = "EncodingUnit" if unit else "ObjectBlock"
    return _run(_C_ENCODING_UNIT if unit else _C_OBJECT_BLOCK, _window(buf, offset, end, structure)[0],
                structure, offset)


# --------------------------------------------------------------------------
# model layer
# --------------------------------------------------------------------------

class _Qualified:
    """What Property, Method and WmiClass share: a qualifier set (2.2.59) in `qualifiers`."""

    __slots__ = ()

    def qualifier(self, name: str, default=None):
        """The value of the qualifier of that name, else `default`."""
        q = named(self.qualifiers, name)
        return default if q is None else q.value


@dataclass
class Qualifier:
    """2.2.60 Qualifier: a name, flavor bits (2.2.62), a CIM type and a value."""

    name: str
    flavor: int
    cimtype: int
    value: Any

    @property
    def flavors(self) -> list[str]:
        return flavor_names(self.flavor)

    @property
    def type_name(self) -> str:
        return cim.type_name(self.cimtype)


@dataclass
class Property(_Qualified):
    """2.2.30 PropertyInfo plus its NdTable bits and ValueTable value.

    cimtype   PropertyType as on the wire (array bit 0x2000 and the Inherited
              bit 0x4000 kept)
    order     DeclarationOrder
    value     the class's default value (None = NULL)
    origin    ClassOfOrigin
    null      NdTable bit 0: the default value is NULL
    default_inherited  NdTable bit 1: the default comes from a parent class
    """

    name: str
    cimtype: int
    order: int = 0
    value: Any = None
    qualifiers: list[Qualifier] = field(default_factory=list)
    origin: int = 0
    null: bool = True
    default_inherited: bool = False
    value_table_offset: int | None = field(default=None, compare=False, repr=False)

    @property
    def base_type(self) -> int:
        return self.cimtype & CIM_TYPE_MASK

    @property
    def is_array(self) -> bool:
        return bool(self.cimtype & CIM_ARRAY_FLAG)

    @property
    def inherited(self) -> bool:
        """PropertyType's Inherited bit (2.2.32): declared in a superclass."""
        return bool(self.cimtype & CIM_INHERITED_FLAG)

    @property
    def is_key(self) -> bool:
        return bool(self.qualifier("key", False))

    @property
    def type_name(self) -> str:
        ct = self.qualifier("CIMTYPE")
        return cim.type_name(self.cimtype, ct if isinstance(ct, str) else None)


@dataclass
class Method(_Qualified):
    """2.2.40 MethodDescription with its qualifiers and signatures resolved.
    in_params / out_params are the __PARAMETERS classes of the
    MethodSignatureBlocks (None when the HeapRef or the block is empty)."""

    name: str
    flags: int = 0
    origin: int = 0
    qualifiers: list[Qualifier] = field(default_factory=list)
    in_params: "WmiClass | None" = None
    out_params: "WmiClass | None" = None



@dataclass
class WmiClass(_Qualified):
    """A CIM class: a ClassAndMethodsPart (2.2.14).

    For an object decoded from a ClassType (2.2.11) this is CurrentClass and
    `parent` is the ParentClass part (itself a WmiClass without parent).
    properties are in PropertyLookupTable order; each keeps its
    DeclarationOrder.  The CurrentClass of an instance has no methods.
    flags is ObjectFlags (2.2.6) without the decoration bit, which follows
    `decoration`; parts (ParentClass, an instance's class) have flags 0.
    """

    name: str | None
    derivation: list[str] = field(default_factory=list)
    qualifiers: list[Qualifier] = field(default_factory=list)
    properties: list[Property] = field(default_factory=list)
    methods: list[Method] = field(default_factory=list)
    decoration: tuple[str, str] | None = None
    parent: "WmiClass | None" = None
    flags: int = ObjectFlags.CIM_CLASS
    _raw: Any = field(default=None, compare=False, repr=False)
    _layout: Any = field(default=None, compare=False, repr=False)
    # JSON of the parts a decoded class shares with every copy of it (see _shared_json):
    # None for classes built or changed by hand, which are rendered afresh each time.
    _json: Any = field(default=None, compare=False, repr=False)

    @property
    def superclass(self) -> str | None:
        return self.derivation[0] if self.derivation else None

    def get_property(self, name: str) -> Property | None:
        return named(self.properties, name)

    def get_method(self, name: str) -> Method | None:
        return named(self.methods, name)

    @property
    def key_properties(self) -> list[Property]:
        return [p for p in self.properties if p.is_key]

    def declared(self) -> list[Property]:
        """Properties in DeclarationOrder."""
        return sorted(self.properties, key=lambda p: p.order)


@dataclass
class WmiInstance:
    """A CIM instance (2.2.53 InstanceType or 2.2.3 EncodingUnitInstanceNoClass).

    class_     the CurrentClass it was encoded with
    values     property name -> effective value (None = NULL; for properties
               in `defaulted` the class's default)
    defaulted  names whose NdTable bit 1 says "use the class default"
    qualifiers the InstanceQualifierSet
    property_qualifiers  InstancePropQualifierSet (None when its flag is 1)

    When building, a name in `defaulted` is encoded as "default" whatever
    `values` says: drop it from `defaulted` to give the property its own value.
    """

    class_: WmiClass
    values: dict[str, Any] = field(default_factory=dict)
    defaulted: set[str] = field(default_factory=set)
    qualifiers: list[Qualifier] = field(default_factory=list)
    property_qualifiers: dict[str, list[Qualifier]] | None = None
    decoration: tuple[str, str] | None = None
    flags: int = ObjectFlags.CIM_INSTANCE
    _raw: Any = field(default=None, compare=False, repr=False)

    @property
    def class_name(self) -> str | None:
        return self.class_.name

    def get(self, name: str, default=None):
        if name in self.values:
            return self.values[name]
        low = name.lower()
        for k, v in self.values.items():
            if k.lower() == low:
                return v
        return default

    def is_null(self, name: str) -> bool:
        return self.get(name) is None

    def is_default(self, name: str) -> bool:
        return name in self.defaulted

    @property
    def path(self) -> str:
        """Relative object path from the key properties:
        Class.K1="v",K2=3 (strings escaped as in WMI object paths); Class=@ for
        singletons; just the class name when there is no key."""
        keys = _class_meta(self.class_)[1]
        if not keys:
            return self.class_.name or ""
        parts = []
        for p in keys:
            v = self.values.get(p.name)
            if isinstance(v, str) and p.base_type != CimType.CHAR16:
                v = '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
            elif isinstance(v, bool):
                v = "TRUE" if v else "FALSE"
            elif v is None:
                v = "NULL"
            parts.append(f"{p.name}={v}")
        return f"{self.class_.name}.{','.join(parts)}"


# --------------------------------------------------------------------------
# model layer: resolving heaps
# --------------------------------------------------------------------------

class _Ctx:
    """Per top-level decode: recursion depth and a work budget so nested
    objects that overlap or repeat cannot make decoding blow up."""

    __slots__ = ("budget",)

    def __init__(self, size: int):
        self.budget = BUDGET_FACTOR * size + 65536

    def spend(self, n: int, structure: str, offset: int):
        self.budget -= n
        if self.budget < 0:
            raise DecodeError(structure, offset, "nested objects exceed the decoding budget")


class HeapView:
    """One Heap (2.2.66): resolves HeapRefs to values, each item once."""

    __slots__ = ("data", "base", "ctx", "depth", "_cache", "_stream")

    def __init__(self, raw_heap, base: int, ctx: _Ctx, depth: int):
        self.data = raw_heap.HeapItem
        self.base = base + raw_heap._offset   # absolute offset of the first HeapItem
        self.ctx = ctx
        self.depth = depth
        self._cache = {}
        self._stream = None

    def _bad(self, structure: str, ref, reason: str):
        raise DecodeError(structure, self.base + (ref if isinstance(ref, int) and 0 <= ref < 1 << 31 else 0), reason)

    def _check(self, ref, structure: str, need: int = 1):
        if ref is None:
            return
        if isinstance(ref, DictionaryRef) or ref < 0 or ref + need > len(self.data):
            self._bad(structure, 0, f"HeapRef 0x{int(ref):x} points outside the {len(self.data)}-octet heap")

    def string(self, ref, structure: str = "HeapStringRef") -> str | None:
        """2.2.68 HeapStringRef -> str (dictionary refs included), None if NULL."""
        if ref is None:
            return None
        if isinstance(ref, DictionaryRef):
            s = ref.string
            if s is None:
                self._bad(structure, 0, f"DictionaryReference {int(ref)} is not in the dictionary")
            return s
        v = self._cache.get(ref)
        if v is None:
            if ref < 0 or ref >= len(self.data):
                self._check(ref, structure)
            try:
                v = read_encoded_string(self.data, ref, len(self.data))[0]
            except (ValueError, UnicodeDecodeError) as e:
                self._bad("Encoded-String", ref, str(e))
            self._cache[ref] = v
        return v

    def string_value(self, raw: int, structure: str) -> str | None:
        """A string-typed EncodedValue: a HeapRef whose high bit may name a
        dictionary string."""
        if raw == HEAPREF_NULL:
            return None
        if raw & DICTIONARY_BIT:
            return self.string(DictionaryRef(raw & ~DICTIONARY_BIT), structure)
        return self.string(raw, structure)

    def stream(self):
        if self._stream is None:
            self._stream = _io.BytesIO(self.data)
        return self._stream

    def parse(self, compiled, ref, structure: str, **params):
        """A structured HeapItem (PropertyInfo, QualifierSet, signature...)."""
        self._check(ref, structure)
        s = self.stream()
        s.seek(ref)
        try:
            return compiled.parse_stream(s, **params)
        except DecodeError as e:
            raise e.rebased(self.base) from None
        except (ConstructError, struct.error, ValueError, IndexError) as e:
            raise DecodeError(structure, self.base + ref, _reason(e)) from None

    def array(self, cimtype: int, ref: int, structure: str):
        """2.2.79 Encoded-Array: ArrayCount then EncodedValues of the base type."""
        if ref == HEAPREF_NULL:
            return None
        key = ("a", cimtype, ref)
        if key in self._cache:
            return self._cache[key]
        self._check(ref, structure, 4)
        data = self.data
        (count,) = _U32.unpack_from(data, ref)
        b = cimtype & CIM_TYPE_MASK
        cs = cim.cell_struct(b)
        start = ref + 4
        if count * cs.size > len(data) - start:
            self._bad(structure, ref, f"ArrayCount {count} does not fit in the heap")
        if b in cim.CELL_STRUCTS:
            raws = [cs.unpack_from(data, start + i * cs.size)[0] for i in range(count)]
            if b == CimType.BOOLEAN or b == CimType.CHAR16:
                out = [cim.cell_to_value(b, r) for r in raws]
            else:
                out = raws
        else:
            refs = struct.unpack_from(f"<{count}I", data, start)
            out = [self.value(b, r, structure) for r in refs]
        self._cache[key] = out
        return out

    def object(self, ref: int, structure: str):
        """CIM-TYPE-OBJECT (2.2.71): ObjectEncodingLength + ObjectBlock."""
        if ref == HEAPREF_NULL:
            return None
        key = ("o", ref)
        if key in self._cache:
            return self._cache[key]
        if self.depth >= MAX_DEPTH:
            self._bad(structure, ref, f"embedded objects nested deeper than {MAX_DEPTH}")
        raw = self.parse(_C_EMBEDDED, ref, "EmbeddedObject")
        self.ctx.spend(raw.ObjectEncodingLength, "EmbeddedObject", self.base + ref)
        obj = _object_from_raw(raw.ObjectBlock, self.base, self.ctx, self.depth + 1, self.data)
        self._cache[key] = obj
        return obj

    def value(self, cimtype: int, raw, structure: str):
        """An EncodedValue (2.2.71) already unpacked from its cell."""
        b = cimtype & CIM_TYPE_MASK
        if cimtype & CIM_ARRAY_FLAG:
            return self.array(b, raw, structure)
        if b in cim.CELL_STRUCTS:
            if b == CimType.BOOLEAN or b == CimType.CHAR16:
                return cim.cell_to_value(b, raw)
            return raw
        if b == CimType.STRING or b == CimType.REFERENCE:
            return self.string_value(raw, structure)
        if b == CimType.DATETIME:
            s = self.string_value(raw, structure)
            return None if s is None else DmtfDateTime(s)
        if b == CimType.OBJECT:
            return self.object(raw, structure)
        self._bad(structure, 0, f"unknown CIM type 0x{cimtype:x}")

    def qualifiers(self, raw_quals, structure: str = "Qualifier") -> list[Qualifier]:
        out = []
        string, value = self.string, self.value
        for q in raw_quals:  # item access: construct's Container attributes are slow
            t = q["QualifierType"]
            out.append(Qualifier(string(q["QualifierName"], "QualifierName") or "", q["QualifierFlavor"], t,
                                 value(t, q["QualifierValue"], structure)))
        return out


_U32 = struct.Struct("<I")


def _check_flags(flags: int, offset: int):
    kind = flags & (ObjectFlags.CIM_CLASS | ObjectFlags.CIM_INSTANCE)
    if kind not in (ObjectFlags.CIM_CLASS, ObjectFlags.CIM_INSTANCE):
        raise DecodeError("ObjectFlags", offset, f"0x{flags:02x} is neither a CIM class nor a CIM instance")


def _decoration(raw) -> tuple[str, str] | None:
    if raw is None:
        return None
    return (raw.DecServerName.Character, raw.DecNamespaceName.Character)


class _Layout:
    """Per class: where each property's cell is, so instances decode with
    precompiled structs and no per-property lookups."""

    __slots__ = ("entries", "nd_count", "nd_length", "data_length", "params")

    def __init__(self, cls: WmiClass, nd_count: int, data_length: int):
        self.nd_count = nd_count
        self.nd_length = nd_table_length(nd_count)
        self.data_length = data_length
        # what the instance declarations read from this._params
        self.params = dict(nd_count=nd_count, nd_length=self.nd_length, data_length=data_length)
        entries = []
        for p in cls.properties:
            t = p.cimtype & ~CIM_INHERITED_FLAG
            entries.append((p.name, t, p.value_table_offset, cim.cell_struct(t), p.order, p))
        self.entries = entries


def _layout(cls: WmiClass) -> _Layout:
    lay = cls._layout
    if lay is None:
        raw = cls._raw
        if raw is not None and "ClassPart" in raw:
            cp = raw.ClassPart
            n = cp.PropertyLookupTable.PropertyCount
            dl = cp.ClassHeader.NdTableValueTableLength - nd_table_length(n)
        else:
            _assign_value_table(cls)
            n = len(cls.properties)
            dl = _value_table_length(cls)
        lay = cls._layout = _Layout(cls, n, dl)
    return lay


def _class_from_part(cp, mp, base: int, ctx: _Ctx, depth: int, parent: WmiClass | None) -> WmiClass:
    """ClassAndMethodsPart (raw) -> WmiClass."""
    heap = HeapView(cp.ClassHeap, base, ctx, depth)
    name = heap.string(cp.ClassHeader.ClassNameRef, "ClassHeader.ClassNameRef")
    derivation = [c.ClassName.Character for c in cp.DerivationList.ClassNameEncoding]
    qualifiers = heap.qualifiers(cp.ClassQualifierSet.Qualifier)
    nd = cp.NdTable
    vt = cp.ValueTable
    parent_values = {p.name: p for p in parent.properties} if parent is not None else {}
    props = []
    hstring, hparse, hvalue, hquals = heap.string, heap.parse, heap.value, heap.qualifiers
    for lk in cp.PropertyLookupTable.PropertyLookup:
        pname = hstring(lk["PropertyNameRef"], "PropertyLookup.PropertyNameRef")
        if pname is None:
            heap._bad("PropertyLookup.PropertyNameRef", 0, "NULL property name")
        iref = lk["PropertyInfoRef"]
        info = hparse(_C_PROPERTY_INFO, iref, "PropertyInfo")
        t = info["PropertyType"]
        order = info["DeclarationOrder"]
        if order >= len(nd):
            raise DecodeError("PropertyInfo.DeclarationOrder", heap.base + iref,
                              f"{order} is beyond the NdTable of {len(nd) // 4} octets")
        bits = nd[order]
        off = info["ValueTableOffset"]
        cs = cim.cell_struct(t)
        if off + cs.size > len(vt):
            raise DecodeError("PropertyInfo.ValueTableOffset", heap.base + iref,
                              f"cell at {off} outside the {len(vt)}-octet ValueTable")
        if bits & 1:
            value = None
        elif bits & 2 and pname in parent_values:
            value = parent_values[pname].value
        else:
            value = hvalue(t, cs.unpack_from(vt, off)[0], "ValueTable")
        props.append(Property(pname, t, order, value, hquals(info["PropertyQualifierSet"]["Qualifier"]),
                              info["ClassOfOrigin"], bool(bits & 1), bool(bits & 2), off))
    methods = _methods_from_part(mp, base, ctx, depth) if mp is not None else []
    return WmiClass(name=name, derivation=derivation, qualifiers=qualifiers, properties=props,
                    methods=methods, parent=parent)


def _methods_from_part(mp, base: int, ctx: _Ctx, depth: int) -> list[Method]:
    heap = HeapView(mp.MethodHeap, base, ctx, depth)
    out = []
    for md in mp.MethodDescription:
        name = heap.string(md.MethodName, "MethodDescription.MethodName") or ""
        quals = []
        if md.MethodQualifiers is not None:
            qs = heap.parse(_C_QUALIFIER_SET, md.MethodQualifiers, "MethodQualifiers")
            quals = heap.qualifiers(qs.Qualifier)
        out.append(Method(name=name, flags=md.MethodFlags, origin=md.MethodOrigin, qualifiers=quals,
                          in_params=_signature(heap, md.InputSignature, "InputSignature"),
                          out_params=_signature(heap, md.OutputSignature, "OutputSignature")))
    return out


def _signature(heap: HeapView, ref, structure: str):
    if ref is None:
        return None
    if heap.depth >= MAX_DEPTH:
        heap._bad(structure, ref, f"method signatures nested deeper than {MAX_DEPTH}")
    raw = heap.parse(_C_SIGNATURE, ref, "MethodSignatureBlock")
    if raw.ObjectBlock is None:
        return None
    heap.ctx.spend(raw.EncodingLength, "MethodSignatureBlock", heap.base + ref)
    return _object_from_raw(raw.ObjectBlock, heap.base, heap.ctx, heap.depth + 1, heap.data)


class _PartCache:
    """Decoded class parts keyed by their octets: every instance of a class carries the
    same ClassPart, and a class fetched again (from another server, in another session)
    the same ClassType, so each is decoded once.

    The key is the part's exact octets and the nesting depth (MAX_DEPTH errors depend on
    it); the value is the decoded WmiClass (with its parent for a ClassType) and the
    budget its decoding spent. Decoding is a function of those octets alone (only error
    offsets depend on where they sit, and a part that raised is never cached), so a hit
    gives what decoding would. Bounded in entries and in octets held; when full, the
    oldest half goes."""

    __slots__ = ("parts", "size", "hits", "misses", "max_entries", "max_bytes")

    def __init__(self, max_entries: int = 2048, max_bytes: int = 8 << 20):
        self.parts: dict = {}
        self.size = 0
        self.hits = self.misses = 0
        self.max_entries, self.max_bytes = max_entries, max_bytes

    def get(self, key):
        v = self.parts.get(key)
        if v is None:
            self.misses += 1
        else:
            self.hits += 1
        return v

    def put(self, key, value) -> None:
        n = len(key[0])
        if n > self.max_bytes // 8:
            return
        parts = self.parts
        if len(parts) >= self.max_entries or self.size + n > self.max_bytes:
            for old in list(parts)[: len(parts) // 2 + 1]:
                self.size -= len(old[0])
                del parts[old]
        parts[key] = value
        self.size += n


_PARTS = _PartCache()


def cache_stats() -> tuple[int, int]:
    """(hits, misses) of the class-part cache in this process."""
    return _PARTS.hits, _PARTS.misses


def _cached_part(buf, start: int, end: int, depth: int, ctx: _Ctx):
    """(key, cached value or None) for the part at buf[start:end]; a hit is taken only
    when the budget its decoding spent is still there (else decoding fails as it would)."""
    if buf is None:
        return None, None
    key = (bytes(buf[start:end]), depth)
    hit = _PARTS.get(key)
    if hit is not None:
        if ctx.budget < hit[-1]:
            return key, None
        ctx.budget -= hit[-1]
    return key, hit


def _object_from_raw(ob, base: int, ctx: _Ctx, depth: int, buf=None):
    """Raw ObjectBlock (offsets relative to `base`) -> WmiClass | WmiInstance.

    buf: the octets the raw layer's positions count in (to find recurring class parts)."""
    flags = ob.ObjectFlags
    deco = _decoration(ob.Decoration)
    if ob.ClassType is not None:
        ct = ob.ClassType
        mp = ct.CurrentClass.MethodsPart
        key, hit = _cached_part(buf, ct.ParentClass.ClassPart._start, mp._start + mp.EncodingLength, depth, ctx)
        if hit is None:
            budget = ctx.budget
            parent = _class_from_part(ct.ParentClass.ClassPart, ct.ParentClass.MethodsPart, base, ctx, depth, None)
            parent.flags = 0
            template = _class_from_part(ct.CurrentClass.ClassPart, mp, base, ctx, depth, parent)
            template._json = {}
            template._raw = Container(ClassType=ct)     # for _known_class_object; copies have their own
            if key is not None:
                _PARTS.put(key, (template, budget - ctx.budget))
        else:
            template = hit[0]
        cls = copy.copy(template)       # the object's own decoration, flags and raw; parts shared
        cls.decoration = deco
        cls.flags = flags & ~ObjectFlags.HAS_DECORATION
        cls._raw = ob
        return cls
    _check_flags(flags, base)
    it = ob.InstanceType
    cp = it.CurrentClass
    key, hit = _cached_part(buf, cp._start, cp._start + cp.ClassHeader.EncodingLength, depth, ctx)
    if hit is None:
        budget = ctx.budget
        cls = _class_from_part(cp, None, base, ctx, depth, None)
        cls.flags = 0
        cls._raw = Container(ClassPart=cp)
        cls._json = {}
        if key is not None:
            _PARTS.put(key, (cls, budget - ctx.budget))
    else:
        cls = hit[0]
    inst = _instance_from_raw(it, cls, base, ctx, depth)
    inst.decoration = deco
    inst.flags = flags & ~ObjectFlags.HAS_DECORATION
    inst._raw = ob
    return inst


def _instance_from_raw(r, cls: WmiClass, base: int, ctx: _Ctx, depth: int) -> WmiInstance:
    """The instance fields (NdTable, InstanceData, qualifier sets, heap)."""
    lay = _layout(cls)
    heap = HeapView(r.InstanceHeap, base, ctx, depth)
    nd = r.NdTable
    data = r.InstanceData
    values = {}
    defaulted = set()
    for name, t, off, cs, order, p in lay.entries:
        if order >= len(nd):
            raise DecodeError("NdTable", base + r._nd_offset, f"no NdTable slot for {name}")
        bits = nd[order]
        if bits & 2:
            defaulted.add(name)
            values[name] = None if bits & 1 else p.value
        elif bits & 1:
            values[name] = None
        else:
            if off is None or off + cs.size > len(data):
                raise DecodeError("InstanceData", base + r._nd_offset + len(nd) // 4,
                                  f"cell of {name} outside the {len(data)}-octet InstanceData")
            values[name] = heap.value(t, cs.unpack_from(data, off)[0], "InstanceData")
    quals = heap.qualifiers(r.InstanceQualifierSet.Qualifier)
    pq = None
    ipq = r.InstancePropQualifierSet
    if ipq.InstPropQualSetFlag == 2:
        pq = {}
        for p, qs in zip(cls.properties, ipq.QualifierSet):
            pq[p.name] = heap.qualifiers(qs.Qualifier)
    elif ipq.InstPropQualSetFlag != 1:
        raise DecodeError("InstancePropQualifierSet", heap.base, f"InstPropQualSetFlag {ipq.InstPropQualSetFlag}")
    return WmiInstance(class_=cls, values=values, defaulted=defaulted, qualifiers=quals,
                       property_qualifiers=pq)


# --------------------------------------------------------------------------
# public decoding API
# --------------------------------------------------------------------------

def parse_encoding_unit(buf: bytes, offset: int = 0) -> WmiClass | WmiInstance:
    """2.2.1 EncodingUnit = Signature ObjectEncodingLength ObjectBlock."""
    end = None
    if len(buf) - offset >= 4:
        (signature,) = _U32.unpack_from(buf, offset)
        if signature != ENCODING_UNIT_SIGNATURE:
            raise DecodeError("EncodingUnit.Signature", offset, f"0x{signature:08x} is not 0x12345678")
        if len(buf) - offset >= 8:   # copy the unit's own octets only
            end = offset + 8 + _U32.unpack_from(buf, offset + 4)[0]
    obj, s, size = _known_or_window(buf, offset, end, "EncodingUnit", True)
    if obj is not None:
        return obj
    raw = _run(_C_ENCODING_UNIT, s, "EncodingUnit", offset)
    obj = _model("ObjectBlock", offset + 8, _decode_top, raw.ObjectBlock, offset, offset + 8, size, s.getbuffer())
    obj._raw_unit = raw
    return obj


def parse_object_block(buf: bytes, offset: int = 0, end: int | None = None) -> WmiClass | WmiInstance:
    """2.2.4/2.2.5 ObjectBlock (e.g. an EncodingUnitObjectBlock, 2.2.2)."""
    obj, s, size = _known_or_window(buf, offset, end, "ObjectBlock", False)
    if obj is not None:
        return obj
    raw = _run(_C_OBJECT_BLOCK, s, "ObjectBlock", offset)
    if end is not None and s.tell() != size:
        raise DecodeError("ObjectBlock", offset + s.tell(), f"{size - s.tell()} octets left over")
    return _model("ObjectBlock", offset, _decode_top, raw, offset, offset, size, s.getbuffer())


def _known_or_window(buf, offset: int, end: int | None, structure: str, unit: bool):
    """(the object, None, 0) when its class part is known (_instance_of_known_class), else
    (None, a stream over the window, its size) for the whole parse."""
    data = _window_bytes(buf, offset, end, structure)
    if end is not None:
        obj = _instance_of_known_class(data, 8 if unit else 0, offset, unit)
        if obj is not None:
            return obj, None, 0
    return None, _io.BytesIO(data), len(data)


def _instance_of_known_class(data: bytes, at: int, base: int, unit: bool):
    """The object whose ObjectBlock starts at data[at] (in an EncodingUnit when `unit`),
    when its class part is one already decoded (_PARTS); else None.

    Most objects on the wire are instances of a class seen before, or a class fetched
    again (from another server: another decoration), and the class part is most of
    their octets. This finds the part by its octets first (the lengths that lead the
    ClassPart and MethodsPart blocks give its extent) and parses only what follows it,
    with the instance fields' own declaration (_InstanceBody, the fields InstanceType
    declares after CurrentClass); the class and the part's raw layer come from the
    cache. The result is what the whole parse gives, raw layer included
    (tests/test_wmio_real.py checks that on every real object). Whatever is unusual (a
    budget short of the part's cost, any error) returns None, and the whole parse runs
    and says what it says."""
    try:
        return _known_class_object(data, at, base, unit)
    except Exception:  # noqa: BLE001 - the whole parse reports it
        return None


def _known_class_object(data: bytes, at: int, base: int, unit: bool):
    size = len(data)
    if unit and (size < 8 or _U32.unpack_from(data, 4)[0] != size - 8):
        return None
    flags = data[at]
    kind = flags & (ObjectFlags.CIM_CLASS | ObjectFlags.CIM_INSTANCE)
    if kind == ObjectFlags.CIM_CLASS:
        return _known_class_type(data, at, unit, flags)
    if kind != ObjectFlags.CIM_INSTANCE:
        return None
    deco, p = _decoration_at(data, at + 1, flags)
    part_end, hit = _cached_blocks(data, p, 1)       # the ClassPart
    if hit is None:
        return None
    cls, spent = hit
    ctx = _Ctx(size)
    if ctx.budget < spent:
        return None
    ctx.budget -= spent
    lay = _layout(cls)
    s = _io.BytesIO(data)
    s.seek(part_end)
    body = _C_INSTANCE_BODY.parse_stream(s, **lay.params)
    pos = s.tell()
    if pos > size or (not unit and pos != size):
        return None
    it = Container(CurrentClass=cls._raw.ClassPart)
    it.update(body)
    inst = _instance_from_raw(it, cls, base, ctx, 0)
    return _known(inst, Container(ObjectFlags=flags, Decoration=deco, ClassType=None, InstanceType=it),
                  data, pos, unit)


def _known(obj, ob, data: bytes, end: int, unit: bool):
    """What the whole parse sets on the object it decodes from ObjectBlock `ob` (ending at
    data[end], in an EncodingUnit when `unit`); a class-part cache hit counted."""
    obj.decoration = _decoration(ob.Decoration)
    obj.flags = ob.ObjectFlags & ~ObjectFlags.HAS_DECORATION
    obj._raw = ob
    if unit:
        ob["Trailing"] = data[end:]
        obj._raw_unit = Container(Signature=ENCODING_UNIT_SIGNATURE, ObjectEncodingLength=len(data) - 8,
                                  ObjectBlock=ob)
    _PARTS.hits += 1
    return obj


def _cached_blocks(data: bytes, start: int, count: int):
    """(end, the class-part cache's entry or None) for the `count` blocks from data[start]
    that each lead with their own length (ClassPart, MethodsPart), at nesting depth 0."""
    end = start
    for _ in range(count):
        length = _U32.unpack_from(data, end)[0]
        end += length
        if length < 4 or end > len(data):
            return end, None
    return end, _PARTS.parts.get((data[start:end], 0))


def _decoration_at(data: bytes, p: int, flags: int):
    """(raw Decoration or None, offset after it), as the Decoration declaration reads it."""
    if not flags & ObjectFlags.HAS_DECORATION:
        return None, p
    size = len(data)
    server, server_flag, p = read_encoded_string(data, p, size)
    namespace, namespace_flag, p = read_encoded_string(data, p, size)
    return Container(DecServerName=Container(Encoded_String_Flag=server_flag, Character=server),
                     DecNamespaceName=Container(Encoded_String_Flag=namespace_flag, Character=namespace)), p


def _known_class_type(data: bytes, at: int, unit: bool, flags: int):
    """_instance_of_known_class for a class: its ClassType (ParentClass and CurrentClass,
    each a ClassPart and a MethodsPart) found whole in the cache."""
    size = len(data)
    deco, start = _decoration_at(data, at + 1, flags)
    end, hit = _cached_blocks(data, start, 4)
    if hit is None:
        return None
    template, spent = hit
    if _Ctx(size).budget < spent or (not unit and end != size):
        return None
    return _known(copy.copy(template), Container(ObjectFlags=flags, Decoration=deco,
                                                 ClassType=template._raw.ClassType, InstanceType=None),
                  data, end, unit)


def _decode_top(ob, base: int, at: int, size: int, buf=None):
    """A top-level raw ObjectBlock starting at `at`, its positions counted
    from `base` (where its _window starts, buf its octets) -> WmiClass | WmiInstance."""
    _check_flags(ob.ObjectFlags, at)
    try:
        return _object_from_raw(ob, base, _Ctx(size), 0, buf)
    finally:
        if buf is not None:
            buf.release()


def _model(structure: str, offset: int, decode, *args):
    """The model layer's decode(*args): a located DecodeError raised inside
    passes unchanged; any other slip becomes one naming `structure`."""
    try:
        return decode(*args)
    except DecodeError:
        raise
    except (struct.error, IndexError, ValueError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise DecodeError(structure, offset, _reason(e)) from None


def _params(cls: WmiClass) -> dict:
    return _layout(cls).params


def parse_instance_noclass(buf: bytes, current_class: WmiClass, offset: int = 0,
                           end: int | None = None) -> WmiInstance:
    """2.2.3 EncodingUnitInstanceNoClass, decoded against the CurrentClass of a
    previous full instance (WmiInstance.class_)."""
    s, size = _window(buf, offset, end, "EncodingUnitInstanceNoClass")
    raw = _run(_C_NOCLASS, s, "EncodingUnitInstanceNoClass", offset, **_params(current_class))
    if raw.ObjectFlags & ObjectFlags.CIM_CLASS:
        raise DecodeError("EncodingUnitInstanceNoClass.ObjectFlags", offset, "CIM class flag set")
    inst = _model("EncodingUnitInstanceNoClass", offset, _instance_from_raw,
                  raw, current_class, offset, _Ctx(size), 0)
    inst.decoration = _decoration(raw.Decoration)
    inst.flags = raw.ObjectFlags & ~ObjectFlags.HAS_DECORATION
    inst._raw = raw
    return inst


def parse_instance_parts(buf: bytes, current_class: WmiClass, offset: int, end: int) -> WmiInstance:
    """NdTable InstanceData InstanceQualifierSet InstanceHeap, as [MS-WMI]
    2.2.19 RefreshedSingleInstance carries them after its 4-octet InstanceHeap
    size (the caller reads that size; `offset` points at the NdTable).

    Assumptions: InstanceQualifierSet is the full 2.2.57 block (QualifierSet
    then InstancePropQualifierSet), and InstanceHeap is a complete 2.2.66 Heap
    (its own HeapLength with the top bit set, then the items), ending at `end`.
    """
    s, size = _window(buf, offset, end, "RefreshedSingleInstance")
    raw = _run(_C_INSTANCE_PARTS, s, "RefreshedSingleInstance", offset, **_params(current_class))
    if s.tell() != size:
        raise DecodeError("RefreshedSingleInstance", offset + s.tell(), f"{size - s.tell()} octets left over")
    inst = _model("RefreshedSingleInstance", offset, _instance_from_raw,
                  raw, current_class, offset, _Ctx(size), 0)
    inst._raw = raw
    return inst


# --------------------------------------------------------------------------
# building: model -> raw -> bytes
# --------------------------------------------------------------------------

def _value_table_length(cls: WmiClass) -> int:
    return max((p.value_table_offset + cim.cell_size(p.cimtype) for p in cls.properties), default=0)


def _assign_value_table(cls: WmiClass):
    """Canonical ValueTable layout: cells in DeclarationOrder, packed."""
    off = 0
    for p in sorted(cls.properties, key=lambda p: p.order):
        p.value_table_offset = off
        off += cim.cell_size(p.cimtype)


class _HeapBuilder:
    """Canonical heap: items appended in the order the encoder meets them,
    strings not shared (as Windows does), qualifier names that are in the
    2.2.80 dictionary written as DictionaryRefs."""

    def __init__(self):
        self.data = bytearray()

    def reserve(self, n: int) -> int:
        off = len(self.data)
        self.data += bytes(n)
        return off

    def patch(self, off: int, b: bytes):
        self.data[off:off + len(b)] = b

    def add(self, b: bytes) -> int:
        off = len(self.data)
        self.data += b
        return off

    def string(self, s: str | None, name: bool = False):
        if s is None:
            return None
        if name and s in DICTIONARY_INDEX:
            return DictionaryRef(DICTIONARY_INDEX[s])
        return self.add(encode_string(s))

    def value_cell(self, cimtype: int, value) -> int | float:
        """EncodedValue for a ValueTable/qualifier cell; heap items appended."""
        b = cimtype & CIM_TYPE_MASK
        if value is None:
            return cim.NO_VALUE_CELLS.get(b, HEAPREF_NULL) if not cimtype & CIM_ARRAY_FLAG else HEAPREF_NULL
        if cimtype & CIM_ARRAY_FLAG:
            return self.array(b, value)
        if b in cim.CELL_STRUCTS:
            return cim.value_to_cell(b, value)
        if b in cim.STRING_TYPES:
            return self.add(encode_string(value))
        if b == CimType.OBJECT:
            blk = build_object_block(value)
            return self.add(_U32.pack(len(blk)) + blk)
        raise EncodeError(f"unknown CIM type 0x{cimtype:x}")

    def array(self, b: int, values) -> int:
        cs = cim.cell_struct(b)
        off = self.reserve(4 + cs.size * len(values))
        cells = [self.value_cell(b, v) for v in values]
        self.patch(off, _U32.pack(len(values)) + b"".join(cs.pack(c) for c in cells))
        return off


def _raw_qualifiers(hb: _HeapBuilder, quals: list[Qualifier]) -> ListContainer:
    out = ListContainer()
    for q in quals:
        try:
            cim.check_value(q.cimtype, q.value)
        except ValueError as e:
            raise EncodeError(f"qualifier {q.name}: {e}") from None
        out.append(Container(QualifierName=hb.string(q.name, name=True), QualifierFlavor=q.flavor,
                             QualifierType=q.cimtype, QualifierValue=0))
    # values after the names, in order (Windows puts each value right after its name;
    # doing names first keeps the code simple and is equally valid)
    for rq, q in zip(out, quals):
        rq.QualifierValue = hb.value_cell(q.cimtype, q.value)
    return out


def _qualifier_set(quals_raw) -> Container:
    return Container(EncodingLength=4 + sum(9 + _qual_cell_size(q) for q in quals_raw), Qualifier=quals_raw)


def _qual_cell_size(q) -> int:
    return cim.cell_size(q.QualifierType & ~CIM_INHERITED_FLAG)


def _raw_class_part(cls: WmiClass) -> Container:
    """WmiClass -> raw ClassPart with a canonical ClassHeap."""
    hb = _HeapBuilder()
    name_ref = hb.string(cls.name)
    cq = _raw_qualifiers(hb, cls.qualifiers)
    props = list(cls.properties)
    orders = sorted(p.order for p in props)
    if orders != list(range(len(props))):
        raise EncodeError(f"class {cls.name}: DeclarationOrder must be 0..{len(props) - 1}, got {orders}")
    _assign_value_table(cls)
    vt = bytearray(_value_table_length(cls))
    nd = [0] * (4 * nd_table_length(len(props)))
    lookups = ListContainer()
    for p in props:
        try:
            cim.check_value(p.cimtype & ~CIM_INHERITED_FLAG, p.value)
        except ValueError as e:
            raise EncodeError(f"property {p.name}: {e}") from None
        pname = hb.string(p.name)
        pq = _raw_qualifiers(hb, p.qualifiers)
        qs = _qualifier_set(pq)
        info = Container(PropertyType=p.cimtype, DeclarationOrder=p.order,
                         ValueTableOffset=p.value_table_offset, ClassOfOrigin=p.origin,
                         PropertyQualifierSet=qs)
        info_bytes = PropertyInfo.build(info)
        info_off = hb.add(info_bytes)
        t = p.cimtype & ~CIM_INHERITED_FLAG
        null = p.null or p.value is None
        cell = hb.value_cell(t, None if null else p.value)
        vt[p.value_table_offset:p.value_table_offset + cim.cell_size(t)] = cim.cell_struct(t).pack(cell)
        nd[p.order] = (1 if null else 0) | (2 if p.default_inherited else 0)
        lookups.append(Container(PropertyNameRef=pname, PropertyInfoRef=info_off))
    heap = bytes(hb.data)
    nd_len = nd_table_length(len(props))
    derivation = ListContainer(
        Container(ClassName=Container(Encoded_String_Flag=_flag(n), Character=n),
                  EncodingLength=len(encode_string(n)))
        for n in cls.derivation)
    dl_len = 4 + sum(len(encode_string(n)) + 4 for n in cls.derivation)
    cq_set = _qualifier_set(cq)
    part = Container(
        ClassHeader=Container(EncodingLength=0, ReservedOctet=0, ClassNameRef=name_ref,
                              NdTableValueTableLength=nd_len + len(vt)),
        DerivationList=Container(EncodingLength=dl_len, ClassNameEncoding=derivation),
        ClassQualifierSet=cq_set,
        PropertyLookupTable=Container(PropertyCount=len(props), PropertyLookup=lookups),
        NdTable=nd, ValueTable=bytes(vt),
        ClassHeap=Container(HeapLength=len(heap), HeapItem=heap),
        Trailing=b"",
    )
    part.ClassHeader.EncodingLength = len(ClassPart.build(part))
    return part


def _raw_methods_part(methods: list[Method]) -> Container:
    hb = _HeapBuilder()
    descs = ListContainer()
    for m in methods:
        name = hb.string(m.name)
        qs = _qualifier_set(_raw_qualifiers(hb, m.qualifiers))
        q_off = hb.add(QualifierSet.build(qs))
        sigs = []
        for sig in (m.in_params, m.out_params):
            if sig is None:
                sigs.append(None)
            else:
                blk = build_object_block(sig)
                sigs.append(hb.add(_U32.pack(len(blk)) + blk))
        descs.append(Container(MethodName=name, MethodFlags=m.flags, MethodPadding=b"\0\0\0",
                               MethodOrigin=m.origin, MethodQualifiers=q_off,
                               InputSignature=sigs[0], OutputSignature=sigs[1]))
    heap = bytes(hb.data)
    return Container(EncodingLength=8 + 24 * len(descs) + 4 + len(heap), MethodCount=len(descs),
                     MethodCountPadding=0, MethodDescription=descs,
                     MethodHeap=Container(HeapLength=len(heap), HeapItem=heap), Trailing=b"")


def _empty_part() -> WmiClass:
    return WmiClass(name=None, flags=0)


def _raw_class_and_methods(cls: WmiClass) -> Container:
    return Container(ClassPart=_class_part_for(cls), MethodsPart=_raw_methods_part(cls.methods))


def _class_part_for(cls: WmiClass) -> Container:
    """The raw ClassPart of cls: its own raw when unchanged, else canonical."""
    raw = cls._raw
    if raw is not None and _unchanged_class(cls):
        if "ClassPart" in raw:
            return raw.ClassPart
        return raw.ClassType.CurrentClass.ClassPart
    return _raw_class_part(cls)


def _unchanged_class(cls: WmiClass) -> bool:
    raw = cls._raw
    try:
        if "ClassPart" in raw:
            again = _class_from_part(raw.ClassPart, None, 0, _Ctx(1 << 30), 0, None)
            again.flags = cls.flags
            again.parent = cls.parent
            again.decoration = cls.decoration
            again.methods = cls.methods
        else:
            again = _object_from_raw(raw, 0, _Ctx(1 << 30), 0)
    except DecodeError:
        return False
    return again == cls


def _unchanged_instance(inst: WmiInstance) -> bool:
    raw = inst._raw
    try:
        if "InstanceType" in raw:
            again = _object_from_raw(raw, 0, _Ctx(1 << 30), 0)
        else:
            again = _instance_from_raw(raw, inst.class_, 0, _Ctx(1 << 30), 0)
            again.decoration = _decoration(raw.get("Decoration"))
            again.flags = raw.get("ObjectFlags", inst.flags) & ~ObjectFlags.HAS_DECORATION
    except DecodeError:
        return False
    return again == inst


def _raw_instance_fields(inst: WmiInstance) -> Container:
    """Model -> the instance fields shared by InstanceType and NoClass."""
    cls = inst.class_
    lay = _layout(cls)
    hb = _HeapBuilder()
    cname = hb.string(cls.name)
    data = bytearray(lay.data_length)
    nd = [0] * (4 * lay.nd_length)
    for name, t, off, cs, order, p in lay.entries:
        # cells without a value of their own stay zero, as Windows leaves them
        # in instances (NoValue, 2.2.74, is only required in classes)
        if name in inst.defaulted:
            nd[order] = 2 | (1 if p.null or p.value is None else 0)
            continue
        v = inst.values.get(name)
        try:
            cim.check_value(t, v)
        except ValueError as e:
            raise EncodeError(f"{cls.name}.{name}: {e}") from None
        nd[order] = 1 if v is None else 0
        if v is not None:
            data[off:off + cs.size] = cs.pack(hb.value_cell(t, v))
    iq = _qualifier_set(_raw_qualifiers(hb, inst.qualifiers))
    if inst.property_qualifiers is None:
        ipq = Container(InstPropQualSetFlag=1, QualifierSet=None)
    else:
        ipq = Container(InstPropQualSetFlag=2, QualifierSet=ListContainer(
            _qualifier_set(_raw_qualifiers(hb, inst.property_qualifiers.get(p.name, [])))
            for p in cls.properties))
    heap = bytes(hb.data)
    fields = Container(
        EncodingLength=0, InstanceFlags=0, InstanceClassName=cname, NdTable=nd,
        InstanceData=bytes(data), InstanceQualifierSet=iq, InstancePropQualifierSet=ipq,
        InstanceHeap=Container(HeapLength=len(heap), HeapItem=heap),
        property_count=len(cls.properties), Trailing=b"",
    )
    fields.EncodingLength = len(_InstanceBody.build(fields, **_params(cls)))
    return fields




def _raw_decoration(deco) -> Container | None:
    if deco is None:
        return None
    return Container(DecServerName=Container(Encoded_String_Flag=_flag(deco[0]), Character=deco[0]),
                     DecNamespaceName=Container(Encoded_String_Flag=_flag(deco[1]), Character=deco[1]))


def _flags_for(obj) -> int:
    f = obj.flags or (ObjectFlags.CIM_CLASS if isinstance(obj, WmiClass) else ObjectFlags.CIM_INSTANCE)
    f &= ~ObjectFlags.HAS_DECORATION
    if obj.decoration is not None:
        f |= ObjectFlags.HAS_DECORATION
    return f


def _raw_object_block(obj, canonical: bool) -> Container:
    """The ObjectBlock obj was decoded from while its model is unchanged, else
    one built from the model (an instance keeps its class's raw ClassPart
    while that class is unchanged)."""
    raw = obj._raw
    if not canonical and raw is not None and "ObjectFlags" in raw:
        if isinstance(obj, WmiClass):
            if _unchanged_class(obj):
                return raw
            canonical = True    # _class_part_for would decode it again to find the same change
        elif "InstanceType" in raw and _unchanged_instance(obj):   # not a NoClass raw: it lacks the class
            return raw
    if isinstance(obj, WmiClass):
        parent = obj.parent if obj.parent is not None else _empty_part()
        ct = Container(ParentClass=_raw_class_and_methods(parent), CurrentClass=Container(
            ClassPart=_raw_class_part(obj) if canonical else _class_part_for(obj),
            MethodsPart=_raw_methods_part(obj.methods)))
        return Container(ObjectFlags=_flags_for(obj), Decoration=_raw_decoration(obj.decoration),
                         ClassType=ct, InstanceType=None, Trailing=b"")
    if isinstance(obj, WmiInstance):
        cp = _raw_class_part(obj.class_) if canonical else _class_part_for(obj.class_)
        it = Container(CurrentClass=cp, **_raw_instance_fields(obj))
        return Container(ObjectFlags=_flags_for(obj), Decoration=_raw_decoration(obj.decoration),
                         ClassType=None, InstanceType=it, Trailing=b"")
    raise EncodeError(f"cannot encode {type(obj).__name__} as an ObjectBlock")


def build_object_block(obj, canonical: bool = False) -> bytes:
    """WmiClass | WmiInstance -> ObjectBlock (2.2.5) octets."""
    return _build_block(_raw_object_block(obj, canonical))


def _build_block(raw) -> bytes:
    it = raw.get("InstanceType")
    try:
        return ObjectBlock.build(raw, property_count=it.CurrentClass.PropertyLookupTable.PropertyCount
                                 if it is not None else 0)
    except ConstructError as e:
        raise EncodeError(_reason(e)) from None


def build_encoding_unit(obj, canonical: bool = False) -> bytes:
    """WmiClass | WmiInstance -> EncodingUnit (2.2.1) octets."""
    unit = getattr(obj, "_raw_unit", None)
    raw = _raw_object_block(obj, canonical)
    blk = _build_block(raw)
    trailing = b""
    # the octets after the ObjectBlock belong to the unchanged original only
    if not canonical and unit is not None and obj._raw is not None \
            and (raw is unit.ObjectBlock or blk == _build_block(unit.ObjectBlock)):
        trailing = unit.ObjectBlock.get("Trailing", b"") or b""
    return _U32.pack(ENCODING_UNIT_SIGNATURE) + _U32.pack(len(blk) + len(trailing)) + blk + trailing


def build_instance_noclass(inst: WmiInstance, canonical: bool = False) -> bytes:
    """WmiInstance -> EncodingUnitInstanceNoClass (2.2.3) octets."""
    raw = inst._raw
    if not canonical and raw is not None and "InstanceType" not in raw and "ObjectFlags" in raw \
            and _unchanged_instance(inst):
        fields = raw
        flags, deco = raw.ObjectFlags, raw.Decoration
    else:
        fields = _raw_instance_fields(inst)
        flags = _flags_for(inst) & ~ObjectFlags.CIM_CLASS
        deco = _raw_decoration(inst.decoration)
    c = Container(ObjectFlags=flags, Decoration=deco, **{k: v for k, v in fields.items()
                                                         if k not in ("ObjectFlags", "Decoration")})
    return EncodingUnitInstanceNoClass.build(c, **_params(inst.class_))


def build_instance_parts(inst: WmiInstance) -> bytes:
    """NdTable InstanceData InstanceQualifierSet InstanceHeap (see parse_instance_parts)."""
    return build_instance_parts_sized(inst)[0]


def build_instance_parts_sized(inst: WmiInstance) -> tuple[bytes, int]:
    """build_instance_parts and the HeapLength of the InstanceHeap that ends
    them: the InstanceHeap size [MS-WMI] 2.2.19 puts in front."""
    f = _raw_instance_fields(inst)
    return InstanceParts.build(f, **_params(inst.class_)), f.InstanceHeap.HeapLength


# --------------------------------------------------------------------------
# rendering and construction helpers
# --------------------------------------------------------------------------

def _json_value(v):
    t = type(v)
    if t is str or t is int or v is None:
        return v
    if isinstance(v, (WmiClass, WmiInstance)):
        return to_json(v)
    if isinstance(v, list):
        return [_json_value(x) for x in v]
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return repr(v)
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    return v if isinstance(v, (str, int, float, bool)) else str(v)


json_value = _json_value    # a property value as to_json shows it


def _json_quals(quals: list[Qualifier]) -> list[dict]:
    return [{"name": q.name, "type": q.type_name, "flavor": q.flavor, "flavors": q.flavors,
             "value": _json_value(q.value)} for q in quals]


def _shared_json(cls: WmiClass, what: str, sources: tuple, render):
    """render(), kept on a decoded class for the parts its copies share.

    A decoded class is a shallow copy of the template its class part decoded to
    (_PartCache), so its qualifier, property and method lists are the template's, and
    so is the `_json` dict this keeps their rendering in: every object of a recurring
    class renders those lists once. The lists are read-only once decoded (they are
    shared); an entry is used only while the object still holds the very lists it was
    made from, so one whose list was replaced renders afresh."""
    cache = cls._json
    if cache is None:
        return render()
    hit = cache.get(what)
    if hit is not None and all(a is b for a, b in zip(hit[0], sources)):
        return hit[1]
    out = render()
    cache[what] = (sources, out)
    return out


def _class_meta(cls: WmiClass) -> tuple:
    """(property names and type names in lookup order, key properties by name): what
    every instance of the class shows of it."""
    props = cls.properties
    return _shared_json(cls, "meta", (props,), lambda: (
        [(p.name, p.type_name) for p in props],
        sorted((p for p in props if p.is_key), key=lambda p: p.name.lower())))


def _class_body(obj: WmiClass) -> tuple:
    def render():
        return (_json_quals(obj.qualifiers), [{
            "name": p.name, "type": p.type_name, "cimtype": p.cimtype, "order": p.order,
            "origin": p.origin, "inherited": p.inherited, "key": p.is_key,
            "null": p.null, "default_inherited": p.default_inherited,
            "value": _json_value(p.value), "qualifiers": _json_quals(p.qualifiers)}
            for p in obj.properties], [{
                "name": m.name, "flags": m.flags, "origin": m.origin,
                "qualifiers": _json_quals(m.qualifiers),
                "in": to_json(m.in_params) if m.in_params is not None else None,
                "out": to_json(m.out_params) if m.out_params is not None else None}
            for m in obj.methods])
    return _shared_json(obj, "class", (obj.qualifiers, obj.properties, obj.methods), render)


def to_json(obj) -> dict:
    """A JSON-able dict (datetimes as their DMTF strings, never bytes). The parts a
    decoded class shares with other objects are shared in their JSON too: read it,
    do not change it."""
    if isinstance(obj, WmiInstance):
        values = obj.values
        defaulted = obj.defaulted
        out = {"kind": "instance", "class": obj.class_.name, "path": obj.path,
               "decoration": list(obj.decoration) if obj.decoration else None,
               "properties": {}, "qualifiers": _json_quals(obj.qualifiers)}
        props = out["properties"]
        for name, type_name in _class_meta(obj.class_)[0]:
            v = values.get(name)
            props[name] = {"type": type_name, "value": _json_value(v), "null": v is None,
                           "default": name in defaulted}
        if obj.property_qualifiers:
            out["property_qualifiers"] = {k: _json_quals(v) for k, v in obj.property_qualifiers.items()}
        return out
    if isinstance(obj, WmiClass):
        quals, props, methods = _class_body(obj)
        return {
            "kind": "class", "name": obj.name, "superclass": obj.superclass,
            "derivation": list(obj.derivation),
            "decoration": list(obj.decoration) if obj.decoration else None,
            "qualifiers": quals, "properties": props, "methods": methods,
        }
    raise TypeError(f"not a WMI object: {type(obj).__name__}")


def to_mof(obj) -> str:
    """MOF text of a class (qualifiers, properties, methods) or an instance."""
    from .mof import render
    return render(obj)


def _as_qualifiers(qs) -> list[Qualifier]:
    if qs is None:
        return []
    if isinstance(qs, dict):
        return [_qual(k, v) for k, v in qs.items()]
    return [q if isinstance(q, Qualifier) else _qual(*q) for q in qs]


def _qual(name: str, value, flavor: int = 0, cimtype: int | None = None) -> Qualifier:
    if cimtype is None:
        cimtype = _guess_type(value)
    return Qualifier(name, flavor, cimtype, value)


def _guess_type(value) -> int:
    if isinstance(value, bool):
        return CimType.BOOLEAN
    if isinstance(value, int):
        return CimType.SINT32
    if isinstance(value, float):
        return CimType.REAL64
    if isinstance(value, (list, tuple)):
        return (_guess_type(value[0]) if value else CimType.STRING) | CIM_ARRAY_FLAG
    return CimType.STRING


def new_class(name: str, superclass: "WmiClass | str | None" = None, properties=(), methods=(),
              qualifiers=None, decoration: tuple[str, str] | None = None) -> WmiClass:
    """Convenience constructor.

    properties: Property objects or (name, type) / (name, type, default) /
      (name, type, default, qualifiers) tuples, type a CimType or a MOF name
      ("uint32", "string[]", "ref:Win32_Foo", "object:Win32_Bar").  A CIMTYPE
      qualifier is added the way WMI adds it.
    methods: Method objects or (name, in_props, out_props[, qualifiers]).
    A WmiClass superclass contributes its properties (Inherited bit set) and
    becomes the ParentClass part.
    """
    derivation: list[str] = []
    parent = None
    props: list[Property] = []
    if isinstance(superclass, WmiClass):
        derivation = [superclass.name] + list(superclass.derivation)
        parent = WmiClass(name=superclass.name, derivation=list(superclass.derivation),
                          qualifiers=list(superclass.qualifiers), properties=list(superclass.properties),
                          methods=list(superclass.methods), flags=0)
        for p in superclass.properties:
            props.append(Property(p.name, p.cimtype | CIM_INHERITED_FLAG, p.order, p.value,
                                  [Qualifier(q.name, q.flavor | QualifierFlavor.ORIGIN_PROPAGATED, q.cimtype, q.value)
                                   for q in p.qualifiers if q.flavor & QualifierFlavor.PROPAGATE_TO_DERIVED_CLASS]
                                  or _cimtype_quals(p), p.origin, p.null, True))
    elif isinstance(superclass, str):
        derivation = [superclass]
        parent = WmiClass(name=superclass, flags=0)
    else:
        parent = _empty_part()
    depth = len(derivation)
    for spec in properties:
        if isinstance(spec, Property):
            p = spec
            p.order = len(props) if p.order is None else p.order
        else:
            pname, ptype, *rest = spec
            t = cim.parse_type_name(ptype) if isinstance(ptype, str) else int(ptype)
            default = rest[0] if rest else None
            quals = _as_qualifiers(rest[1] if len(rest) > 1 else None)
            if not any(q.name.upper() == "CIMTYPE" for q in quals):
                tn = ptype if isinstance(ptype, str) else cim.type_name(t)
                quals.insert(0, Qualifier("CIMTYPE", 0, CimType.STRING, tn.removesuffix("[]")
                                          if tn.startswith(("ref:", "object:")) else tn))
            p = Property(pname, t, len(props), default, quals, depth, default is None, False)
        props.append(p)
    for i, p in enumerate(sorted(props, key=lambda p: p.order)):
        p.order = i
    props.sort(key=lambda p: p.name.lower())
    meths = []
    for m in methods:
        if isinstance(m, Method):
            meths.append(m)
            continue
        mname, ins, outs, *rest = m
        meths.append(Method(mname, 0, depth, _as_qualifiers(rest[0] if rest else None),
                            new_class("__PARAMETERS", properties=ins) if ins is not None else None,
                            new_class("__PARAMETERS", properties=outs) if outs is not None else None))
    return WmiClass(name=name, derivation=derivation, qualifiers=_as_qualifiers(qualifiers),
                    properties=props, methods=meths, decoration=decoration, parent=parent)


def _cimtype_quals(p: Property) -> list[Qualifier]:
    return [Qualifier("CIMTYPE", QualifierFlavor.ORIGIN_PROPAGATED, CimType.STRING, p.type_name)]


def new_instance(cls: WmiClass, values: dict[str, Any] | None = None, qualifiers=None,
                 decoration: tuple[str, str] | None = None) -> WmiInstance:
    """An instance of cls: properties not in values take the class default
    (NdTable "default" bit); a value of None is NULL."""
    values = dict(values or {})
    out = {}
    defaulted = set()
    names = {p.name.lower(): p for p in cls.properties}
    for k in values:
        if k.lower() not in names:
            raise KeyError(f"{cls.name} has no property {k}")
    given = {k.lower(): v for k, v in values.items()}
    for p in cls.properties:
        if p.name.lower() in given:
            out[p.name] = given[p.name.lower()]
        else:
            out[p.name] = p.value
            defaulted.add(p.name)
    icls = WmiClass(name=cls.name, derivation=list(cls.derivation), qualifiers=list(cls.qualifiers),
                    properties=list(cls.properties), methods=[], flags=0)
    return WmiInstance(class_=icls, values=out, defaulted=defaulted, qualifiers=_as_qualifiers(qualifiers),
                       decoration=decoration)
