"""ASN.1 DER for the tokens the sealers send: Kerberos messages (RFC 4120 section 5) and
SPNEGO negotiation tokens (RFC 4178 section 4.2).

Only what those tokens use: definite lengths, context tags, INTEGER, OCTET STRING,
GeneralString, GeneralizedTime, OBJECT IDENTIFIER. The DER decoders live in
wmiscope.dissectors; these write, they never read.
"""

from __future__ import annotations

from ..dissectors.auth import OID_SPNEGO


def der(tag: int, *parts: bytes) -> bytes:
    """One TLV; the length in short form below 128 octets, long form above (X.690 8.1.3)."""
    body = b"".join(parts)
    n = len(body)
    if n < 0x80:
        length = bytes((n,))
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes((0x80 | len(raw),)) + raw
    return bytes((tag,)) + length + body


def integer(v: int) -> bytes:
    # one octet more than the bits need, so that a set top bit does not read as negative
    return der(0x02, v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big", signed=True))


def octets(value: bytes) -> bytes:
    return der(0x04, value)


def ctx(n: int, inner: bytes) -> bytes:
    """[n] EXPLICIT, the tagging of every Kerberos and SPNEGO field."""
    return der(0xA0 + n, inner)


def seq(*parts: bytes) -> bytes:
    return der(0x30, *parts)


def general_string(text: str) -> bytes:
    return der(0x1B, text.encode())


def generalized_time(text: str) -> bytes:
    return der(0x18, text.encode())


def oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray((40 * arcs[0] + arcs[1],))
    for a in arcs[2:]:
        chunk = [a & 0x7F]
        a >>= 7
        while a:
            chunk.append(0x80 | (a & 0x7F))
            a >>= 7
        body += bytes(reversed(chunk))
    return der(0x06, bytes(body))


# ---- Kerberos types (RFC 4120 5.2)

def principal_name(name_type: int, *names: str) -> bytes:
    return seq(ctx(0, integer(name_type)), ctx(1, seq(*(general_string(n) for n in names))))


def encrypted_data(etype: int, cipher: bytes, kvno: int | None = None) -> bytes:
    return seq(ctx(0, integer(etype)), *([ctx(1, integer(kvno))] if kvno is not None else []),
               ctx(2, octets(cipher)))


def encryption_key(key) -> bytes:
    return seq(ctx(0, integer(key.etype)), ctx(1, octets(key.value)))


# ---- SPNEGO (RFC 4178 4.2)

def spnego_init(mechs: list[str], token: bytes) -> bytes:
    """NegTokenInit in its GSS InitialContextToken framing (RFC 2743 3.1)."""
    return der(0x60, oid(OID_SPNEGO), ctx(0, seq(ctx(0, seq(*(oid(m) for m in mechs))), ctx(2, octets(token)))))


def spnego_resp(state: int | None, mech: str | None, token: bytes | None) -> bytes:
    """NegTokenResp; negState, supportedMech and responseToken each only when given."""
    parts = []
    if state is not None:
        parts.append(ctx(0, der(0x0A, bytes((state,)))))
    if mech is not None:
        parts.append(ctx(1, oid(mech)))
    if token is not None:
        parts.append(ctx(2, octets(token)))
    return der(0xA1, seq(*parts))
