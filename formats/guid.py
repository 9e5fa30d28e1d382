"""GUIDs as text (MS-DTYP 2.3.4.2): Data1-3 in the stream's byte order, Data4 as bytes.

Every layer names interfaces, classes and IPIDs by the lower-case canonical text of
their GUID; these two functions are the one place that text is made and read back.
"""

from __future__ import annotations

import struct
import uuid as _uuid

__all__ = ["GUID_NULL", "guid_text", "guid_bytes"]

GUID_NULL = "00000000-0000-0000-0000-000000000000"

_GUID_LE = struct.Struct("<IHH8s")
_GUID_BE = struct.Struct(">IHH8s")


def guid_text(buf: bytes, offset: int = 0, little_endian: bool = True) -> str:
    """The GUID at offset as lower-case canonical text."""
    if type(buf) is bytes and offset >= 0:
        # The same few GUIDs fill a capture (interface IDs, IPIDs, OXID resolver bindings,
        # causality IDs of one call in both directions): their text is looked up by their
        # octets, a bounded dict cleared when full, rather than formatted every time.
        key = buf[offset:offset + 16]
        known = _KNOWN[little_endian]
        text = known.get(key)
        if text is None:
            text = _format(buf, offset, little_endian)
            if len(known) >= 16384:
                known.clear()
            known[key] = text
        return text
    return _format(buf, offset, little_endian)


_KNOWN: dict[bool, dict[bytes, str]] = {True: {}, False: {}}


def _format(buf, offset: int, little_endian: bool) -> str:
    d1, d2, d3, d4 = (_GUID_LE if little_endian else _GUID_BE).unpack_from(buf, offset)
    h = d4.hex()
    return f"{d1:08x}-{d2:04x}-{d3:04x}-{h[:4]}-{h[4:]}"


def guid_bytes(text: str, little_endian: bool = True) -> bytes:
    u = _uuid.UUID(text.strip("{}"))
    return u.bytes_le if little_endian else u.bytes
