"""NTLMSSP messages (MS-NLMP 2.2): NEGOTIATE, CHALLENGE, AUTHENTICATE and the message signature.

What the handshake shows without any secret: flags, versions, the AV_PAIRs of the target
info, the user, domain and workstation an AUTHENTICATE names, and where its MIC sits (the
crypto_ntlm module checks it and derives the session keys when the analyst's secrets
allow). Every parser is bounded by its buffer and raises only DecodeError.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from ..formats.errors import DecodeError

OID_NTLMSSP = "1.3.6.1.4.1.311.2.2.10"

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


NTLMSSP_SIGNATURE = b"NTLMSSP\x00"
# AUTHENTICATE_MESSAGE (MS-NLMP 2.2.1.3): the MIC follows the 8-octet Version at 64
MIC_OFFSET = 72
MIC_LEN = 16
_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=timezone.utc)
_MAX_AV_PAIRS = 64

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
