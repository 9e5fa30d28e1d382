"""MS-WMI 2.2.15-2.2.19: what IWbemRemoteRefresher::RemoteRefresh returns.

Each refreshed item is a WBEM_REFRESHED_OBJECT (2.2.15): a request id, a blob
type (WBEM_INSTANCE_BLOB_TYPE, 2.2.17) and a blob.  The blob is

  WBEM_BLOB_TYPE_ALL    one RefreshedSingleInstance (2.2.19)
  WBEM_BLOB_TYPE_ENUM   a WBEM_INSTANCE_BLOB (2.2.16): Version 1, numObjects,
                        then numObjects RefreshedInstances (2.2.18), each a
                        blobSize and a RefreshedSingleInstance
  WBEM_BLOB_TYPE_ERROR  nothing

A RefreshedSingleInstance holds only the instance's values (InstanceHeap size,
NdTable, InstanceData, InstanceQualifierSet, InstanceHeap): the class is the
template the client obtained when it added the object to the refresher
(_WBEM_REFRESH_INFO), so the caller passes that template in (a WmiClass, or the template
WmiInstance, whose CurrentClass is used).

"InstanceHeap size" (item 1 of 2.2.19) is read as the 31-bit HeapLength of
the InstanceHeap that ends the blob (its items, without the HeapLength field);
a value that counts the HeapLength field too is accepted.  Either way it must
agree with the heap actually found at the end of the blob.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from construct import Const, Int32ul, Struct

from . import wmio
from .declarations import FixedHeader
from .errors import DecodeError

__all__ = [
    "WbemInstanceBlobType", "RefreshedObject",
    "parse_instance_blob", "build_instance_blob",
    "parse_refreshed_single_instance", "build_refreshed_single_instance",
]


class WbemInstanceBlobType(IntEnum):
    """2.2.17 WBEM_INSTANCE_BLOB_TYPE."""

    WBEM_BLOB_TYPE_ALL = 2
    WBEM_BLOB_TYPE_ERROR = 3
    WBEM_BLOB_TYPE_ENUM = 4


WbemInstanceBlobHeader = FixedHeader("WBEM_INSTANCE_BLOB", Struct(
    "Version" / Const(1, Int32ul),
    "numObjects" / Int32ul,
))

RefreshedInstancesHeader = FixedHeader("RefreshedInstances", Struct(
    "blobSize" / Int32ul,
))

RefreshedSingleInstanceHeader = FixedHeader("RefreshedSingleInstance", Struct(
    "InstanceHeapSize" / Int32ul,
))

_HEAP_LENGTH = struct.Struct("<I")
# a RefreshedSingleInstance is at least its heap size and an empty heap's HeapLength
_MIN_SINGLE_INSTANCE = RefreshedSingleInstanceHeader.size + _HEAP_LENGTH.size
_MIN_REFRESHED_INSTANCES = RefreshedInstancesHeader.size + _MIN_SINGLE_INSTANCE


# ---------------------------------------------------------------------------
# 2.2.19 RefreshedSingleInstance
# ---------------------------------------------------------------------------

def parse_refreshed_single_instance(buf, template, offset: int = 0, end: int | None = None):
    """Decode buf[offset:end] as a RefreshedSingleInstance of class template -> WmiInstance."""
    end = len(buf) if end is None else min(end, len(buf))
    (heap_size,) = RefreshedSingleInstanceHeader.unpack(buf, offset, end)
    _check_heap_size(buf, offset, end, heap_size)
    first = offset + RefreshedSingleInstanceHeader.size
    inst = wmio.parse_instance_parts(buf, template_class(template), first, end)
    if isinstance(template, wmio.WmiInstance):
        # the blob refreshes the template's values; where it comes from
        # (Decoration, ObjectFlags) stays the template's
        inst.decoration, inst.flags = template.decoration, template.flags
    return inst


def template_class(template):
    """The CurrentClass to decode against: a WmiClass as given, or the class of
    a template instance (what _WBEM_REFRESH_INFO's m_pTemplate usually is)."""
    return template.class_ if isinstance(template, wmio.WmiInstance) else template


def _check_heap_size(buf, offset: int, end: int, heap_size: int) -> None:
    """The InstanceHeap ends the blob: its HeapLength must sit heap_size (+4) bytes before end."""
    first = offset + RefreshedSingleInstanceHeader.size
    for items in (heap_size, heap_size - _HEAP_LENGTH.size):
        at = end - _HEAP_LENGTH.size - items
        if items >= 0 and at >= first:
            (length,) = _HEAP_LENGTH.unpack_from(buf, at)
            # wmio tolerates a HeapLength without its top bit; so do we
            if length & ~wmio.HEAP_LENGTH_BIT == items:
                return
    raise DecodeError("RefreshedSingleInstance.InstanceHeapSize", offset,
                      f"{heap_size} does not match the InstanceHeap that ends the "
                      f"{end - offset}-byte blob")


def build_refreshed_single_instance(instance) -> bytes:
    parts, heap_length = wmio.build_instance_parts_sized(instance)
    return RefreshedSingleInstanceHeader.pack(InstanceHeapSize=heap_length) + parts


# ---------------------------------------------------------------------------
# 2.2.16 WBEM_INSTANCE_BLOB / 2.2.18 RefreshedInstances
# ---------------------------------------------------------------------------

def parse_instance_blob(buf, template, offset: int = 0, end: int | None = None) -> list:
    """Decode a WBEM_INSTANCE_BLOB whose objects are all of class template."""
    end = len(buf) if end is None else min(end, len(buf))
    version, count = WbemInstanceBlobHeader.unpack(buf, offset, end)
    pos = offset + WbemInstanceBlobHeader.size
    if count > (end - pos) // _MIN_REFRESHED_INSTANCES:
        raise DecodeError("WBEM_INSTANCE_BLOB.numObjects", offset + 4,
                          f"{count} objects cannot fit in {end - pos} bytes")
    instances = []
    for index in range(count):
        (size,) = RefreshedInstancesHeader.unpack(buf, pos, end)
        blob = pos + RefreshedInstancesHeader.size
        if blob + size > end:
            raise DecodeError(f"RefreshedInstances[{index}].blobSize", pos,
                              f"{size} bytes announced, {end - blob} left")
        instances.append(parse_refreshed_single_instance(buf, template, blob, blob + size))
        pos = blob + size
    if pos != end:
        raise DecodeError("WBEM_INSTANCE_BLOB.Objects", pos,
                          f"{end - pos} bytes left after the {count} objects of numObjects")
    return instances


def build_instance_blob(instances) -> bytes:
    parts = [WbemInstanceBlobHeader.pack(numObjects=len(instances))]
    for inst in instances:
        single = build_refreshed_single_instance(inst)
        parts.append(RefreshedInstancesHeader.pack(blobSize=len(single)))
        parts.append(single)
    return b"".join(parts)


# ---------------------------------------------------------------------------
# 2.2.15 WBEM_REFRESHED_OBJECT
# ---------------------------------------------------------------------------

@dataclass
class RefreshedObject:
    """A WBEM_REFRESHED_OBJECT (2.2.15) as data: m_lRequestId, m_lBlobType, m_pbBlob."""

    request_id: int
    blob_type: int
    blob: bytes = b""

    @property
    def blob_type_name(self) -> str:
        try:
            return WbemInstanceBlobType(self.blob_type).name
        except ValueError:
            return f"0x{self.blob_type:X}"

    def decode(self, template):
        """WBEM_BLOB_TYPE_ALL -> WmiInstance, _ENUM -> [WmiInstance], _ERROR -> None."""
        if self.blob_type == WbemInstanceBlobType.WBEM_BLOB_TYPE_ALL:
            return parse_refreshed_single_instance(self.blob, template)
        if self.blob_type == WbemInstanceBlobType.WBEM_BLOB_TYPE_ENUM:
            return parse_instance_blob(self.blob, template)
        if self.blob_type == WbemInstanceBlobType.WBEM_BLOB_TYPE_ERROR:
            if self.blob:
                raise DecodeError("WBEM_REFRESHED_OBJECT.m_lBlobLength", 0,
                                  f"must be 0 for WBEM_BLOB_TYPE_ERROR, found {len(self.blob)}")
            return None
        raise DecodeError("WBEM_REFRESHED_OBJECT.m_lBlobType", 0,
                          f"must be 2, 3 or 4, found {self.blob_type}")

    @classmethod
    def of(cls, request_id: int, result) -> "RefreshedObject":
        """Build from a result: a WmiInstance (ALL), a list of them (ENUM) or None (ERROR)."""
        if result is None:
            return cls(request_id, WbemInstanceBlobType.WBEM_BLOB_TYPE_ERROR, b"")
        if isinstance(result, (list, tuple)):
            return cls(request_id, WbemInstanceBlobType.WBEM_BLOB_TYPE_ENUM, build_instance_blob(result))
        return cls(request_id, WbemInstanceBlobType.WBEM_BLOB_TYPE_ALL,
                   build_refreshed_single_instance(result))

    def to_json(self, template=None) -> dict:
        out = {"structure": "WBEM_REFRESHED_OBJECT", "m_lRequestId": self.request_id,
               "m_lBlobType": self.blob_type_name, "m_lBlobLength": len(self.blob)}
        if template is not None:
            decoded = self.decode(template)
            if isinstance(decoded, list):
                out["instances"] = [wmio.to_json(i) for i in decoded]
            elif decoded is not None:
                out["instance"] = wmio.to_json(decoded)
        return out
