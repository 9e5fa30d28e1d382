"""A bounded DER reader (ITU-T X.690), just what Kerberos and SPNEGO tokens need.

Every function takes the buffer, the span [start, end) it may read, and a name for the
structure being read; anything outside X.690 or the span raises a located DecodeError.
Sequences are capped (MAX_SEQ_ITEMS), so a hostile token cannot make a reader loop long.
"""

from __future__ import annotations

from ..formats.errors import DecodeError

__all__ = ["tlv", "expect", "children", "tagged", "der_int", "der_string", "der_octets", "oid_text", "der_oid"]

MAX_SEQ_ITEMS = 64



def tlv(buf, off: int, end: int, what: str) -> tuple[int, int, int]:
    """Read one DER TLV at off (bounded by end) -> (identifier, value_start, value_end).

    The identifier is the first octet; high tag numbers (>= 31, unused by the
    formats here) are folded into a value above 0xFF so they never match.
    """
    if off + 2 > end:
        raise DecodeError(what, off, "truncated DER element")
    ident = buf[off]
    p = off + 1
    if ident & 0x1F == 0x1F:
        num = 0
        for _ in range(4):
            if p >= end:
                raise DecodeError(what, off, "truncated DER tag")
            b = buf[p]
            p += 1
            num = (num << 7) | (b & 0x7F)
            if not b & 0x80:
                break
        else:
            raise DecodeError(what, off, "DER tag number too long")
        ident = 0x10000 | (ident << 8) | (num & 0xFF)
    if p >= end:
        raise DecodeError(what, off, "truncated DER length")
    n = buf[p]
    p += 1
    if n & 0x80:
        k = n & 0x7F
        if k == 0:
            raise DecodeError(what, off, "indefinite length is not DER")
        if k > 4:
            raise DecodeError(what, off, f"DER length of {k} octets")
        if p + k > end:
            raise DecodeError(what, off, "truncated DER length")
        n = int.from_bytes(buf[p:p + k], "big")
        p += k
    if n > end - p:
        raise DecodeError(what, off, f"DER length {n} runs past the enclosing element ({end - p} left)")
    return ident, p, p + n


def expect(buf, off: int, end: int, ident: int, what: str) -> tuple[int, int]:
    got, s, e = tlv(buf, off, end, what)
    if got != ident:
        raise DecodeError(what, off, f"expected DER tag 0x{ident:02x}, found 0x{got:02x}")
    return s, e


def children(buf, start: int, end: int, what: str):
    """The TLVs directly inside [start, end), at most MAX_SEQ_ITEMS of them."""
    off = start
    n = 0
    while off < end:
        n += 1
        if n > MAX_SEQ_ITEMS:
            raise DecodeError(what, off, f"more than {MAX_SEQ_ITEMS} elements")
        ident, s, e = tlv(buf, off, end, what)
        yield ident, s, e
        off = e


def tagged(buf, start: int, end: int, what: str) -> dict[int, tuple[int, int]]:
    """SEQUENCE of explicitly tagged [n] fields -> {n: (inner TLV start, its end)}."""
    out: dict[int, tuple[int, int]] = {}
    for ident, s, e in children(buf, start, end, what):
        if 0xA0 <= ident <= 0xBE:
            out[ident - 0xA0] = (s, e)
    return out


def der_int(buf, start: int, end: int, what: str) -> int:
    s, e = expect(buf, start, end, 0x02, what)
    if e - s > 16 or e == s:
        raise DecodeError(what, start, f"INTEGER of {e - s} octets")
    return int.from_bytes(buf[s:e], "big", signed=True)


def der_string(buf, start: int, end: int, what: str) -> str:
    ident, s, e = tlv(buf, start, end, what)
    if ident not in (0x1B, 0x0C, 0x13, 0x16, 0x1A):   # GeneralString, UTF8, Printable, IA5, Visible
        raise DecodeError(what, start, f"expected a string, found DER tag 0x{ident:02x}")
    return bytes(buf[s:e]).decode("utf-8", "replace")


def der_octets(buf, start: int, end: int, what: str) -> tuple[int, int]:
    return expect(buf, start, end, 0x04, what)


def oid_text(raw: bytes) -> str:
    """X.690 8.19 OBJECT IDENTIFIER content octets -> dotted text."""
    raw = bytes(raw)
    text = _OIDS.get(raw)
    if text is None:
        text = _oid_text(raw)       # raises for octets that are no OID: those are never kept
        if len(_OIDS) >= 256:       # a session names a handful (SPNEGO, Kerberos, NTLM): bounded anyway
            _OIDS.clear()
        _OIDS[raw] = text
    return text


_OIDS: dict[bytes, str] = {}


def _oid_text(raw: bytes) -> str:
    if not raw or len(raw) > 64:
        raise DecodeError("OBJECT IDENTIFIER", 0, f"{len(raw)} content octets")
    arcs: list[int] = []
    v = 0
    for i, b in enumerate(raw):
        v = (v << 7) | (b & 0x7F)
        if not b & 0x80:
            if not arcs:
                first = min(v // 40, 2)
                arcs.extend((first, v - 40 * first))
            else:
                arcs.append(v)
            v = 0
        elif i == len(raw) - 1:
            raise DecodeError("OBJECT IDENTIFIER", i, "last arc unterminated")
    return ".".join(map(str, arcs))


def der_oid(buf, start: int, end: int, what: str) -> str:
    s, e = expect(buf, start, end, 0x06, what)
    return oid_text(bytes(buf[s:e]))
