"""ORPCTHIS and ORPCTHAT (MS-DCOM 2.2.13): the implicit first parameter of every ORPC call.

Every request on a COM object interface starts with ORPCTHIS (version, flags, the causality
id, optional extensions), every response with ORPCTHAT (flags, optional extensions); the
interface's own parameters follow them.
"""

from __future__ import annotations

from ..spec import interfaces as _if
from .ndr import NdrReader, NdrWriter

__all__ = ["read_orpcthis", "read_orpcthat", "write_orpcthis", "write_orpcthat"]


def _read_extensions(r: NdrReader) -> list[dict]:
    """ORPC_EXTENT_ARRAY pointee: size, reserved, unique pointer to an array of unique ORPC_EXTENT*."""
    r.structure = "ORPC_EXTENT_ARRAY"
    r.u32()                                    # size: count of extents; the conformance below rules
    r.u32()
    out = []
    if r.referent():
        n = r.count(4, "ORPC_EXTENT_ARRAY.extent")
        refs = r.u32_array(n)
        for ref in refs:
            if not ref:
                continue
            r.structure = "ORPC_EXTENT"
            start = r.pos
            mx = r.count(1, "ORPC_EXTENT.data")
            ext_id = r.guid()
            size = r.u32()
            if size > mx:
                r.fail(f"size {size} exceeds the data conformance {mx}", start)
            data_at = r.pos
            r.skip(mx)
            out.append({"id": ext_id, "name": _if.clsid_name(ext_id), "size": size, "offset": data_at})
    return out


def read_orpcthis(r: NdrReader) -> dict:
    r.structure = "ORPCTHIS"
    major = r.u16()
    minor = r.u16()
    flags = r.u32()
    r.u32()                                    # reserved1
    cid = r.guid()
    d = {"version": f"{major}.{minor}", "flags": flags, "cid": cid}
    if r.referent():
        d["extensions"] = _read_extensions(r)
    return d


def read_orpcthat(r: NdrReader) -> dict:
    r.structure = "ORPCTHAT"
    d = {"flags": r.u32()}
    if r.referent():
        d["extensions"] = _read_extensions(r)
    return d


def write_orpcthis(w: NdrWriter, cid: str, *, version=(5, 7), flags: int = 0) -> None:
    w.u16(version[0])
    w.u16(version[1])
    w.u32(flags)
    w.u32(0)
    w.guid(cid)
    w.referent(False)


def write_orpcthat(w: NdrWriter, *, flags: int = 0) -> None:
    w.u32(flags)
    w.referent(False)
