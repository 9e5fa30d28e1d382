"""MS-WMI 2.2.14 ObjectArray: the WBEMDATA packet of IWbemWCOSmartEnum::Next
(3.1.4.7.1) and of the optimized IWbemObjectSink::Indicate (3.1.4.2.1).

An ObjectArray carries CIM objects as WBEM_DATAPACKET_OBJECTs (2.2.14.1): a
class (WBEMOBJECT_CLASS, 2.2.14.2), a full instance (WBEMOBJECT_INSTANCE,
2.2.14.3) or an instance without its class (WBEMOBJECT_INSTANCE_NOCLASS,
2.2.14.4).  The last kind names its CurrentClass by a server-chosen classID
that an earlier WBEMOBJECT_INSTANCE carried, possibly in an earlier Next call
of the same enumeration: the caller keeps one ClassCache per enumeration.

This module also holds the two small construct helpers that the other MS-WMI
encodings (context.py, refresher.py) share: FixedHeader, a fixed-size
construct Struct parsed through a struct.Struct derived from it, and Located,
which turns a construct failure into a located DecodeError.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Iterator

from construct import (
    Bytes, Const, ConstructError, FormatField, Int8ul, Int32ul, Renamed, Struct, Subconstruct,
)

from . import wmio
from .errors import DecodeError, EncodeError

__all__ = [
    "ClassCache", "ObjectArray", "PacketType", "ObjectType",
    "parse_object_array", "build_object_array",
    "FixedHeader", "Located", "rebased",
]


# ---------------------------------------------------------------------------
# construct helpers shared by the MS-WMI encodings
# ---------------------------------------------------------------------------

def construct_failure(e: ConstructError) -> tuple[str, str]:
    """(field path, message) of a construct error, e.g. ("Properties.PropertyType", "...")."""
    text = str(e)
    head, _, message = text.partition("\n")
    path = ""
    if head.startswith("Error in path"):
        parts = [p.strip() for p in head[len("Error in path"):].split("->")]
        path = ".".join(p for p in parts if p and not p.startswith("("))
    return path, (message or head)


def rebased(err: DecodeError, base: int) -> DecodeError:
    """The same error, its offset moved from a sub-buffer to the enclosing one."""
    return DecodeError(err.structure, err.offset + base, err.reason)


class FixedHeader:
    """A fixed-size construct Struct, parsed through a struct.Struct derived from it.

    The construct declaration stays the single source of truth (field names,
    formats, Const values) and builds; parsing goes through one precompiled
    struct.Struct because headers are read once per object and construct's
    interpreter costs tens of microseconds per Struct.  Const fields become
    checks whose failure names the field and its absolute offset.
    """

    def __init__(self, name: str, declaration: Struct):
        self.name = name
        self.declaration = declaration
        fmt = "<"
        self.fields: list[tuple[str, int]] = []   # (field name, offset in header)
        self.checks: list[tuple[int, object]] = []  # (field index, required value)
        offset = 0
        for i, sub in enumerate(declaration.subcons):
            assert isinstance(sub, Renamed), "every header field is named"
            inner = sub.subcon
            if isinstance(inner, Const):
                self.checks.append((i, inner.value))
                inner = inner.subcon
            if isinstance(inner, FormatField):
                code = inner.fmtstr[1:]
            elif isinstance(inner, Bytes) and isinstance(inner.length, int):
                code = f"{inner.length}s"
            else:  # pragma: no cover - declaration error
                raise TypeError(f"{name}.{sub.name}: not a fixed-size field")
            self.fields.append((sub.name, offset))
            fmt += code
            offset += struct.calcsize("<" + code)
        self.struct = struct.Struct(fmt)
        self.size = self.struct.size
        self.names = [n for n, _ in self.fields]

    def unpack(self, buf, offset: int, end: int | None = None) -> tuple:
        """Field values in declaration order; Const fields are checked."""
        if end is None:
            end = len(buf)
        if offset < 0 or offset + self.size > end:
            raise DecodeError(self.name, offset,
                              f"truncated: {self.size} bytes needed, {max(end - offset, 0)} left")
        values = self.struct.unpack_from(buf, offset)
        for i, required in self.checks:
            if values[i] != required:
                name, at = self.fields[i]
                raise DecodeError(f"{self.name}.{name}", offset + at,
                                  f"must be {_show(required)}, found {_show(values[i])}")
        return values

    def field_offset(self, name: str) -> int:
        return dict(self.fields)[name]

    def pack(self, **values) -> bytes:
        """Build through the construct declaration (Const fields fill themselves)."""
        try:
            return self.declaration.build(values)
        except ConstructError as e:
            path, message = construct_failure(e)
            raise EncodeError(f"{self.name}.{path}: {message}") from None


def _show(v) -> str:
    return f"0x{v:X}" if isinstance(v, int) else repr(v)


class Located(Subconstruct):
    """Names a spec structure inside a construct declaration.

    Any construct failure while parsing it becomes a DecodeError naming the
    structure and the field path, at the absolute offset where the structure
    starts (the declarations parse from a stream positioned in the caller's
    whole buffer, so stream positions are absolute).  The innermost Located
    wins: a DecodeError raised inside passes through unchanged.
    """

    def __init__(self, name: str, subcon):
        super().__init__(subcon)
        self.spec_name = name

    def _parse(self, stream, context, path):
        start = stream.tell()
        try:
            return self.subcon._parsereport(stream, context, path)
        except ConstructError as e:
            fields, message = construct_failure(e)
            here = path.replace("(parsing)", "").replace(" -> ", ".").strip(".")
            if here and fields.startswith(here):
                fields = fields[len(here):].lstrip(".")
            name = f"{self.spec_name}.{fields}" if fields else self.spec_name
            raise DecodeError(name, start, message) from None

    def _build(self, obj, stream, context, path):
        return self.subcon._build(obj, stream, context, path)


# ---------------------------------------------------------------------------
# 2.2.14 declarations
# ---------------------------------------------------------------------------

class PacketType(IntEnum):
    """bPacketType: the call whose data the ObjectArray carries."""

    INDICATE = 0   # optimized IWbemObjectSink::Indicate (3.1.4.2.1)
    NEXT = 1       # IWbemWCOSmartEnum::Next (3.1.4.7.1)


class ObjectType(IntEnum):
    """WBEM_DATAPACKET_OBJECT.bObjectType (2.2.14.1)."""

    WBEMOBJECT_CLASS = 1
    WBEMOBJECT_INSTANCE = 2
    WBEMOBJECT_INSTANCE_NOCLASS = 3


SIZE_OF_HEADER1 = 0x1A

# The three ObjectArray headers as one fixed block: the spec draws them as one
# structure and every size in them is checked against the others.
ObjectArrayHeader = FixedHeader("ObjectArray", Struct(
    "dwByteOrdering" / Const(0, Int32ul),
    "abSignature" / Const(b"WBEMDATA"),
    "dwSizeOfHeader1" / Const(SIZE_OF_HEADER1, Int32ul),
    "dwDataSize1" / Int32ul,
    "dwFlags" / Const(0, Int32ul),
    "bVersion" / Const(1, Int8ul),
    "bPacketType" / Int8ul,
    "dwSizeOfHeader2" / Const(8, Int32ul),
    "dwDataSize2" / Int32ul,
    "dwSizeOfHeader3" / Const(12, Int32ul),
    "dwDataSize3" / Int32ul,
    "dwNumObjects" / Int32ul,
))

WbemDatapacketObject = FixedHeader("WBEM_DATAPACKET_OBJECT", Struct(
    "dwSizeOfHeader" / Const(9, Int32ul),
    "dwSizeOfData" / Int32ul,
    "bObjectType" / Int8ul,
))

WbemObjectClass = FixedHeader("WBEMOBJECT_CLASS", Struct(
    "dwSizeOfHeader" / Const(8, Int32ul),
    "dwSizeOfData" / Int32ul,
))


def _instance_header(name: str) -> FixedHeader:
    return FixedHeader(name, Struct(
        "dwSizeOfHeader" / Const(0x18, Int32ul),
        "dwSizeOfData" / Int32ul,
        "classID" / Bytes(16),
    ))


WbemObjectInstance = _instance_header("WBEMOBJECT_INSTANCE")
WbemObjectInstanceNoClass = _instance_header("WBEMOBJECT_INSTANCE_NOCLASS")

_OBJECT_HEADERS = {
    ObjectType.WBEMOBJECT_CLASS: WbemObjectClass,
    ObjectType.WBEMOBJECT_INSTANCE: WbemObjectInstance,
    ObjectType.WBEMOBJECT_INSTANCE_NOCLASS: WbemObjectInstanceNoClass,
}
# the smallest WBEM_DATAPACKET_OBJECT: its header and an empty WBEMOBJECT_CLASS
_MIN_OBJECT_SIZE = WbemDatapacketObject.size + WbemObjectClass.size


# ---------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------

class ClassCache:
    """classID -> CurrentClass (a wmio.WmiClass), 2.2.14.4.

    Keep one per enumeration (or per sink) across the calls that carry its
    ObjectArrays: a WBEMOBJECT_INSTANCE_NOCLASS may name a class sent in an
    earlier call.  Parsing fills it from every WBEMOBJECT_INSTANCE; building
    consults it to decide which instances can go without their class.
    """

    def __init__(self):
        self._by_id: dict[bytes, object] = {}
        self._id_of: dict[int, bytes] = {}   # id(WmiClass) -> classID, for building

    def add(self, class_id: uuid.UUID | bytes, cls) -> None:
        key = _guid_bytes(class_id)
        self._by_id[key] = cls
        self._id_of[id(cls)] = key

    def get(self, class_id: uuid.UUID | bytes):
        return self._by_id.get(_guid_bytes(class_id))

    def class_id_of(self, cls) -> uuid.UUID | None:
        """The classID under which an equal class was cached, if any."""
        key = self._id_of.get(id(cls))
        if key is None or self._by_id.get(key) is not cls:
            key = next((k for k, c in self._by_id.items() if c == cls), None)
            if key is None:
                return None
            self._id_of[id(cls)] = key
        return uuid.UUID(bytes_le=key)

    def __contains__(self, class_id) -> bool:
        return _guid_bytes(class_id) in self._by_id

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[uuid.UUID]:
        return (uuid.UUID(bytes_le=k) for k in self._by_id)


def _guid_bytes(class_id: uuid.UUID | bytes) -> bytes:
    return class_id.bytes_le if isinstance(class_id, uuid.UUID) else bytes(class_id)


@dataclass
class ObjectArray:
    """A decoded ObjectArray (2.2.14).

    objects: WmiClass / WmiInstance in wire order (a NOCLASS instance comes back
    complete, its CurrentClass taken from the ClassCache); object_types and
    class_ids say how each was sent (class_ids[i] is None for a class).
    """

    packet_type: int
    objects: list
    object_types: list[int] = field(default_factory=list)
    class_ids: list[uuid.UUID | None] = field(default_factory=list)
    size: int = field(default=0, compare=False)   # bytes the ObjectArray took in the buffer

    @property
    def packet_type_name(self) -> str:
        try:
            return PacketType(self.packet_type).name
        except ValueError:
            return f"0x{self.packet_type:02X}"

    def to_json(self) -> dict:
        out = []
        for obj, kind, cid in zip(self.objects, self.object_types, self.class_ids):
            entry = {"bObjectType": ObjectType(kind).name}
            if cid is not None:
                entry["classID"] = str(cid)
            entry["object"] = wmio.to_json(obj)
            out.append(entry)
        return {"structure": "ObjectArray", "bPacketType": self.packet_type_name,
                "dwNumObjects": len(self.objects), "objects": out}


# ---------------------------------------------------------------------------
# parse
# ---------------------------------------------------------------------------

def parse_object_array(buf, cache: ClassCache | None = None, offset: int = 0) -> ObjectArray:
    """Decode the ObjectArray starting at buf[offset] (2.2.14).

    cache: the enumeration's ClassCache (a fresh one if None); it is updated
    with the classes of the WBEMOBJECT_INSTANCEs met.  Raises DecodeError for
    anything the spec does not allow, including a WBEMOBJECT_INSTANCE_NOCLASS
    whose classID no WBEMOBJECT_INSTANCE has announced.
    """
    if cache is None:
        cache = ClassCache()
    H = ObjectArrayHeader
    (_, _, _, size1, _, _, packet_type, _, size2, _, size3, count) = H.unpack(buf, offset)
    if packet_type not in PacketType._value2member_map_:
        raise DecodeError("ObjectArray.bPacketType", offset + H.field_offset("bPacketType"),
                          f"must be 0 (Indicate) or 1 (Next), found {packet_type}")
    end = offset + SIZE_OF_HEADER1 + size1
    if end > len(buf):
        raise DecodeError("ObjectArray.dwDataSize1", offset + H.field_offset("dwDataSize1"),
                          f"{size1} bytes announced, {len(buf) - offset - SIZE_OF_HEADER1} present")
    if size2 != size1 - 8:
        raise DecodeError("ObjectArray.dwDataSize2", offset + H.field_offset("dwDataSize2"),
                          f"must be dwDataSize1 - 8 = {size1 - 8}, found {size2}")
    if size3 != size2 - 12:
        raise DecodeError("ObjectArray.dwDataSize3", offset + H.field_offset("dwDataSize3"),
                          f"must be dwDataSize2 - 12 = {size2 - 12}, found {size3}")
    if count > size3 // _MIN_OBJECT_SIZE:
        raise DecodeError("ObjectArray.dwNumObjects", offset + H.field_offset("dwNumObjects"),
                          f"{count} objects cannot fit in {size3} bytes")

    objects, kinds, class_ids = [], [], []
    pos = offset + H.size
    for index in range(count):
        obj, kind, cid, pos = _parse_datapacket_object(buf, pos, end, cache, index)
        objects.append(obj)
        kinds.append(kind)
        class_ids.append(cid)
    if pos != end:
        raise DecodeError("ObjectArray.wbemObjects", pos,
                          f"{end - pos} bytes left after the {count} objects of dwNumObjects")
    return ObjectArray(packet_type, objects, kinds, class_ids, size=end - offset)


def _parse_datapacket_object(buf, pos: int, end: int, cache: ClassCache, index: int):
    _, outer_size, kind = WbemDatapacketObject.unpack(buf, pos, end)
    where = f"WBEM_DATAPACKET_OBJECT[{index}]"
    if kind not in _OBJECT_HEADERS:
        raise DecodeError(f"{where}.bObjectType", pos + 8, f"must be 1, 2 or 3, found {kind}")
    start = pos + WbemDatapacketObject.size
    obj_end = start + outer_size
    if obj_end > end:
        raise DecodeError(f"{where}.dwSizeOfData", pos + 4,
                          f"{outer_size} bytes announced, {end - start} left in the ObjectArray")
    header = _OBJECT_HEADERS[kind]
    values = header.unpack(buf, start, obj_end)
    inner_size = values[1]
    if header.size + inner_size != outer_size:
        raise DecodeError(f"{header.name}.dwSizeOfData", start + 4,
                          f"{inner_size} + header {header.size} != WBEM_DATAPACKET_OBJECT "
                          f"dwSizeOfData {outer_size}")
    data = start + header.size
    # wmio reads from a stream over buf[:end]: hand it just this object, or a
    # large array would be copied once per object (quadratic).
    chunk = bytes(buf[data:obj_end])
    if kind == ObjectType.WBEMOBJECT_INSTANCE_NOCLASS:
        class_id = uuid.UUID(bytes_le=values[2])
        current = cache.get(values[2])
        if current is None:
            raise DecodeError(f"{header.name}.classID", start + 8,
                              f"classID {class_id} names no WBEMOBJECT_INSTANCE seen before")
        try:
            return wmio.parse_instance_noclass(chunk, current), kind, class_id, obj_end
        except DecodeError as e:
            raise rebased(e, data) from None
    try:
        obj = wmio.parse_object_block(chunk, 0, len(chunk))
    except DecodeError as e:
        raise rebased(e, data) from None
    if kind == ObjectType.WBEMOBJECT_CLASS:
        if not isinstance(obj, wmio.WmiClass):
            raise DecodeError(f"{header.name}.ObjectData", data, "bObjectType 1 but the object is an instance")
        return obj, kind, None, obj_end
    if not isinstance(obj, wmio.WmiInstance):
        raise DecodeError(f"{header.name}.ObjectData", data, "bObjectType 2 but the object is a class")
    cache.add(values[2], obj.class_)
    return obj, kind, uuid.UUID(bytes_le=values[2]), obj_end


# ---------------------------------------------------------------------------
# build
# ---------------------------------------------------------------------------

def build_object_array(objects, packet_type: int = PacketType.NEXT,
                       cache: ClassCache | None = None) -> bytes:
    """Encode objects as an ObjectArray (2.2.14).

    The first instance of each class not yet in cache goes as a
    WBEMOBJECT_INSTANCE under a fresh random classID (and enters the cache);
    later instances of a cached class go as WBEMOBJECT_INSTANCE_NOCLASS;
    classes go as WBEMOBJECT_CLASS.  Pass the enumeration's cache to continue
    an enumeration over several calls.
    """
    if packet_type not in PacketType._value2member_map_:
        raise EncodeError(f"ObjectArray.bPacketType: {packet_type} is neither 0 (Indicate) nor 1 (Next)")
    if cache is None:
        cache = ClassCache()
    parts = []
    for obj in objects:
        if isinstance(obj, wmio.WmiClass):
            kind, header, extra, data = ObjectType.WBEMOBJECT_CLASS, WbemObjectClass, {}, \
                wmio.build_object_block(obj)
        elif isinstance(obj, wmio.WmiInstance):
            class_id = cache.class_id_of(obj.class_)
            if class_id is None:
                class_id = uuid.uuid4()
                cache.add(class_id, obj.class_)
                kind, header, data = ObjectType.WBEMOBJECT_INSTANCE, WbemObjectInstance, \
                    wmio.build_object_block(obj)
            else:
                kind, header, data = ObjectType.WBEMOBJECT_INSTANCE_NOCLASS, WbemObjectInstanceNoClass, \
                    wmio.build_instance_noclass(obj)
            extra = {"classID": class_id.bytes_le}
        else:
            raise EncodeError(f"ObjectArray: cannot encode {type(obj).__name__}")
        body = header.pack(dwSizeOfData=len(data), **extra) + data
        parts.append(WbemDatapacketObject.pack(dwSizeOfData=len(body), bObjectType=kind))
        parts.append(body)
    objects_bytes = b"".join(parts)
    size3 = len(objects_bytes)
    size2 = size3 + 12
    size1 = size2 + 8
    head = ObjectArrayHeader.pack(dwDataSize1=size1, bPacketType=int(packet_type),
                                  dwDataSize2=size2, dwDataSize3=size3,
                                  dwNumObjects=len(objects))
    return head + objects_bytes
