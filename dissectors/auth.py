"""Authentication tokens carried in DCE/RPC auth verifiers, and per-connection security contexts.

What the verifier of a bind / alter_context / auth3 (and of their replies) carries
depends on the auth_type of the sec_trailer (MS-RPCE 2.2.1.1.7):

- 10 (RPC_C_AUTHN_WINNT): NTLMSSP messages, MS-NLMP 2.2.1 (NEGOTIATE, CHALLENGE,
  AUTHENTICATE); in requests/responses an NTLMSSP_MESSAGE_SIGNATURE (MS-NLMP 2.2.2.9).
- 9 (RPC_C_AUTHN_GSS_NEGOTIATE): SPNEGO (RFC 4178, MS-SPNG) wrapping NTLMSSP or
  Kerberos; per-message tokens are those of the negotiated mechanism.
- 16 (RPC_C_AUTHN_GSS_KERBEROS): Kerberos (RFC 4120) in a GSS-API framing (RFC 1964
  section 1.1), per-message tokens of RFC 4121 section 4.2.6 or RFC 4757 section 7.
- 0x44 (RPC_C_AUTHN_NETLOGON): NL_AUTH_MESSAGE / NL_AUTH_SIGNATURE (MS-NRPC 2.2.1.3).

Every parser here is bounded by the buffer it is handed (no recursion beyond the
fixed nesting of the formats, a small DER reader of our own) and raises only
`DecodeError`.

Security contexts: `AuthContexts` holds, for one TCP connection, an `AuthContext`
per auth_context_id (MS-RPCE 3.3.1.5.4 lets several share a connection). Each keeps
the handshake tokens it saw and the principal they reveal. `AuthContext.unseal` is
the hook for decrypting packet-privacy stubs, `AuthContext.verify` the one for
checking the signatures of packet-integrity PDUs: both hand the PDU to the
`key_provider` given to `AuthContexts` (dissectors.credentials.ConnectionKeys,
which holds the analyst's secrets), and return None when there is none.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from ..formats.errors import DecodeError

# --------------------------------------------------------------------------
# constants

AUTH_TYPE_NAMES = {
    0: "none", 9: "SPNEGO", 10: "NTLMSSP", 14: "SChannel", 16: "Kerberos",
    0x44: "Netlogon", 0xFF: "default",
}
AUTH_LEVEL_NAMES = {
    0: "default", 1: "none", 2: "connect", 3: "call", 4: "packet",
    5: "packet integrity", 6: "packet privacy",
}

OID_SPNEGO = "1.3.6.1.5.5.2"
OID_KRB5 = "1.2.840.113554.1.2.2"
OID_MS_KRB5 = "1.2.840.48018.1.2.2"
OID_KRB5_U2U = "1.2.840.113554.1.2.2.3"
OID_NTLMSSP = "1.3.6.1.4.1.311.2.2.10"
OID_NEGOEX = "1.3.6.1.4.1.311.2.2.30"
OID_NAMES = {
    OID_SPNEGO: "SPNEGO", OID_KRB5: "Kerberos 5", OID_MS_KRB5: "MS Kerberos 5",
    OID_KRB5_U2U: "Kerberos 5 user-to-user", OID_NTLMSSP: "NTLMSSP", OID_NEGOEX: "NEGOEX",
}
KERBEROS_OIDS = frozenset((OID_KRB5, OID_MS_KRB5, OID_KRB5_U2U))
# OID_KRB5 as a DER TLV (X.690 8.19): what follows the 0x60 framing of RFC 1964 1.1 tokens
_KRB5_OID_DER = bytes.fromhex("06092a864886f712010202")

# RFC 3961 / RFC 4757 / RFC 8009 encryption types
ETYPE_NAMES = {
    1: "des-cbc-crc", 3: "des-cbc-md5", 17: "aes128-cts-hmac-sha1-96",
    18: "aes256-cts-hmac-sha1-96", 19: "aes128-cts-hmac-sha256-128",
    20: "aes256-cts-hmac-sha384-192", 23: "rc4-hmac", 24: "rc4-hmac-exp",
}

# MS-NLMP 2.2.2.5 NEGOTIATE flags
NTLMSSP_NEGOTIATE_UNICODE = 0x00000001
NTLMSSP_NEGOTIATE_OEM = 0x00000002
NTLMSSP_REQUEST_TARGET = 0x00000004
NTLMSSP_NEGOTIATE_SIGN = 0x00000010
NTLMSSP_NEGOTIATE_SEAL = 0x00000020
NTLMSSP_NEGOTIATE_DATAGRAM = 0x00000040
NTLMSSP_NEGOTIATE_LM_KEY = 0x00000080
NTLMSSP_NEGOTIATE_EXTENDED_SESSIONSECURITY = 0x00080000
NTLMSSP_REQUEST_NON_NT_SESSION_KEY = 0x00400000
NTLMSSP_NEGOTIATE_TARGET_INFO = 0x00800000
NTLMSSP_NEGOTIATE_VERSION = 0x02000000
NTLMSSP_NEGOTIATE_128 = 0x20000000
NTLMSSP_NEGOTIATE_KEY_EXCH = 0x40000000
NTLMSSP_NEGOTIATE_56 = 0x80000000
NTLMSSP_FLAG_NAMES = {
    0x00000001: "UNICODE", 0x00000002: "OEM", 0x00000004: "REQUEST_TARGET",
    0x00000010: "SIGN", 0x00000020: "SEAL", 0x00000040: "DATAGRAM", 0x00000080: "LM_KEY",
    0x00000200: "NTLM", 0x00000800: "ANONYMOUS", 0x00001000: "OEM_DOMAIN_SUPPLIED",
    0x00002000: "OEM_WORKSTATION_SUPPLIED", 0x00008000: "ALWAYS_SIGN",
    0x00010000: "TARGET_TYPE_DOMAIN", 0x00020000: "TARGET_TYPE_SERVER",
    0x00080000: "EXTENDED_SESSIONSECURITY", 0x00100000: "IDENTIFY",
    0x00400000: "REQUEST_NON_NT_SESSION_KEY", 0x00800000: "TARGET_INFO",
    0x02000000: "VERSION", 0x20000000: "128", 0x40000000: "KEY_EXCH", 0x80000000: "56",
}

# MS-NLMP 2.2.2.1 AV_PAIR AvId
AV_NAMES = {
    0: "MsvAvEOL", 1: "MsvAvNbComputerName", 2: "MsvAvNbDomainName",
    3: "MsvAvDnsComputerName", 4: "MsvAvDnsDomainName", 5: "MsvAvDnsTreeName",
    6: "MsvAvFlags", 7: "MsvAvTimestamp", 8: "MsvAvSingleHost", 9: "MsvAvTargetName",
    10: "MsvAvChannelBindings",
}
_AV_TEXT = frozenset((1, 2, 3, 4, 5, 9))

NEG_STATE_NAMES = {0: "accept-completed", 1: "accept-incomplete", 2: "reject", 3: "request-mic"}

NTLMSSP_SIGNATURE = b"NTLMSSP\x00"
# AUTHENTICATE_MESSAGE (MS-NLMP 2.2.1.3): the MIC follows the 8-octet Version at 64
MIC_OFFSET = 72
MIC_LEN = 16
_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=timezone.utc)
_MAX_AV_PAIRS = 64
_MAX_SEQ_ITEMS = 64

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_SECBUF = struct.Struct("<HHI")          # MS-NLMP 2.2.1.1 *Fields: Len, MaxLen, BufferOffset
_VERSION = struct.Struct("<BBH3xB")       # MS-NLMP 2.2.2.10 VERSION
_AV = struct.Struct("<HH")


def filetime_text(value: int) -> str | None:
    """A FILETIME (100 ns since 1601, MS-DTYP 2.3.3) as ISO-8601 UTC text."""
    if not value:
        return None
    try:
        return (_FILETIME_EPOCH + timedelta(microseconds=value // 10)).isoformat().replace("+00:00", "Z")
    except OverflowError:
        return None


# --------------------------------------------------------------------------
# a bounded DER reader (X.690), just what Kerberos and SPNEGO need


def _tlv(buf, off: int, end: int, what: str) -> tuple[int, int, int]:
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


def _expect(buf, off: int, end: int, ident: int, what: str) -> tuple[int, int]:
    got, s, e = _tlv(buf, off, end, what)
    if got != ident:
        raise DecodeError(what, off, f"expected DER tag 0x{ident:02x}, found 0x{got:02x}")
    return s, e


def _children(buf, start: int, end: int, what: str):
    """The TLVs directly inside [start, end), at most _MAX_SEQ_ITEMS of them."""
    off = start
    n = 0
    while off < end:
        n += 1
        if n > _MAX_SEQ_ITEMS:
            raise DecodeError(what, off, f"more than {_MAX_SEQ_ITEMS} elements")
        ident, s, e = _tlv(buf, off, end, what)
        yield ident, s, e
        off = e


def _tagged(buf, start: int, end: int, what: str) -> dict[int, tuple[int, int]]:
    """SEQUENCE of explicitly tagged [n] fields -> {n: (inner TLV start, its end)}."""
    out: dict[int, tuple[int, int]] = {}
    for ident, s, e in _children(buf, start, end, what):
        if 0xA0 <= ident <= 0xBE:
            out[ident - 0xA0] = (s, e)
    return out


def _der_int(buf, start: int, end: int, what: str) -> int:
    s, e = _expect(buf, start, end, 0x02, what)
    if e - s > 16 or e == s:
        raise DecodeError(what, start, f"INTEGER of {e - s} octets")
    return int.from_bytes(buf[s:e], "big", signed=True)


def _der_string(buf, start: int, end: int, what: str) -> str:
    ident, s, e = _tlv(buf, start, end, what)
    if ident not in (0x1B, 0x0C, 0x13, 0x16, 0x1A):   # GeneralString, UTF8, Printable, IA5, Visible
        raise DecodeError(what, start, f"expected a string, found DER tag 0x{ident:02x}")
    return bytes(buf[s:e]).decode("utf-8", "replace")


def _der_octets(buf, start: int, end: int, what: str) -> tuple[int, int]:
    return _expect(buf, start, end, 0x04, what)


def oid_text(raw: bytes) -> str:
    """X.690 8.19 OBJECT IDENTIFIER content octets -> dotted text."""
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


def _der_oid(buf, start: int, end: int, what: str) -> str:
    s, e = _expect(buf, start, end, 0x06, what)
    return oid_text(bytes(buf[s:e]))


# --------------------------------------------------------------------------
# NTLMSSP (MS-NLMP 2.2)


@dataclass(slots=True)
class NtlmVersion:
    """MS-NLMP 2.2.2.10 VERSION."""
    major: int
    minor: int
    build: int
    ntlm_revision: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.build} (NTLM revision {self.ntlm_revision})"


@dataclass(slots=True)
class NtlmNegotiate:
    """MS-NLMP 2.2.1.1 NEGOTIATE_MESSAGE."""
    flags: int
    domain: str | None = None
    workstation: str | None = None
    version: NtlmVersion | None = None
    raw: bytes = field(default=b"", repr=False, compare=False)   # the message as sent (for the MIC)
    kind = "NTLMSSP_NEGOTIATE"


@dataclass(slots=True)
class NtlmChallenge:
    """MS-NLMP 2.2.1.2 CHALLENGE_MESSAGE."""
    flags: int
    server_challenge: bytes
    target_name: str | None = None
    target_info: dict[str, object] = field(default_factory=dict)   # AvId name -> value
    timestamp: str | None = None                                  # MsvAvTimestamp
    version: NtlmVersion | None = None
    raw: bytes = field(default=b"", repr=False, compare=False)
    kind = "NTLMSSP_CHALLENGE"


@dataclass(slots=True)
class NtlmAuthenticate:
    """MS-NLMP 2.2.1.3 AUTHENTICATE_MESSAGE."""
    flags: int
    lm_response_len: int
    nt_response_len: int
    ntlm_version: int                 # 1 (24-octet NT response) or 2 (NTLMv2_RESPONSE)
    domain: str
    user: str
    workstation: str
    encrypted_session_key: bytes
    version: NtlmVersion | None = None
    mic: bytes | None = None
    nt_response: bytes = b""          # kept for a later unsealing (NTProofStr, blob)
    lm_response: bytes = b""
    client_challenge: bytes | None = None          # NTLMv2_CLIENT_CHALLENGE.ChallengeFromClient
    client_timestamp: str | None = None
    client_target_info: dict[str, object] = field(default_factory=dict)
    raw: bytes = field(default=b"", repr=False, compare=False)
    kind = "NTLMSSP_AUTH"

    @property
    def principal(self) -> str:
        if not self.user and not self.domain:
            return "(anonymous)"
        return f"{self.domain}\\{self.user}" if self.domain else self.user


@dataclass(slots=True)
class NtlmSignature:
    """MS-NLMP 2.2.2.9 NTLMSSP_MESSAGE_SIGNATURE (per-message verifier)."""
    version: int
    checksum: bytes
    seq_num: int
    kind = "NTLMSSP_SIGNATURE"


def _secbuf(data, off: int, fields_at: int, what: str) -> tuple[int, int] | None:
    """Resolve a *Fields (Len, MaxLen, BufferOffset) to a span of data, or None if empty."""
    length, _maxlen, boff = _SECBUF.unpack_from(data, off + fields_at)
    if length == 0:
        return None
    if boff + length > len(data) - off:
        raise DecodeError(what, off + fields_at,
                          f"buffer [{boff}, +{length}) past the end of the {len(data) - off}-octet message")
    return off + boff, off + boff + length


def _ntlm_text(data, span, unicode: bool) -> str:
    if span is None:
        return ""
    raw = bytes(data[span[0]:span[1]])
    return raw.decode("utf-16-le", "replace") if unicode else raw.decode("cp437", "replace")


def _ntlm_version(data, off: int, flags: int, payload_start: int) -> NtlmVersion | None:
    # Version is present when negotiated and the payload does not begin inside it
    if not flags & NTLMSSP_NEGOTIATE_VERSION or payload_start < off + 8 or off + 8 > len(data):
        return None
    major, minor, build, rev = _VERSION.unpack_from(data, off)
    return NtlmVersion(major, minor, build, rev)


def parse_av_pairs(data, start: int, end: int, what: str = "AV_PAIR") -> dict[str, object]:
    """MS-NLMP 2.2.2.1 AV_PAIR list -> {AvId name: value}; names decoded from UTF-16."""
    out: dict[str, object] = {}
    off = start
    for _ in range(_MAX_AV_PAIRS):
        if off + 4 > end:
            raise DecodeError(what, off, "AV_PAIR list without MsvAvEOL")
        av_id, av_len = _AV.unpack_from(data, off)
        off += 4
        if off + av_len > end:
            raise DecodeError(what, off - 4, f"AvLen {av_len} runs past the list")
        value = bytes(data[off:off + av_len])
        off += av_len
        if av_id == 0:
            return out
        name = AV_NAMES.get(av_id, f"AvId{av_id}")
        if av_id in _AV_TEXT:
            out[name] = value.decode("utf-16-le", "replace")
        elif av_id == 6 and av_len == 4:
            out[name] = _U32.unpack(value)[0]
        elif av_id == 7 and av_len == 8:
            out[name] = filetime_text(_U64.unpack(value)[0])
        else:
            out[name] = value
    raise DecodeError(what, off, f"more than {_MAX_AV_PAIRS} AV_PAIRs")


def parse_ntlmssp(data: bytes | memoryview, offset: int = 0):
    """One NTLMSSP message (MS-NLMP 2.2.1) or message signature (2.2.2.9) at offset."""
    try:
        return _parse_ntlmssp(data, offset)
    except (struct.error, IndexError, ValueError) as exc:
        if isinstance(exc, DecodeError):
            raise
        raise DecodeError("NTLMSSP", offset, str(exc)) from None


def _parse_ntlmssp(data, off: int):
    n = len(data) - off
    if n == 16 and _U32.unpack_from(data, off)[0] == 1:
        # NTLMSSP_MESSAGE_SIGNATURE: Version 1, then Checksum (or RandomPad + Checksum), SeqNum
        return NtlmSignature(1, bytes(data[off + 4:off + 12]), _U32.unpack_from(data, off + 12)[0])
    if n < 12 or bytes(data[off:off + 8]) != NTLMSSP_SIGNATURE:
        raise DecodeError("NTLMSSP", off, "no NTLMSSP signature")
    (mtype,) = _U32.unpack_from(data, off + 8)
    if mtype == 1:
        what = "NEGOTIATE_MESSAGE"
        if n < 16:
            raise DecodeError(what, off, f"{n} octets, 16 at least")
        (flags,) = _U32.unpack_from(data, off + 12)
        dom = ws = None
        first = off + n
        if n >= 32:
            # in NEGOTIATE the names are always OEM (MS-NLMP 2.2.1.1)
            d = _secbuf(data, off, 16, what)
            w = _secbuf(data, off, 24, what)
            dom = _ntlm_text(data, d, False) if d else None
            ws = _ntlm_text(data, w, False) if w else None
            first = min([s[0] for s in (d, w) if s] or [off + n])
        return NtlmNegotiate(flags, dom, ws, _ntlm_version(data, off + 32, flags, first), bytes(data[off:]))
    if mtype == 2:
        what = "CHALLENGE_MESSAGE"
        if n < 48:
            raise DecodeError(what, off, f"{n} octets, 48 at least")
        (flags,) = _U32.unpack_from(data, off + 20)
        unicode = bool(flags & NTLMSSP_NEGOTIATE_UNICODE)
        t = _secbuf(data, off, 12, what)
        i = _secbuf(data, off, 40, what)
        info = parse_av_pairs(data, i[0], i[1], what + ".TargetInfo") if i else {}
        first = min([s[0] for s in (t, i) if s] or [off + n])
        return NtlmChallenge(
            flags, bytes(data[off + 24:off + 32]), _ntlm_text(data, t, unicode) if t else None,
            info, info.get("MsvAvTimestamp"), _ntlm_version(data, off + 48, flags, first), bytes(data[off:]))
    if mtype == 3:
        what = "AUTHENTICATE_MESSAGE"
        if n < 64:
            raise DecodeError(what, off, f"{n} octets, 64 at least")
        (flags,) = _U32.unpack_from(data, off + 60)
        unicode = bool(flags & NTLMSSP_NEGOTIATE_UNICODE)
        spans = [_secbuf(data, off, at, what) for at in (12, 20, 28, 36, 44, 52)]
        lm, nt, dom, user, ws, key = spans
        first = min([s[0] for s in spans if s] or [off + n])
        nt_bytes = bytes(data[nt[0]:nt[1]]) if nt else b""
        lm_bytes = bytes(data[lm[0]:lm[1]]) if lm else b""
        mic_end = MIC_OFFSET + MIC_LEN
        msg = NtlmAuthenticate(
            flags, len(lm_bytes), len(nt_bytes),
            2 if len(nt_bytes) > 24 else 1,
            _ntlm_text(data, dom, unicode), _ntlm_text(data, user, unicode),
            _ntlm_text(data, ws, unicode), bytes(data[key[0]:key[1]]) if key else b"",
            _ntlm_version(data, off + 64, flags, first),
            # the MIC sits between Version and the payload when the payload leaves room for it
            bytes(data[off + MIC_OFFSET:off + mic_end]) if first >= off + mic_end and n >= mic_end else None,
            nt_bytes, lm_bytes, raw=bytes(data[off:]))
        if msg.ntlm_version == 2 and len(nt_bytes) >= 44:
            # NTLMv2_RESPONSE: NTProofStr(16) + NTLMv2_CLIENT_CHALLENGE (MS-NLMP 2.2.2.7)
            msg.client_timestamp = filetime_text(_U64.unpack_from(nt_bytes, 24)[0])
            msg.client_challenge = nt_bytes[32:40]
            try:
                msg.client_target_info = parse_av_pairs(nt_bytes, 44, len(nt_bytes), what + ".NTLMv2_CLIENT_CHALLENGE")
            except DecodeError:
                msg.client_target_info = {}
        return msg
    raise DecodeError("NTLMSSP", off + 8, f"unknown MessageType {mtype}")


# --------------------------------------------------------------------------
# Kerberos (RFC 4120 5.5), GSS-API framing (RFC 2743 3.1, RFC 1964 1.1)


@dataclass(slots=True)
class KerberosApReq:
    """RFC 4120 5.5.1 KRB_AP_REQ: what is visible without the service key."""
    ap_options: int
    realm: str                       # Ticket.realm (the service's realm)
    sname: list[str]                 # Ticket.sname name-string
    sname_type: int
    ticket_etype: int
    ticket_kvno: int | None
    authenticator_etype: int
    ticket_cipher: bytes = b""         # Ticket.enc-part.cipher (EncTicketPart under the service key)
    authenticator_cipher: bytes = b""  # authenticator.cipher (under the ticket's session key)
    kind = "KRB_AP_REQ"

    @property
    def service(self) -> str:
        return "/".join(self.sname)

    @property
    def principal(self) -> str:
        return f"{self.service}@{self.realm}"


@dataclass(slots=True)
class KerberosApRep:
    """RFC 4120 5.5.2 KRB_AP_REP."""
    etype: int
    kvno: int | None = None
    cipher: bytes = b""                # enc-part.cipher (EncAPRepPart under the session key)
    kind = "KRB_AP_REP"


@dataclass(slots=True)
class KerberosError:
    """RFC 4120 5.9.1 KRB_ERROR."""
    error_code: int
    realm: str | None = None
    sname: list[str] = field(default_factory=list)
    crealm: str | None = None
    cname: list[str] = field(default_factory=list)
    e_text: str | None = None
    kind = "KRB_ERROR"


@dataclass(slots=True)
class KerberosMic:
    """RFC 4121 4.2.6.1 MIC token (TOK_ID 0x0404)."""
    flags: int                       # 1 SentByAcceptor, 2 Sealed, 4 AcceptorSubkey
    snd_seq: int
    checksum: bytes
    kind = "RFC4121_MIC"


@dataclass(slots=True)
class KerberosWrap:
    """RFC 4121 4.2.6.2 Wrap token (TOK_ID 0x0504); in DCE/RPC only the header travels in the verifier."""
    flags: int
    ec: int
    rrc: int
    snd_seq: int
    kind = "RFC4121_WRAP"

    @property
    def sealed(self) -> bool:
        return bool(self.flags & 2)


@dataclass(slots=True)
class KerberosLegacyToken:
    """RFC 1964 1.2 / RFC 4757 7 MIC (TOK_ID 0x0101) or Wrap (0x0201) token."""
    tok_id: int
    sgn_alg: int                     # 0x0011 HMAC-MD5 (RC4, RFC 4757), 0x0000/0x0002 DES
    seal_alg: int                    # 0x0010 RC4, 0x0000 DES, 0xFFFF none
    snd_seq: bytes                   # encrypted in these token formats
    checksum: bytes
    kind = "RFC4757_TOKEN"

    @property
    def wrap(self) -> bool:
        return self.tok_id == 0x0201


@dataclass(slots=True)
class SpnegoInit:
    """RFC 4178 4.2.1 NegTokenInit (and MS-SPNG 2.2.1 NegTokenInit2)."""
    mech_types: list[str]
    req_flags: int | None = None
    mech_token: object | None = None          # parsed inner token, or raw bytes if unknown
    mech_list_mic: bytes | None = None
    neg_hints: str | None = None              # NegTokenInit2 hintName
    kind = "SPNEGO_negTokenInit"


@dataclass(slots=True)
class SpnegoResp:
    """RFC 4178 4.2.2 NegTokenResp."""
    neg_state: int | None = None
    supported_mech: str | None = None
    response_token: object | None = None
    mech_list_mic: bytes | None = None
    kind = "SPNEGO_negTokenResp"


@dataclass(slots=True)
class NetlogonAuthMessage:
    """MS-NRPC 2.2.1.3.1 NL_AUTH_MESSAGE."""
    message_type: int                          # 0 request, 1 response
    flags: int
    names: dict[str, str] = field(default_factory=dict)
    kind = "NL_AUTH_MESSAGE"

    @property
    def principal(self) -> str | None:
        host = self.names.get("NetbiosComputerName") or self.names.get("NetbiosUtf8ComputerName") \
            or self.names.get("DnsHostName")
        dom = self.names.get("NetbiosDomainName") or self.names.get("DnsDomainName")
        if not host:
            return None
        return f"{dom}\\{host}$" if dom else f"{host}$"


@dataclass(slots=True)
class NetlogonSignature:
    """MS-NRPC 2.2.1.3.2/3 NL_AUTH_SIGNATURE / NL_AUTH_SHA2_SIGNATURE."""
    signature_algorithm: int                   # 0x0077 HMAC-MD5, 0x0013 HMAC-SHA256
    seal_algorithm: int                        # 0x007A RC4, 0x001A AES-128, 0xFFFF none
    kind = "NL_AUTH_SIGNATURE"


def _krb_encrypted_data(buf, s: int, e: int, what: str) -> tuple[int, int | None]:
    """RFC 4120 5.2.9 EncryptedData -> (etype, kvno)."""
    s, e = _expect(buf, s, e, 0x30, what)
    f = _tagged(buf, s, e, what)
    if 0 not in f:
        raise DecodeError(what, s, "EncryptedData without etype")
    etype = _der_int(buf, *f[0], what + ".etype")
    kvno = _der_int(buf, *f[1], what + ".kvno") if 1 in f else None
    return etype, kvno


def _krb_cipher(buf, s: int, e: int, what: str) -> bytes:
    """RFC 4120 5.2.9 EncryptedData.cipher, kept for decryption with the user's keys."""
    s, e = _expect(buf, s, e, 0x30, what)
    f = _tagged(buf, s, e, what)
    return bytes(buf[slice(*_der_octets(buf, *f[2], what + ".cipher"))]) if 2 in f else b""


def _krb_principal(buf, s: int, e: int, what: str) -> tuple[int, list[str]]:
    """RFC 4120 5.2.2 PrincipalName -> (name-type, name-string)."""
    s, e = _expect(buf, s, e, 0x30, what)
    f = _tagged(buf, s, e, what)
    if 1 not in f:
        raise DecodeError(what, s, "PrincipalName without name-string")
    ntype = _der_int(buf, *f[0], what + ".name-type") if 0 in f else 0
    ss, se = _expect(buf, *f[1], 0x30, what + ".name-string")
    names = [bytes(buf[cs:ce]).decode("utf-8", "replace")
             for _i, cs, ce in _children(buf, ss, se, what + ".name-string")]
    return ntype, names


def _krb_ap_req(buf, s: int, e: int) -> KerberosApReq:
    what = "KRB_AP_REQ"
    s, e = _expect(buf, s, e, 0x30, what)
    f = _tagged(buf, s, e, what)
    if 3 not in f or 4 not in f:
        raise DecodeError(what, s, "AP-REQ without ticket or authenticator")
    opts = 0
    if 2 in f:
        bs, be = _expect(buf, *f[2], 0x03, what + ".ap-options")
        if be - bs >= 2:
            opts = int.from_bytes(buf[bs + 1:min(be, bs + 5)], "big")
    ts, te = _expect(buf, *f[3], 0x61, "Ticket")
    ts, te = _expect(buf, ts, te, 0x30, "Ticket")
    tf = _tagged(buf, ts, te, "Ticket")
    if 1 not in tf or 2 not in tf or 3 not in tf:
        raise DecodeError("Ticket", ts, "Ticket without realm, sname or enc-part")
    realm = _der_string(buf, *tf[1], "Ticket.realm")
    stype, sname = _krb_principal(buf, *tf[2], "Ticket.sname")
    tkt_etype, kvno = _krb_encrypted_data(buf, *tf[3], "Ticket.enc-part")
    auth_etype, _ = _krb_encrypted_data(buf, *f[4], what + ".authenticator")
    return KerberosApReq(opts, realm, sname, stype, tkt_etype, kvno, auth_etype,
                         _krb_cipher(buf, *tf[3], "Ticket.enc-part"), _krb_cipher(buf, *f[4], what + ".authenticator"))


def _krb_ap_rep(buf, s: int, e: int) -> KerberosApRep:
    what = "KRB_AP_REP"
    s, e = _expect(buf, s, e, 0x30, what)
    f = _tagged(buf, s, e, what)
    if 2 not in f:
        raise DecodeError(what, s, "AP-REP without enc-part")
    return KerberosApRep(*_krb_encrypted_data(buf, *f[2], what + ".enc-part"), _krb_cipher(buf, *f[2], what + ".enc-part"))


def _krb_error(buf, s: int, e: int) -> KerberosError:
    what = "KRB_ERROR"
    s, e = _expect(buf, s, e, 0x30, what)
    f = _tagged(buf, s, e, what)
    if 6 not in f:
        raise DecodeError(what, s, "KRB-ERROR without error-code")
    err = KerberosError(_der_int(buf, *f[6], what + ".error-code"))
    if 9 in f:
        err.realm = _der_string(buf, *f[9], what + ".realm")
    if 10 in f:
        err.sname = _krb_principal(buf, *f[10], what + ".sname")[1]
    if 7 in f:
        err.crealm = _der_string(buf, *f[7], what + ".crealm")
    if 8 in f:
        err.cname = _krb_principal(buf, *f[8], what + ".cname")[1]
    if 11 in f:
        err.e_text = _der_string(buf, *f[11], what + ".e-text")
    return err


_KRB_APPLICATION = {0x6E: _krb_ap_req, 0x6F: _krb_ap_rep, 0x7E: _krb_error}
_KRB_TOK_IDS = {0x0100: 0x6E, 0x0200: 0x6F, 0x0300: 0x7E}


def _krb_message(buf, off: int, end: int, expect: int | None = None):
    ident, s, e = _tlv(buf, off, end, "Kerberos message")
    fn = _KRB_APPLICATION.get(ident)
    if expect is not None and ident != expect:
        raise DecodeError("Kerberos message", off, f"TOK_ID announces tag 0x{expect:02x}, found 0x{ident:02x}")
    if fn is None:
        raise DecodeError("Kerberos message", off, f"APPLICATION tag 0x{ident:02x} is not AP-REQ/AP-REP/KRB-ERROR")
    return fn(buf, s, e)


def _per_message_krb(buf, off: int, end: int):
    """RFC 4121 4.2.6 tokens (no GSS framing)."""
    n = end - off
    tok = (buf[off] << 8) | buf[off + 1]
    if tok == 0x0404:
        if n < 16:
            raise DecodeError("RFC4121 MIC token", off, f"{n} octets, 16 at least")
        return KerberosMic(buf[off + 2], int.from_bytes(buf[off + 8:off + 16], "big"), bytes(buf[off + 16:end]))
    if n < 16:
        raise DecodeError("RFC4121 Wrap token", off, f"{n} octets, 16 at least")
    return KerberosWrap(buf[off + 2], int.from_bytes(buf[off + 4:off + 6], "big"),
                        int.from_bytes(buf[off + 6:off + 8], "big"), int.from_bytes(buf[off + 8:off + 16], "big"))


def _gss_framed(buf, off: int, end: int, depth: int):
    """RFC 2743 3.1 InitialContextToken: [APPLICATION 0] { thisMech OID, innerContextToken }."""
    what = "GSS-API InitialContextToken"
    ident, s, e = _tlv(buf, off, end, what)
    if ident != 0x60:
        raise DecodeError(what, off, f"expected 0x60, found 0x{ident:02x}")
    oid_ident, os_, oe = _tlv(buf, s, e, what + ".thisMech")
    if oid_ident != 0x06:
        raise DecodeError(what, s, "thisMech is not an OBJECT IDENTIFIER")
    mech = oid_text(bytes(buf[os_:oe]))
    if mech == OID_SPNEGO:
        return _spnego_body(buf, oe, e, depth)
    if mech in KERBEROS_OIDS:
        if oe + 2 > e:
            raise DecodeError(what, oe, "no TOK_ID")
        tok = (buf[oe] << 8) | buf[oe + 1]
        if tok in _KRB_TOK_IDS:
            return _krb_message(buf, oe + 2, e, _KRB_TOK_IDS[tok])
        if tok in (0x0101, 0x0201):
            if e - oe < 24:
                raise DecodeError("RFC4757 token", oe, f"{e - oe} octets, 24 at least")
            return KerberosLegacyToken(tok, (buf[oe + 2] | buf[oe + 3] << 8), (buf[oe + 4] | buf[oe + 5] << 8),
                                       bytes(buf[oe + 8:oe + 16]), bytes(buf[oe + 16:oe + 24]))
        raise DecodeError(what, oe, f"unknown Kerberos TOK_ID 0x{tok:04x}")
    raise DecodeError(what, s, f"unsupported mechanism {mech}")


def _inner(buf, s: int, e: int, depth: int):
    """A mechToken / responseToken: parsed if recognised, else its raw octets."""
    if s == e:
        return None
    try:
        return _sniff(buf, s, e, depth + 1)
    except DecodeError:
        return bytes(buf[s:e])


def _spnego_body(buf, off: int, end: int, depth: int):
    """RFC 4178 4.2 NegotiationToken CHOICE { [0] NegTokenInit, [1] NegTokenResp }."""
    ident, s, e = _tlv(buf, off, end, "NegotiationToken")
    if ident == 0xA0:
        what = "NegTokenInit"
        s, e = _expect(buf, s, e, 0x30, what)
        f = _tagged(buf, s, e, what)
        msg = SpnegoInit([])
        if 0 in f:
            ms, me = _expect(buf, *f[0], 0x30, what + ".mechTypes")
            msg.mech_types = [oid_text(bytes(buf[cs:ce])) for i, cs, ce in _children(buf, ms, me, what)
                              if i == 0x06]
        if 1 in f:
            bs, be = _expect(buf, *f[1], 0x03, what + ".reqFlags")
            msg.req_flags = int.from_bytes(buf[bs + 1:min(be, bs + 5)], "big") if be > bs + 1 else 0
        if 2 in f:
            msg.mech_token = _inner(buf, *_der_octets(buf, *f[2], what + ".mechToken"), depth)
        if 3 in f:
            i3, s3, e3 = _tlv(buf, *f[3], what)
            if i3 == 0x04:                              # RFC 4178 mechListMIC
                msg.mech_list_mic = bytes(buf[s3:e3])
            elif i3 == 0x30:                            # MS-SPNG NegHints
                hints = _tagged(buf, s3, e3, "NegHints")
                if 0 in hints:
                    msg.neg_hints = _der_string(buf, *hints[0], "NegHints.hintName")
        if 4 in f:
            msg.mech_list_mic = bytes(buf[slice(*_der_octets(buf, *f[4], what + ".mechListMIC"))])
        return msg
    if ident == 0xA1:
        what = "NegTokenResp"
        s, e = _expect(buf, s, e, 0x30, what)
        f = _tagged(buf, s, e, what)
        msg = SpnegoResp()
        if 0 in f:
            es, ee = _expect(buf, *f[0], 0x0A, what + ".negState")
            msg.neg_state = int.from_bytes(buf[es:ee], "big") if ee - es <= 4 else None
        if 1 in f:
            msg.supported_mech = _der_oid(buf, *f[1], what + ".supportedMech")
        if 2 in f:
            msg.response_token = _inner(buf, *_der_octets(buf, *f[2], what + ".responseToken"), depth)
        if 3 in f:
            msg.mech_list_mic = bytes(buf[slice(*_der_octets(buf, *f[3], what + ".mechListMIC"))])
        return msg
    raise DecodeError("NegotiationToken", off, f"expected [0] or [1], found 0x{ident:02x}")


def _netlogon(buf, off: int, end: int):
    n = end - off
    (first,) = _U32.unpack_from(buf, off)
    if first in (0, 1) and n >= 8:
        (flags,) = _U32.unpack_from(buf, off + 4)
        msg = NetlogonAuthMessage(first, flags)
        p = off + 8
        for bit, name, compressed in ((1, "NetbiosDomainName", False), (2, "NetbiosComputerName", False),
                                      (4, "DnsDomainName", True), (8, "DnsHostName", True),
                                      (0x10, "NetbiosUtf8ComputerName", True)):
            if flags & bit:
                text, p = (_dns_name if compressed else _oem_cstring)(buf, p, end, off)
                msg.names[name] = text
        return msg
    sig_alg, seal_alg = first & 0xFFFF, first >> 16
    return NetlogonSignature(sig_alg, seal_alg)


def _oem_cstring(buf, p: int, end: int, _base: int) -> tuple[str, int]:
    z = bytes(buf[p:end]).find(b"\x00")
    if z < 0:
        raise DecodeError("NL_AUTH_MESSAGE", p, "unterminated name")
    return bytes(buf[p:p + z]).decode("cp437", "replace"), p + z + 1


def _dns_name(buf, p: int, end: int, base: int) -> tuple[str, int]:
    """RFC 1035 4.1.4 (compressed) domain name, as MS-NRPC 2.2.1.3.1 uses it."""
    labels: list[str] = []
    resume = None
    for _ in range(128):                       # labels + pointer hops, bounded
        if p >= end:
            raise DecodeError("NL_AUTH_MESSAGE", p, "truncated DNS name")
        n = buf[p]
        if n == 0:
            return ".".join(labels), (resume if resume is not None else p + 1)
        if n & 0xC0 == 0xC0:
            if p + 1 >= end:
                raise DecodeError("NL_AUTH_MESSAGE", p, "truncated DNS pointer")
            if resume is None:
                resume = p + 2
            p = base + (((n & 0x3F) << 8) | buf[p + 1])
            continue
        if p + 1 + n > end:
            raise DecodeError("NL_AUTH_MESSAGE", p, "DNS label past the end")
        labels.append(bytes(buf[p + 1:p + 1 + n]).decode("utf-8", "replace"))
        p += 1 + n
    raise DecodeError("NL_AUTH_MESSAGE", p, "DNS name too long or looping")


def _sniff(buf, off: int, end: int, depth: int):
    if depth > 3:
        raise DecodeError("auth token", off, "tokens nested too deep")
    n = end - off
    if n < 2:
        raise DecodeError("auth token", off, f"{n} octets")
    b0 = buf[off]
    if n >= 8 and bytes(buf[off:off + 8]) == NTLMSSP_SIGNATURE:
        return _parse_ntlmssp(bytes(buf[off:end]), 0)
    if b0 == 0x60:
        return _gss_framed(buf, off, end, depth)
    if b0 in (0xA0, 0xA1):
        return _spnego_body(buf, off, end, depth)
    if b0 in _KRB_APPLICATION:
        return _krb_message(buf, off, end)
    if b0 in (0x04, 0x05) and buf[off + 1] == 0x04:
        return _per_message_krb(buf, off, end)
    if n == 16 and _U32.unpack_from(buf, off)[0] == 1:
        return _parse_ntlmssp(bytes(buf[off:end]), 0)
    raise DecodeError("auth token", off, f"unrecognised token starting 0x{bytes(buf[off:off + 4]).hex()}")


def parse_token(data: bytes | memoryview, auth_type: int | None = None):
    """Decode one auth_value (MS-RPCE 2.2.2.11): a handshake message or a per-message token.

    Returns one of the dataclasses above (NtlmNegotiate, SpnegoInit, KerberosApReq,
    KerberosMic, ...). auth_type only matters where the octets alone are ambiguous
    (Netlogon). Raises DecodeError.
    """
    buf = bytes(data) if not isinstance(data, bytes) else data
    try:
        if auth_type == 0x44:
            if len(buf) < 8:
                raise DecodeError("NL_AUTH_MESSAGE", 0, f"{len(buf)} octets")
            return _netlogon(buf, 0, len(buf))
        return _sniff(buf, 0, len(buf), 0)
    except DecodeError:
        raise
    except (struct.error, IndexError, ValueError, OverflowError) as exc:
        raise DecodeError("auth token", 0, f"{type(exc).__name__}: {exc}") from None


def inner_token(token):
    """The mechanism token inside SPNEGO (or the token itself)."""
    if isinstance(token, SpnegoInit):
        return token.mech_token
    if isinstance(token, SpnegoResp):
        return token.response_token
    return token


def token_summary(token) -> str:
    """One line naming a parsed token, e.g. `SPNEGO_negTokenInit > KRB_AP_REQ RPCSS/host@REALM`."""
    parts = []
    for _ in range(3):
        if token is None:
            break
        if isinstance(token, bytes):
            parts.append(f"{len(token)} octets")
            break
        kind = getattr(token, "kind", type(token).__name__)
        if isinstance(token, KerberosApReq):
            kind += f" {token.principal}"
        elif isinstance(token, NtlmAuthenticate):
            kind += f" {token.principal}"
        parts.append(kind)
        nxt = inner_token(token)
        token = None if nxt is token else nxt
    return " > ".join(parts)


# --------------------------------------------------------------------------
# security contexts of a connection

# An object with unseal(context, direction, pdu_bytes, stub_span, verifier) -> bytes | None
# and verify(context, direction, pdu_bytes, stub_span, verifier) -> bool | None
# (dissectors.credentials.ConnectionKeys).
KeyProvider = object


@dataclass(slots=True)
class HandshakeToken:
    """A token seen during the establishment of a security context."""
    frame: int
    direction: int                   # 0 client->server, 1 server->client
    ptype: int                       # the PDU that carried it (bind, bind_ack, alter_context, auth3 ...)
    token: object                    # parsed token, or the raw octets when unparseable
    error: str | None = None


_MAX_TOKENS = 32


@dataclass(slots=True)
class AuthContext:
    """One security context of a connection (MS-RPCE 3.3.1.5.4: keyed by auth_context_id)."""

    ctx_id: int
    auth_type: int
    auth_level: int | None = None
    tokens: list[HandshakeToken] = field(default_factory=list)
    principal: str | None = None     # NTLM DOMAIN\\user, Kerberos service@REALM, Netlogon DOMAIN\\HOST$
    mechanism: str | None = None     # "NTLMSSP" | "Kerberos" | "Netlogon" | None
    client_name: str | None = None   # NTLM workstation / Netlogon computer
    server_names: dict[str, object] = field(default_factory=dict)   # from CHALLENGE target info
    verifier_kinds: dict[str, int] = field(default_factory=dict)    # per-message token kind -> count
    handshakes: int = 0              # how many times this context id was (re)established
    key_provider: KeyProvider | None = None
    security: object | None = None   # the key provider's unsealing state for this context
    frame: int | None = None         # frame of the sealed PDU being unsealed (for the provider's messages)

    def add_token(self, frame: int, direction: int, ptype: int, raw: bytes) -> HandshakeToken:
        try:
            parsed = parse_token(raw, self.auth_type)
            rec = HandshakeToken(frame, direction, ptype, parsed)
        except DecodeError as exc:
            rec = HandshakeToken(frame, direction, ptype, raw, str(exc))
        if len(self.tokens) < _MAX_TOKENS:
            self.tokens.append(rec)
        if rec.error is None:
            self._learn(parsed)
        return rec

    def _learn(self, token) -> None:
        inner = inner_token(token)
        if isinstance(token, SpnegoInit) and token.mech_types and self.mechanism is None:
            first = token.mech_types[0]
            self.mechanism = "Kerberos" if first in KERBEROS_OIDS else (
                "NTLMSSP" if first == OID_NTLMSSP else None)
        if isinstance(token, SpnegoResp) and token.supported_mech:
            sm = token.supported_mech
            self.mechanism = "Kerberos" if sm in KERBEROS_OIDS else ("NTLMSSP" if sm == OID_NTLMSSP else self.mechanism)
        if isinstance(inner, (NtlmNegotiate, NtlmChallenge, NtlmAuthenticate)):
            self.mechanism = "NTLMSSP"
        if isinstance(inner, NtlmChallenge):
            self.server_names = dict(inner.target_info)
        elif isinstance(inner, NtlmAuthenticate):
            self.principal = inner.principal
            self.client_name = inner.workstation or None
        elif isinstance(inner, (KerberosApReq, KerberosApRep, KerberosError)):
            self.mechanism = "Kerberos"
            if isinstance(inner, KerberosApReq):
                self.principal = inner.principal
        elif isinstance(inner, NetlogonAuthMessage):
            self.mechanism = "Netlogon"
            if inner.message_type == 0 and inner.principal:
                self.principal = inner.principal
                self.client_name = inner.names.get("NetbiosComputerName")

    def note_verifier(self, token: bytes) -> str:
        """Classify a request/response verifier by its first octets (cheap; no full parse)."""
        kind = classify_verifier(token, self.auth_type)
        self.verifier_kinds[kind] = self.verifier_kinds.get(kind, 0) + 1
        return kind

    def unseal(self, direction: int, pdu_bytes: bytes, stub_span: tuple[int, int], verifier) -> bytes | None:
        """Decrypt a packet-privacy stub (MS-RPCE 3.3.1.5.2.2), or None when it cannot be.

        direction: 0 client->server, 1 server->client; pdu_bytes: the whole PDU as
        received; stub_span: [start, end) of the sealed stub in it, auth padding
        excluded (the sealed region runs on to the sec_trailer: end + verifier.pad_len);
        verifier: the PDU's AuthVerifier (its token is the signature / Wrap header).

        Without a key provider this returns None. With one (dissectors.credentials.
        ConnectionKeys, built from the analyst's passwords, NT hashes and keytabs),
        the provider derives the session keys from the tokens kept in `self.tokens`
        on the first sealed PDU, keeps its state in `self.security`, and returns the
        clear stub (or None, having said once why not).
        """
        if self.key_provider is None:
            return None
        return self.key_provider.unseal(self, direction, pdu_bytes, stub_span, verifier)

    def verify(self, direction: int, pdu_bytes: bytes, stub_span: tuple[int, int], verifier) -> bool | None:
        """Check the signature of a packet-integrity PDU (level 5: stub in clear, MS-RPCE 3.3.1.5.2.2).

        Same arguments as `unseal`. True when the verifier verifies, False when it
        does not (the provider says so once per context), None when it cannot be
        checked (no key provider, or no keys for this context).
        """
        if self.key_provider is None:
            return None
        return self.key_provider.verify(self, direction, pdu_bytes, stub_span, verifier)


def classify_verifier(token: bytes, auth_type: int | None = None) -> str:
    """Name of a per-message verifier token: RFC4121_MIC/WRAP, RFC4757_MIC/WRAP, NTLMSSP_SIGNATURE..."""
    n = len(token)
    if n >= 2:
        t = token[0] << 8 | token[1]
        if t == 0x0404:
            return "RFC4121_MIC"
        if t == 0x0504:
            return "RFC4121_WRAP"
    if n == 16 and token[:4] == b"\x01\x00\x00\x00":
        return "NTLMSSP_SIGNATURE"
    if n > 20 and token[0] == 0x60:
        try:
            tok = parse_token(token, auth_type)
        except DecodeError:
            return "unknown"
        if isinstance(tok, KerberosLegacyToken):
            return "RFC4757_WRAP" if tok.wrap else "RFC4757_MIC"
        return getattr(tok, "kind", "unknown")
    if auth_type == 0x44 and n >= 24:
        return "NL_AUTH_SIGNATURE"
    return "unknown"


class AuthContexts:
    """The security contexts of one connection, keyed by auth_context_id (MS-RPCE 2.2.2.11).

    key_provider: passed to every AuthContext, to unseal packet-privacy stubs (see AuthContext.unseal).
    """

    __slots__ = ("contexts", "key_provider", "latest")

    def __init__(self, key_provider: KeyProvider | None = None):
        self.contexts: dict[int, AuthContext] = {}
        self.key_provider = key_provider
        self.latest: AuthContext | None = None      # the context the last handshake PDU touched

    def get(self, ctx_id: int) -> AuthContext | None:
        return self.contexts.get(ctx_id)

    def __iter__(self):
        return iter(self.contexts.values())

    def __len__(self) -> int:
        return len(self.contexts)

    def on_handshake(self, frame: int, direction: int, ptype: int, verifier) -> HandshakeToken | None:
        """Account for the verifier of a bind / alter_context / auth3 or their replies.

        Returns the token as kept (its .error says why it could not be parsed); the
        context it went to is `self.latest`.
        """
        ctx = self.contexts.get(verifier.ctx_id)
        # a client's first leg on an existing id means a new security context (re-authentication)
        restart = (ctx is not None and direction == 0 and ptype in (11, 14)
                   and _is_initial_token(verifier.token) and ctx.tokens)
        if ctx is None or restart or ctx.auth_type != verifier.auth_type:
            handshakes = ctx.handshakes if ctx else 0
            ctx = AuthContext(verifier.ctx_id, verifier.auth_type, key_provider=self.key_provider,
                              handshakes=handshakes + 1)
            self.contexts[verifier.ctx_id] = ctx
        ctx.auth_level = verifier.auth_level
        self.latest = ctx
        if verifier.token:
            return ctx.add_token(frame, direction, ptype, verifier.token)
        return None


def _is_initial_token(token: bytes) -> bool:
    """A first-leg token: NTLM NEGOTIATE, a GSS InitialContextToken (SPNEGO init / Kerberos AP-REQ)."""
    if token[:8] == NTLMSSP_SIGNATURE:
        return token[8:12] == b"\x01\x00\x00\x00"
    if token[:1] == b"\x60":
        # a GSS-framed Kerberos token is initial only as an AP-REQ (TOK_ID 01 00, RFC 1964 1.1):
        # the DCE-style third leg frames the client's AP-REP (02 00) the same way
        at = token.find(_KRB5_OID_DER, 2, 6 + len(_KRB5_OID_DER))
        return at < 0 or token[at + len(_KRB5_OID_DER):at + len(_KRB5_OID_DER) + 2] == b"\x01\x00"
    return token[:1] == b"\x6e" or token[:1] == b"\xa0"
