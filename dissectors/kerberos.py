"""Kerberos messages as DCE/RPC auth verifiers carry them (RFC 4120 5.5, RFC 1964, RFC 4121, RFC 4757).

KRB_AP_REQ / KRB_AP_REP / KRB_ERROR (what is visible without the service key: realm,
service principal, ticket etype and kvno), and the per-message MIC and Wrap tokens.
The GSS-API framing that may wrap them, and SPNEGO, are read by auth.parse_token; the
keys and decryption are crypto_kerberos's. Bounded parsers; only DecodeError is raised.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..formats.errors import DecodeError
from .der import children, der_int, der_octets, der_string, expect, tagged, tlv

OID_KRB5 = "1.2.840.113554.1.2.2"
OID_MS_KRB5 = "1.2.840.48018.1.2.2"
OID_KRB5_U2U = "1.2.840.113554.1.2.2.3"
KERBEROS_OIDS = frozenset((OID_KRB5, OID_MS_KRB5, OID_KRB5_U2U))
# OID_KRB5 as a DER TLV (X.690 8.19): what follows the 0x60 framing of RFC 1964 1.1 tokens
KRB5_OID_DER = bytes.fromhex("06092a864886f712010202")

# RFC 3961 / RFC 4757 / RFC 8009 encryption types
ETYPE_NAMES = {
    1: "des-cbc-crc", 3: "des-cbc-md5", 17: "aes128-cts-hmac-sha1-96",
    18: "aes256-cts-hmac-sha1-96", 19: "aes128-cts-hmac-sha256-128",
    20: "aes256-cts-hmac-sha384-192", 23: "rc4-hmac", 24: "rc4-hmac-exp",
}


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


def _krb_encrypted_data(buf, s: int, e: int, what: str) -> tuple[int, int | None]:
    """RFC 4120 5.2.9 EncryptedData -> (etype, kvno)."""
    s, e = expect(buf, s, e, 0x30, what)
    f = tagged(buf, s, e, what)
    if 0 not in f:
        raise DecodeError(what, s, "EncryptedData without etype")
    etype = der_int(buf, *f[0], what + ".etype")
    kvno = der_int(buf, *f[1], what + ".kvno") if 1 in f else None
    return etype, kvno


def _krb_cipher(buf, s: int, e: int, what: str) -> bytes:
    """RFC 4120 5.2.9 EncryptedData.cipher, kept for decryption with the user's keys."""
    s, e = expect(buf, s, e, 0x30, what)
    f = tagged(buf, s, e, what)
    return bytes(buf[slice(*der_octets(buf, *f[2], what + ".cipher"))]) if 2 in f else b""


def krb_principal(buf, s: int, e: int, what: str) -> tuple[int, list[str]]:
    """RFC 4120 5.2.2 PrincipalName -> (name-type, name-string)."""
    s, e = expect(buf, s, e, 0x30, what)
    f = tagged(buf, s, e, what)
    if 1 not in f:
        raise DecodeError(what, s, "PrincipalName without name-string")
    ntype = der_int(buf, *f[0], what + ".name-type") if 0 in f else 0
    ss, se = expect(buf, *f[1], 0x30, what + ".name-string")
    names = [bytes(buf[cs:ce]).decode("utf-8", "replace")
             for _i, cs, ce in children(buf, ss, se, what + ".name-string")]
    return ntype, names


def _krb_ap_req(buf, s: int, e: int) -> KerberosApReq:
    what = "KRB_AP_REQ"
    s, e = expect(buf, s, e, 0x30, what)
    f = tagged(buf, s, e, what)
    if 3 not in f or 4 not in f:
        raise DecodeError(what, s, "AP-REQ without ticket or authenticator")
    opts = 0
    if 2 in f:
        bs, be = expect(buf, *f[2], 0x03, what + ".ap-options")
        if be - bs >= 2:
            opts = int.from_bytes(buf[bs + 1:min(be, bs + 5)], "big")
    ts, te = expect(buf, *f[3], 0x61, "Ticket")
    ts, te = expect(buf, ts, te, 0x30, "Ticket")
    tf = tagged(buf, ts, te, "Ticket")
    if 1 not in tf or 2 not in tf or 3 not in tf:
        raise DecodeError("Ticket", ts, "Ticket without realm, sname or enc-part")
    realm = der_string(buf, *tf[1], "Ticket.realm")
    stype, sname = krb_principal(buf, *tf[2], "Ticket.sname")
    tkt_etype, kvno = _krb_encrypted_data(buf, *tf[3], "Ticket.enc-part")
    auth_etype, _ = _krb_encrypted_data(buf, *f[4], what + ".authenticator")
    return KerberosApReq(opts, realm, sname, stype, tkt_etype, kvno, auth_etype,
                         _krb_cipher(buf, *tf[3], "Ticket.enc-part"), _krb_cipher(buf, *f[4], what + ".authenticator"))


def _krb_ap_rep(buf, s: int, e: int) -> KerberosApRep:
    what = "KRB_AP_REP"
    s, e = expect(buf, s, e, 0x30, what)
    f = tagged(buf, s, e, what)
    if 2 not in f:
        raise DecodeError(what, s, "AP-REP without enc-part")
    return KerberosApRep(*_krb_encrypted_data(buf, *f[2], what + ".enc-part"), _krb_cipher(buf, *f[2], what + ".enc-part"))


def _krb_error(buf, s: int, e: int) -> KerberosError:
    what = "KRB_ERROR"
    s, e = expect(buf, s, e, 0x30, what)
    f = tagged(buf, s, e, what)
    if 6 not in f:
        raise DecodeError(what, s, "KRB-ERROR without error-code")
    err = KerberosError(der_int(buf, *f[6], what + ".error-code"))
    if 9 in f:
        err.realm = der_string(buf, *f[9], what + ".realm")
    if 10 in f:
        err.sname = krb_principal(buf, *f[10], what + ".sname")[1]
    if 7 in f:
        err.crealm = der_string(buf, *f[7], what + ".crealm")
    if 8 in f:
        err.cname = krb_principal(buf, *f[8], what + ".cname")[1]
    if 11 in f:
        err.e_text = der_string(buf, *f[11], what + ".e-text")
    return err


KRB_APPLICATION = {0x6E: _krb_ap_req, 0x6F: _krb_ap_rep, 0x7E: _krb_error}
KRB_TOK_IDS = {0x0100: 0x6E, 0x0200: 0x6F, 0x0300: 0x7E}


def krb_message(buf, off: int, end: int, want_tag: int | None = None):
    ident, s, e = tlv(buf, off, end, "Kerberos message")
    fn = KRB_APPLICATION.get(ident)
    if want_tag is not None and ident != want_tag:
        raise DecodeError("Kerberos message", off, f"TOK_ID announces tag 0x{want_tag:02x}, found 0x{ident:02x}")
    if fn is None:
        raise DecodeError("Kerberos message", off, f"APPLICATION tag 0x{ident:02x} is not AP-REQ/AP-REP/KRB-ERROR")
    return fn(buf, s, e)


def per_message_token(buf, off: int, end: int):
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
