"""MS-WMI 2.2.14 ObjectArray: the WBEMDATA packet of IWbemWCOSmartEnum::Next
(3.1.4.7.1) and of the optimized IWbemObjectSink::Indicate (3.1.4.2.1).

An ObjectArray carries CIM objects as WBEM_DATAPACKET_OBJECTs (2.2.14.1): a
class (WBEMOBJECT_CLASS, 2.2.14.2), a full instance (WBEMOBJECT_INSTANCE,
2.2.14.3) or an instance without its class (WBEMOBJECT_INSTANCE_NOCLASS,
2.2.14.4).  The last kind names its CurrentClass by a server-chosen classID
that an earlier WBEMOBJECT_INSTANCE carried, possibly in an earlier Next call
of the same enumeration: the caller keeps one ClassCache per enumeration.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Iterator

from construct import Bytes, Const, Int8ul, Int32ul, Struct

from . import wmio
from .declarations import FixedHeader
from .errors import DecodeError, EncodeError

__all__ = [
    "ClassCache", "ObjectArray", "PacketType", "ObjectType",
    "parse_object_array", "build_object_array",
]


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

    __slots__ = ("_by_id", "_id_of")      # one per enumeration or sink of every host pair

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
    if kind == ObjectType.WBEMOBJECT_INSTANCE_NOCLASS:
        class_id = uuid.UUID(bytes_le=values[2])
        current = cache.get(values[2])
        if current is None:
            raise DecodeError(f"{header.name}.classID", start + 8,
                              f"classID {class_id} names no WBEMOBJECT_INSTANCE seen before")
        return wmio.parse_instance_noclass(buf, current, data, obj_end), kind, class_id, obj_end
    obj = wmio.parse_object_block(buf, data, obj_end)
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
