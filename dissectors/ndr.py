"""A small NDR 2.0 reader and writer (C706 chapter 14, MS-RPCE 2.2.5).

Only what DCOM and WMI stubs need: primitives with their natural alignment,
pointers as referent IDs (unique / full; top-level [ref] pointers are not on the
wire), deferred pointees, conformant / varying / conformant-varying arrays,
[string] wchar_t / char strings, BSTR (MS-OAUT 2.2.23.2 FLAGGED_WORD_BLOB behind a
unique pointer), MInterfacePointer (MS-DCOM 2.2.14) and GUIDs.

Alignment is counted from `base`: the start of the stub for a PDU body, the start
of the NDR data for a type-serialized blob (MS-RPCE 2.2.6) nested in a stub.

Every count read from the wire is checked against the bytes that remain before it
is used, so a hostile 0xFFFFFFFF costs one comparison; every failure is a
`DecodeError(structure, offset, reason)` with the absolute offset in `buf` and the
spec name the caller put in `reader.structure`.

Deferred pointees: NDR writes the pointees of the pointers embedded in a
structure or array after that whole construct, each pointee followed at once by
its own deferred pointees. `defer(refid, fn, *args)` queues a pointee reader and
`flush()` runs the queue in that order (depth-first), for readers and writers
alike. Decoders with a fixed, shallow layout may also read pointees by hand.
"""

from __future__ import annotations

import struct

from ..formats.errors import DecodeError, EncodeError
from ..formats.guid import GUID_NULL, guid_bytes, guid_text

__all__ = [
    "DecodeError", "NdrReader", "NdrWriter", "guid_text", "guid_bytes",
    "GUID_NULL", "MAX_DEFER_DEPTH",
]

MAX_DEFER_DEPTH = 32

_STRUCTS = {
    True: {k: struct.Struct("<" + k) for k in "BbHhIiQqfd"},
    False: {k: struct.Struct(">" + k) for k in "BbHhIiQqfd"},
}
_BLOB_HEADER = struct.Struct("<III")        # FLAGGED_WORD_BLOB conformance, cBytes, clSize


# The typed primitives and arrays of NdrReader / NdrWriter differ only in their struct
# code (C706 14.2: each aligned to its own size), so one factory per kind makes them all.
_IDL_NAMES = {"H": "unsigned short", "h": "short", "I": "unsigned long", "i": "long",
              "Q": "unsigned hyper", "q": "hyper", "f": "float", "d": "double"}

def _reads(code: str, doc: str | None = None):
    """NdrReader method: one primitive of this struct code, aligned to its size.

    The body is written out here, not delegated to a shared helper: these are the
    most frequent calls of stub decoding, and one Python call less each is measurable."""
    size = struct.calcsize(code)
    unpack_le = struct.Struct("<" + code).unpack_from
    unpack_be = struct.Struct(">" + code).unpack_from

    def read(self):
        p = self.pos
        r = (p - self.base) % size
        if r:
            p += size - r
        if p + size > self.end:
            self.fail(f"need {size} bytes, {max(self.end - p, 0)} left")
        self.pos = p + size
        return (unpack_le if self.little else unpack_be)(self.buf, p)[0]
    read.__doc__ = doc or f"An NDR {_IDL_NAMES[code]} ({size} octets, aligned to {size})."
    return read


def _reads_array(code: str):
    """NdrReader method: n primitives of this struct code (the count comes from the caller)."""
    size = struct.calcsize(code)

    def read_array(self, n: int) -> list:
        return self._array(code, size, n)
    read_array.__doc__ = f"n NDR {_IDL_NAMES[code]}s, aligned to {size}."
    return read_array


def _writes(code: str):
    """NdrWriter method: one primitive of this struct code."""
    size = struct.calcsize(code)

    def write(self, v) -> None:
        self._put(code, size, v)
    write.__doc__ = f"An NDR {_IDL_NAMES[code]} ({size} octets, aligned to {size})."
    return write


def _writes_array(code: str):
    """NdrWriter method: the values one after the other (no count: the caller writes it)."""
    size = struct.calcsize(code)

    def write_array(self, values) -> None:
        for v in values:
            self._put(code, size, v)
    write_array.__doc__ = f"NDR {_IDL_NAMES[code]}s one after the other, aligned to {size}."
    return write_array


class _DeferredPointees:
    """The queue of deferred pointees that NdrReader and NdrWriter share (see the module
    docstring). The writer gets the reader's nesting limit too; no DCOM / WMI structure
    comes near it."""

    __slots__ = ()

    def defer(self, refid: int, fn, *args) -> None:
        """Queue the reader (writer) of an embedded pointer's pointee (nothing for NULL)."""
        if refid:
            self._queue.append((fn, args))

    def flush(self) -> None:
        """Run the queued pointees in NDR order, each followed by its own deferred pointees."""
        queue = self._queue
        if not queue:
            return
        self._depth += 1
        if self._depth > MAX_DEFER_DEPTH:
            self.fail(f"pointers nested deeper than {MAX_DEFER_DEPTH}")
        self._queue = []
        for fn, args in queue:
            fn(*args)
            self.flush()
        self._depth -= 1


class NdrReader(_DeferredPointees):
    """Reads NDR from `buf[pos:end]`; `pos` is public so that callers can note offsets."""

    __slots__ = ("buf", "pos", "end", "base", "little", "structure", "_queue", "_depth", "_full")

    def __init__(self, buf: bytes, pos: int = 0, end: int | None = None, *,
                 base: int | None = None, little_endian: bool = True, structure: str = "NDR"):
        if not isinstance(buf, bytes):
            buf = bytes(buf)
        self.buf = buf
        self.end = len(buf) if end is None else min(end, len(buf))
        self.pos = pos
        self.base = pos if base is None else base
        self.little = little_endian
        self.structure = structure
        self._queue: list = []
        self._depth = 0
        self._full: set[int] | None = None     # made at the first full pointer: few stubs have one

    # -- failures and bounds ------------------------------------------------------------

    def fail(self, reason: str, offset: int | None = None):
        raise DecodeError(self.structure, self.pos if offset is None else offset, reason)

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def need(self, n: int) -> None:
        if n < 0 or self.pos + n > self.end:
            self.fail(f"need {n} bytes, {self.end - self.pos} left")

    def align(self, n: int) -> None:
        r = (self.pos - self.base) % n
        if r:
            p = self.pos + n - r
            if p > self.end:
                self.fail(f"alignment to {n} runs past the end")
            self.pos = p

    # -- primitives (each aligned to its size, C706 14.2.2) ----------------------------

    def u8(self) -> int:
        if self.pos >= self.end:
            self.fail("need 1 byte, 0 left")
        self.pos += 1
        return self.buf[self.pos - 1]

    u16 = _reads("H")
    i16 = _reads("h")
    u32 = _reads("I")
    i32 = _reads("i")
    u64 = _reads("Q")
    i64 = _reads("q")
    f32 = _reads("f")
    f64 = _reads("d")

    def guid(self) -> str:
        self.align(4)
        self.need(16)
        p = self.pos
        self.pos = p + 16
        return guid_text(self.buf, p, self.little)

    def raw(self, n: int) -> bytes:
        self.need(n)
        p = self.pos
        self.pos = p + n
        return self.buf[p:p + n]

    def skip(self, n: int) -> None:
        self.need(n)
        self.pos += n

    # -- pointers ---------------------------------------------------------------------

    referent = _reads("I", "A unique or full pointer's referent ID (0 is NULL).")

    def full_referent(self) -> tuple[int, bool]:
        """A full pointer: (referent ID, whether its pointee follows, i.e. first time seen)."""
        ref = self.u32()
        full = self._full
        if full is None:
            full = self._full = set()
        if ref == 0 or ref in full:
            return ref, False
        full.add(ref)
        return ref, True

    # -- arrays -----------------------------------------------------------------------

    def count(self, elem_size: int, what: str = "array") -> int:
        """A conformance (max count) whose elements of `elem_size` bytes must fit in what remains."""
        n = self.u32()
        if n * max(elem_size, 1) > self.end - self.pos:
            self.fail(f"{what} count {n} exceeds the {self.end - self.pos} bytes left", self.pos - 4)
        return n

    def varying(self, max_count: int | None, elem_size: int, what: str = "array") -> tuple[int, int]:
        """(offset, actual count) of a varying array, checked against max_count and the buffer."""
        start = self.pos
        offset = self.u32()
        actual = self.u32()
        if max_count is not None and offset + actual > max_count:
            self.fail(f"{what} offset {offset} + actual count {actual} exceed max count {max_count}", start)
        if actual * max(elem_size, 1) > self.end - self.pos:
            self.fail(f"{what} actual count {actual} exceeds the {self.end - self.pos} bytes left", start + 4)
        return offset, actual

    def _array(self, code: str, size: int, n: int) -> list:
        """n primitives of one struct code, aligned to their size (NDR 14.3.2)."""
        self.align(size)
        self.need(size * n)
        p = self.pos
        self.pos = p + size * n
        return list(struct.unpack_from(("<" if self.little else ">") + "%d%s" % (n, code), self.buf, p))

    u16_array = _reads_array("H")
    u32_array = _reads_array("I")
    i32_array = _reads_array("i")
    u64_array = _reads_array("Q")

    def guid_array(self, n: int) -> list[str]:
        self.align(4)
        self.need(16 * n)
        p = self.pos
        self.pos = p + 16 * n
        buf, le = self.buf, self.little
        return [guid_text(buf, p + 16 * i, le) for i in range(n)]

    def conformant_guids(self, what: str = "GUID array") -> list[str]:
        return self.guid_array(self.count(16, what))

    def conformant_u32s(self, what: str = "array") -> list[int]:
        return self.u32_array(self.count(4, what))

    def conformant_bytes(self, what: str = "byte array") -> bytes:
        return self.raw(self.count(1, what))

    # -- strings ----------------------------------------------------------------------

    def wstring(self) -> str:
        """[string] wchar_t*: conformant varying UTF-16, the terminating NUL dropped."""
        n = self.count(0, "string")
        _, actual = self.varying(n, 2, "string")
        data = self.raw(2 * actual)
        s = data.decode("utf-16-le" if self.little else "utf-16-be", "replace")
        return s[:-1] if s.endswith("\x00") else s

    def cstring(self) -> str:
        """[string] char*: conformant varying 8-bit characters, the terminating NUL dropped."""
        n = self.count(0, "string")
        _, actual = self.varying(n, 1, "string")
        data = self.raw(actual)
        if data.endswith(b"\x00"):
            data = data[:-1]
        return data.decode("latin-1")

    def unique_wstring(self) -> str | None:
        return self.wstring() if self.referent() else None

    def flagged_word_blob(self) -> str | None:
        """FLAGGED_WORD_BLOB (MS-OAUT 2.2.23.1): conformance, cBytes, clSize, clSize wchar.

        Little-endian whatever the stream's data representation; cBytes 0xFFFFFFFF is a
        NULL BSTR; an odd cBytes leaves a last byte that is no character."""
        self.align(4)
        start = self.pos
        self.need(12)
        n, cbytes, cl = _BLOB_HEADER.unpack_from(self.buf, start)
        self.pos = start + 12
        if 2 * n > self.end - self.pos:
            self.fail(f"FLAGGED_WORD_BLOB count {n} exceeds the {self.end - self.pos} bytes left", start)
        if cl > n:
            self.fail(f"clSize {cl} exceeds the conformance {n}", start + 8)
        data = self.raw(2 * cl)
        if cbytes == 0xFFFFFFFF:
            return None
        if cbytes < 2 * cl:
            data = data[:cbytes & ~1]
        return data.decode("utf-16-le", "replace")

    def bstr(self) -> str | None:
        """BSTR on the wire: a unique pointer to a FLAGGED_WORD_BLOB (None for a NULL BSTR,
        by NULL pointer or by cBytes 0xFFFFFFFF)."""
        return self.flagged_word_blob() if self.referent() else None

    # -- MInterfacePointer ------------------------------------------------------------

    def interface_pointer_data(self) -> tuple[int, int]:
        """MInterfacePointer (MS-DCOM 2.2.14) pointee: (offset, length) of abData in `buf`.

        The OBJREF itself is left in place for the caller (dcom.parse_objref)."""
        start = self.pos
        n = self.count(1, "MInterfacePointer")
        cnt = self.u32()
        if cnt != n:
            self.fail(f"ulCntData {cnt} does not match the conformance {n}", start)
        p = self.pos
        self.pos = p + n
        return p, n

    def interface_pointer(self) -> tuple[int, int] | None:
        """A [unique] MInterfacePointer*: None when NULL."""
        return self.interface_pointer_data() if self.referent() else None


class NdrWriter(_DeferredPointees):
    """Builds NDR the way Windows does (referent IDs 0x00020000, +4 each)."""

    __slots__ = ("buf", "little", "_s", "_next_ref", "_queue", "_depth")

    def __init__(self, *, little_endian: bool = True, referent_base: int = 0x00020000):
        self.buf = bytearray()
        self.little = little_endian
        self._s = _STRUCTS[little_endian]
        self._next_ref = referent_base
        self._queue: list = []
        self._depth = 0

    def getvalue(self) -> bytes:
        return bytes(self.buf)

    def fail(self, reason: str):
        raise EncodeError(f"NDR at octet {len(self.buf)}: {reason}")

    def __len__(self) -> int:
        return len(self.buf)

    def align(self, n: int) -> None:
        r = len(self.buf) % n
        if r:
            self.buf += b"\x00" * (n - r)

    def _put(self, code: str, size: int, v) -> None:
        self.align(size)
        self.buf += self._s[code].pack(v)

    def u8(self, v: int) -> None:
        self.buf.append(v & 0xFF)

    u16 = _writes("H")
    i16 = _writes("h")
    u32 = _writes("I")
    i32 = _writes("i")
    u64 = _writes("Q")
    i64 = _writes("q")
    f32 = _writes("f")
    f64 = _writes("d")

    def guid(self, text: str) -> None:
        self.align(4)
        self.buf += guid_bytes(text, self.little)

    def raw(self, data: bytes) -> None:
        self.buf += data

    def referent(self, present: bool = True) -> int:
        if not present:
            self.u32(0)
            return 0
        ref = self._next_ref
        self._next_ref += 4
        self.u32(ref)
        return ref

    # arrays and strings

    def count(self, n: int) -> None:
        self.u32(n)

    u16_array = _writes_array("H")
    u32_array = _writes_array("I")
    u64_array = _writes_array("Q")

    def guid_array(self, values) -> None:
        for v in values:
            self.guid(v)

    def conformant_guids(self, values) -> None:
        self.count(len(values))
        self.guid_array(values)

    def conformant_u32s(self, values) -> None:
        self.count(len(values))
        self.u32_array(values)

    def conformant_bytes(self, data: bytes) -> None:
        self.count(len(data))
        self.raw(data)

    def wstring(self, s: str) -> None:
        data = (s + "\x00").encode("utf-16-le" if self.little else "utf-16-be", "surrogatepass")
        n = len(data) // 2
        self.u32(n)
        self.u32(0)
        self.u32(n)
        self.raw(data)

    def cstring(self, s: str) -> None:
        data = s.encode("latin-1") + b"\x00"
        self.u32(len(data))
        self.u32(0)
        self.u32(len(data))
        self.raw(data)

    def unique_wstring(self, s: str | None) -> None:
        if self.referent(s is not None):
            self.wstring(s)

    def flagged_word_blob(self, s: str | None) -> None:
        """Always little-endian (MS-OAUT 2.2.23.1); None writes the NULL-BSTR form."""
        data = b"" if s is None else s.encode("utf-16-le", "surrogatepass")
        n = len(data) // 2
        self.align(4)
        self.buf += _BLOB_HEADER.pack(n, 0xFFFFFFFF if s is None else len(data), n) + data

    def bstr(self, s: str | None) -> None:
        if self.referent(s is not None):
            self.flagged_word_blob(s)

    def interface_pointer_data(self, objref: bytes) -> None:
        self.u32(len(objref))
        self.u32(len(objref))
        self.raw(objref)

    def interface_pointer(self, objref: bytes | None) -> None:
        if self.referent(objref is not None):
            self.interface_pointer_data(objref)
