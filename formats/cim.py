"""CIM types, qualifier flavors and values as MS-WMIO encodes them.

[MS-WMIO] 2.2.82 CimType, 2.2.62 QualifierFlavor, 2.2.71 EncodedValue,
2.2.72 NumericValue, 2.2.75 BOOL, 2.3.1 datetime, 2.2.69/2.2.80 the
dictionary strings a HeapStringRef may name instead of a heap offset.

Everything here is independent of where the bytes sit (ValueTable cell,
qualifier value, array element): wmio.py decides where, this module decides
what the bits mean.
"""

from __future__ import annotations

import datetime as _dt
import re
import struct
from enum import IntEnum, IntFlag

# 2.2.82: a CimArrayType is the CimBaseType with this bit set.
CIM_ARRAY_FLAG = 0x2000
# 2.2.32 Inherited: set in PropertyInfo.PropertyType when the property was
# declared in a superclass.  Only PropertyType carries it, never a value.
CIM_INHERITED_FLAG = 0x4000
CIM_TYPE_MASK = 0x1FFF


class CimType(IntEnum):
    """[MS-WMIO] 2.2.82 CimBaseType values."""

    SINT8 = 16
    UINT8 = 17
    SINT16 = 2
    UINT16 = 18
    SINT32 = 3
    UINT32 = 19
    SINT64 = 20
    UINT64 = 21
    REAL32 = 4
    REAL64 = 5
    BOOLEAN = 11
    STRING = 8
    DATETIME = 101
    REFERENCE = 102
    CHAR16 = 103
    OBJECT = 13


CIM_TYPE_NAMES = {
    CimType.SINT8: "sint8", CimType.UINT8: "uint8", CimType.SINT16: "sint16",
    CimType.UINT16: "uint16", CimType.SINT32: "sint32", CimType.UINT32: "uint32",
    CimType.SINT64: "sint64", CimType.UINT64: "uint64", CimType.REAL32: "real32",
    CimType.REAL64: "real64", CimType.BOOLEAN: "boolean", CimType.STRING: "string",
    CimType.DATETIME: "datetime", CimType.REFERENCE: "ref", CimType.CHAR16: "char16",
    CimType.OBJECT: "object",
}
_BY_NAME = {v: k for k, v in CIM_TYPE_NAMES.items()}

# 2.2.71: inline cell layout of each base type (NumericValue, BOOL, char16 as
# a 16-bit value); every other type is a 4-octet HeapRef.  Array elements in
# an Encoded-Array (2.2.79) are EncodedValues too, so they use the same cells.
_CELL_FORMATS = {
    CimType.SINT8: "<b", CimType.UINT8: "<B", CimType.SINT16: "<h",
    CimType.UINT16: "<H", CimType.SINT32: "<i", CimType.UINT32: "<I",
    CimType.SINT64: "<q", CimType.UINT64: "<Q", CimType.REAL32: "<f",
    CimType.REAL64: "<d", CimType.BOOLEAN: "<H", CimType.CHAR16: "<H",
}
HEAPREF_CELL = struct.Struct("<I")
CELL_STRUCTS: dict[int, struct.Struct] = {int(t): struct.Struct(f) for t, f in _CELL_FORMATS.items()}
# 2.2.74 NoValue: Windows fills the cell of a class property without a value
# with 0xFF octets; here as the number each inline cell unpacks to.
NO_VALUE_CELLS: dict[int, int | float] = {t: s.unpack(b"\xff" * s.size)[0] for t, s in CELL_STRUCTS.items()}
STRING_TYPES = frozenset({CimType.STRING, CimType.DATETIME, CimType.REFERENCE})
INTEGER_RANGES = {
    CimType.SINT8: (-(1 << 7), (1 << 7) - 1), CimType.UINT8: (0, (1 << 8) - 1),
    CimType.SINT16: (-(1 << 15), (1 << 15) - 1), CimType.UINT16: (0, (1 << 16) - 1),
    CimType.SINT32: (-(1 << 31), (1 << 31) - 1), CimType.UINT32: (0, (1 << 32) - 1),
    CimType.SINT64: (-(1 << 63), (1 << 63) - 1), CimType.UINT64: (0, (1 << 64) - 1),
}

# 2.2.75 BOOL
BOOL_TRUE = 0xFFFF
BOOL_FALSE = 0x0000


def named(items, name: str):
    """The first of `items` (qualifiers, properties, methods, context
    properties: anything with a .name) called `name`, or None.

    Case-insensitive: CIM names are (DSP0004), and Windows keeps whatever case the
    schema author wrote while callers ask with the documented one."""
    low = name.lower()
    for item in items:
        if item.name.lower() == low:
            return item
    return None


def cell_size(cimtype: int) -> int:
    """Octets an EncodedValue of this type takes in a ValueTable or qualifier."""
    if cimtype & CIM_ARRAY_FLAG:
        return 4
    s = CELL_STRUCTS.get(cimtype & CIM_TYPE_MASK)
    return s.size if s is not None else 4


def cell_struct(cimtype: int) -> struct.Struct:
    if cimtype & CIM_ARRAY_FLAG:
        return HEAPREF_CELL
    return CELL_STRUCTS.get(cimtype & CIM_TYPE_MASK, HEAPREF_CELL)


def type_name(cimtype: int, cimtype_qualifier: str | None = None) -> str:
    """MOF-style type name: "uint32", "string[]", "ref:Win32_Foo", "object:X[]".

    The CIMTYPE qualifier ([MS-WMI] 2.2.32) names the class of references and
    embedded objects; it wins when present because the wire type cannot.
    """
    arr = "[]" if cimtype & CIM_ARRAY_FLAG else ""
    b = cimtype & CIM_TYPE_MASK
    if cimtype_qualifier and b in (CimType.REFERENCE, CimType.OBJECT) and ":" in cimtype_qualifier:
        return cimtype_qualifier + arr
    name = CIM_TYPE_NAMES.get(b)
    return (name or f"cimtype_0x{b:x}") + arr


def parse_type_name(name: str) -> int:
    """Inverse of type_name for plain names ("uint32", "string[]", "ref:X", "object:X")."""
    arr = 0
    if name.endswith("[]"):
        arr, name = CIM_ARRAY_FLAG, name[:-2]
    if name.startswith("ref:") or name == "reference":
        return int(CimType.REFERENCE) | arr
    if name.startswith("object:"):
        return int(CimType.OBJECT) | arr
    if name == "bool":
        name = "boolean"
    return int(_BY_NAME[name.lower()]) | arr


class QualifierFlavor(IntFlag):
    """[MS-WMIO] 2.2.62 QualifierFlavor bits."""

    PROPAGATE_TO_INSTANCE = 0x01
    PROPAGATE_TO_DERIVED_CLASS = 0x02
    NOT_OVERRIDABLE = 0x10
    ORIGIN_PROPAGATED = 0x20
    ORIGIN_SYSTEM = 0x40
    AMENDED = 0x80


# MOF flavor keywords (DMTF DSP0004 names) for the bits a MOF writer shows.
_MOF_FLAVORS = (
    (QualifierFlavor.PROPAGATE_TO_INSTANCE, "ToInstance"),
    (QualifierFlavor.PROPAGATE_TO_DERIVED_CLASS, "ToSubclass"),
    (QualifierFlavor.NOT_OVERRIDABLE, "DisableOverride"),
    (QualifierFlavor.AMENDED, "Amended"),
)


def _flavor_names(flavor: int) -> tuple[str, ...]:
    names = [f.name for f in QualifierFlavor if flavor & f]
    rest = flavor & ~sum(QualifierFlavor)
    if rest:
        names.append(f"0x{rest:02x}")
    return tuple(names)


# A flavor is one octet: its names are looked up, not recomputed, because IntFlag
# arithmetic costs microseconds and every qualifier of every decoded class asks.
_FLAVOR_NAMES = [_flavor_names(v) for v in range(256)]


def flavor_names(flavor: int) -> list[str]:
    """Names of the flavor bits set, in the spec's words (unknown bits as hex)."""
    if 0 <= flavor < 256:
        return list(_FLAVOR_NAMES[flavor])
    return list(_flavor_names(flavor))


def mof_flavors(flavor: int) -> list[str]:
    return [name for bit, name in _MOF_FLAVORS if flavor & bit]


# [MS-WMIO] 2.2.80 DictionaryReference: a HeapStringRef with the most
# significant bit set names one of these strings instead of a heap offset.
DICTIONARY_STRINGS = (
    '"', "key", "NADA", "read", "write", "volatile", "provider", "dynamic",
    "cimwin32", "DWORD", "CIMTYPE",
)
DICTIONARY_INDEX = {s: i for i, s in enumerate(DICTIONARY_STRINGS)}


class DmtfDateTime(str):
    """A CIM datetime value: the DMTF string exactly as encoded ([MS-WMIO] 2.3.1).

    Two forms share 25 characters: a timestamp ``yyyymmddHHMMSS.mmmmmmsUUU``
    (s is + or -, UUU the UTC offset in minutes) and an interval
    ``ddddddddHHMMSS.mmmmmm:000``.  Fields may be wildcarded with ``*``.
    The string itself is the value (lossless); to_python() interprets it.
    """

    __slots__ = ()
    _TS = re.compile(r"^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})\.(\d{6})([+-])(\d{3})$")
    _IV = re.compile(r"^(\d{8})(\d{2})(\d{2})(\d{2})\.(\d{6}):000$")

    @property
    def is_interval(self) -> bool:
        return len(self) == 25 and self[21] == ":"

    def to_python(self) -> _dt.datetime | _dt.timedelta | None:
        """datetime (timezone-aware) or timedelta; None if wildcarded or malformed."""
        m = self._IV.match(self)
        if m:
            d, h, mi, s, us = map(int, m.groups())
            return _dt.timedelta(days=d, hours=h, minutes=mi, seconds=s, microseconds=us)
        m = self._TS.match(self)
        if not m:
            return None
        y, mo, d, h, mi, s, us, sign, off = m.groups()
        try:
            tz = _dt.timezone(_dt.timedelta(minutes=int(off) * (1 if sign == "+" else -1)))
            return _dt.datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), int(us), tzinfo=tz)
        except ValueError:
            return None

    @classmethod
    def from_python(cls, value: _dt.datetime | _dt.timedelta) -> "DmtfDateTime":
        if isinstance(value, _dt.timedelta):
            total = value // _dt.timedelta(microseconds=1)
            days, rem = divmod(total, 86_400_000_000)
            h, rem = divmod(rem, 3_600_000_000)
            mi, rem = divmod(rem, 60_000_000)
            s, us = divmod(rem, 1_000_000)
            return cls(f"{days:08d}{h:02d}{mi:02d}{s:02d}.{us:06d}:000")
        off = value.utcoffset()
        minutes = 0 if off is None else int(off.total_seconds() // 60)
        sign = "+" if minutes >= 0 else "-"
        return cls(f"{value:%Y%m%d%H%M%S}.{value.microsecond:06d}{sign}{abs(minutes):03d}")


def check_value(cimtype: int, value) -> None:
    """Raise ValueError if value cannot be encoded as cimtype (model-side check)."""
    if value is None:
        return
    b = cimtype & CIM_TYPE_MASK
    if cimtype & CIM_ARRAY_FLAG:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"array type {type_name(cimtype)} needs a list, got {type(value).__name__}")
        for v in value:
            if v is None:
                raise ValueError("array elements cannot be NULL")
            check_value(b, v)
        return
    if b in INTEGER_RANGES:
        lo, hi = INTEGER_RANGES[b]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"{value!r} does not fit {type_name(b)}")
    elif b in (CimType.REAL32, CimType.REAL64):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"{value!r} is not a {type_name(b)}")
    elif b == CimType.BOOLEAN:
        if not isinstance(value, bool):
            raise ValueError(f"{value!r} is not a boolean")
    elif b == CimType.CHAR16:
        if not (isinstance(value, str) and len(value) == 1 and ord(value) <= 0xFFFF):
            raise ValueError(f"{value!r} is not a char16")
    elif b in STRING_TYPES:
        if not isinstance(value, str):
            raise ValueError(f"{value!r} is not a string")
    elif b == CimType.OBJECT:
        pass  # checked by wmio (WmiClass / WmiInstance)
    else:
        raise ValueError(f"unknown CIM type 0x{b:x}")


def cell_to_value(b: int, raw):
    """Python value of an inline EncodedValue already unpacked from its cell."""
    if b == CimType.BOOLEAN:
        return raw != BOOL_FALSE
    if b == CimType.CHAR16:
        return chr(raw)
    return raw


def value_to_cell(b: int, value):
    """Inverse of cell_to_value: the number packed into the cell."""
    if b == CimType.BOOLEAN:
        return BOOL_TRUE if value else BOOL_FALSE
    if b == CimType.CHAR16:
        return ord(value)
    if b == CimType.REAL32 or b == CimType.REAL64:
        return float(value)
    return value
