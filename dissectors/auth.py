"""Authentication tokens carried in DCE/RPC auth verifiers, and per-connection security contexts.

The tokens themselves are read by ntlmssp (MS-NLMP), kerberos (RFC 4120 / 4121) and der
(X.690); this module recognises which one a verifier holds, reads the SPNEGO and GSS-API
framing around them and the Netlogon tokens, and keeps the security contexts.

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

from ..formats.errors import DecodeError
from .der import children, der_octets, der_oid, der_string, expect, oid_text, tagged, tlv
from .kerberos import (
    KERBEROS_OIDS, KRB5_OID_DER, KRB_APPLICATION, KRB_TOK_IDS, OID_KRB5, OID_KRB5_U2U, OID_MS_KRB5, KerberosApRep,
    KerberosApReq, KerberosError, KerberosLegacyToken, krb_message, per_message_token,
)
from .ntlmssp import NTLMSSP_SIGNATURE, OID_NTLMSSP, NtlmAuthenticate, NtlmChallenge, NtlmNegotiate, parse_ntlmssp

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
OID_NEGOEX = "1.3.6.1.4.1.311.2.2.30"
OID_NAMES = {
    OID_SPNEGO: "SPNEGO", OID_KRB5: "Kerberos 5", OID_MS_KRB5: "MS Kerberos 5",
    OID_KRB5_U2U: "Kerberos 5 user-to-user", OID_NTLMSSP: "NTLMSSP", OID_NEGOEX: "NEGOEX",
}

def auth_type_name(auth_type) -> str:
    """An auth_type of the sec_trailer (MS-RPCE 2.2.1.1.7) as the transcript and the JSON
    lines print it: the name above, else the number."""
    return AUTH_TYPE_NAMES.get(auth_type, str(auth_type))


def auth_level_name(level) -> str:
    """An auth_level (MS-RPCE 2.2.1.1.8) as the transcript and the JSON lines print it:
    the name above without "packet " for integrity and privacy."""
    return AUTH_LEVEL_NAMES.get(level, str(level)).removeprefix("packet ")


NEG_STATE_NAMES = {0: "accept-completed", 1: "accept-incomplete", 2: "reject", 3: "request-mic"}

_U32 = struct.Struct("<I")


# --------------------------------------------------------------------------
# SPNEGO (RFC 4178, MS-SPNG) and Netlogon (MS-NRPC 2.2.1.3) tokens

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



def _gss_framed(buf, off: int, end: int, depth: int):
    """RFC 2743 3.1 InitialContextToken: [APPLICATION 0] { thisMech OID, innerContextToken }."""
    what = "GSS-API InitialContextToken"
    ident, s, e = tlv(buf, off, end, what)
    if ident != 0x60:
        raise DecodeError(what, off, f"expected 0x60, found 0x{ident:02x}")
    oid_ident, os_, oe = tlv(buf, s, e, what + ".thisMech")
    if oid_ident != 0x06:
        raise DecodeError(what, s, "thisMech is not an OBJECT IDENTIFIER")
    mech = oid_text(bytes(buf[os_:oe]))
    if mech == OID_SPNEGO:
        return _spnego_body(buf, oe, e, depth)
    if mech in KERBEROS_OIDS:
        if oe + 2 > e:
            raise DecodeError(what, oe, "no TOK_ID")
        tok = (buf[oe] << 8) | buf[oe + 1]
        if tok in KRB_TOK_IDS:
            return krb_message(buf, oe + 2, e, KRB_TOK_IDS[tok])
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
    ident, s, e = tlv(buf, off, end, "NegotiationToken")
    if ident == 0xA0:
        what = "NegTokenInit"
        s, e = expect(buf, s, e, 0x30, what)
        f = tagged(buf, s, e, what)
        msg = SpnegoInit([])
        if 0 in f:
            ms, me = expect(buf, *f[0], 0x30, what + ".mechTypes")
            msg.mech_types = [oid_text(bytes(buf[cs:ce])) for i, cs, ce in children(buf, ms, me, what)
                              if i == 0x06]
        if 1 in f:
            bs, be = expect(buf, *f[1], 0x03, what + ".reqFlags")
            msg.req_flags = int.from_bytes(buf[bs + 1:min(be, bs + 5)], "big") if be > bs + 1 else 0
        if 2 in f:
            msg.mech_token = _inner(buf, *der_octets(buf, *f[2], what + ".mechToken"), depth)
        if 3 in f:
            i3, s3, e3 = tlv(buf, *f[3], what)
            if i3 == 0x04:                              # RFC 4178 mechListMIC
                msg.mech_list_mic = bytes(buf[s3:e3])
            elif i3 == 0x30:                            # MS-SPNG NegHints
                hints = tagged(buf, s3, e3, "NegHints")
                if 0 in hints:
                    msg.neg_hints = der_string(buf, *hints[0], "NegHints.hintName")
        if 4 in f:
            msg.mech_list_mic = bytes(buf[slice(*der_octets(buf, *f[4], what + ".mechListMIC"))])
        return msg
    if ident == 0xA1:
        what = "NegTokenResp"
        s, e = expect(buf, s, e, 0x30, what)
        f = tagged(buf, s, e, what)
        msg = SpnegoResp()
        if 0 in f:
            es, ee = expect(buf, *f[0], 0x0A, what + ".negState")
            msg.neg_state = int.from_bytes(buf[es:ee], "big") if ee - es <= 4 else None
        if 1 in f:
            msg.supported_mech = der_oid(buf, *f[1], what + ".supportedMech")
        if 2 in f:
            msg.response_token = _inner(buf, *der_octets(buf, *f[2], what + ".responseToken"), depth)
        if 3 in f:
            msg.mech_list_mic = bytes(buf[slice(*der_octets(buf, *f[3], what + ".mechListMIC"))])
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
        return parse_ntlmssp(bytes(buf[off:end]), 0)
    if b0 == 0x60:
        return _gss_framed(buf, off, end, depth)
    if b0 in (0xA0, 0xA1):
        return _spnego_body(buf, off, end, depth)
    if b0 in KRB_APPLICATION:
        return krb_message(buf, off, end)
    if b0 in (0x04, 0x05) and buf[off + 1] == 0x04:
        return per_message_token(buf, off, end)
    if n == 16 and _U32.unpack_from(buf, off)[0] == 1:
        return parse_ntlmssp(bytes(buf[off:end]), 0)
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

# Handshake tokens recur octet for octet across connections and sessions (a client's
# NTLM NEGOTIATE, the server's SPNEGO accept-completed, Kerberos AP-REP wrappers): each
# distinct one is parsed once. The parsed tokens are only read after parsing, so
# contexts may share them. Bounded: cleared when full, large tokens (tickets) not kept.
_TOKENS: dict[tuple, tuple] = {}
_TOKEN_CACHE_SIZE = 512
_TOKEN_CACHE_OCTETS = 2048


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
    client_principal: str | None = None  # Kerberos cname@crealm, read in the ticket opened with a keytab
    server_names: dict[str, object] = field(default_factory=dict)   # from CHALLENGE target info
    verifier_kinds: dict[str, int] = field(default_factory=dict)    # per-message token kind -> count
    handshakes: int = 0              # how many times this context id was (re)established
    legs: int = 0                    # handshake tokens seen (`tokens` may have let them go, see release_tokens)
    key_provider: KeyProvider | None = None
    security: object | None = None   # the key provider's unsealing state for this context
    frame: int | None = None         # frame of the sealed PDU being unsealed (for the provider's messages)

    def add_token(self, frame: int, direction: int, ptype: int, raw: bytes) -> HandshakeToken:
        key = (self.auth_type, raw)
        hit = _TOKENS.get(key)
        if hit is None:
            try:
                hit = (parse_token(raw, self.auth_type), None)
            except DecodeError as exc:
                hit = (raw, str(exc))
            if len(raw) <= _TOKEN_CACHE_OCTETS:
                if len(_TOKENS) >= _TOKEN_CACHE_SIZE:
                    _TOKENS.clear()
                _TOKENS[key] = hit
        parsed, error = hit
        rec = HandshakeToken(frame, direction, ptype, parsed, error)
        self.legs += 1
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

    def release_tokens(self) -> None:
        """The connection went idle: contexts that no key provider will ever derive keys
        from let their parsed handshake tokens go (nothing else reads them once learnt
        from; about 3 KB a Kerberos context, and a capture may keep 10,000 connections)."""
        for ctx in self.contexts.values():
            if ctx.key_provider is None and ctx.tokens:
                ctx.tokens = []

    def on_handshake(self, frame: int, direction: int, ptype: int, verifier) -> HandshakeToken | None:
        """Account for the verifier of a bind / alter_context / auth3 or their replies.

        Returns the token as kept (its .error says why it could not be parsed); the
        context it went to is `self.latest`.
        """
        ctx = self.contexts.get(verifier.ctx_id)
        # a client's first leg on an existing id means a new security context (re-authentication)
        restart = (ctx is not None and direction == 0 and ptype in (11, 14)
                   and _is_initial_token(verifier.token) and ctx.legs)
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
        at = token.find(KRB5_OID_DER, 2, 6 + len(KRB5_OID_DER))
        return at < 0 or token[at + len(KRB5_OID_DER):at + len(KRB5_OID_DER) + 2] == b"\x01\x00"
    return token[:1] == b"\x6e" or token[:1] == b"\xa0"

