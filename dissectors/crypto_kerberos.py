"""Kerberos keys, ticket decryption and DCE-style per-message tokens, from a keytab.

What an analyst with the service's keys can recover from a captured AP exchange:

- keytab files (MIT format 0x0502, as ktutil / ktpass write them);
- string-to-key: AES128/AES256 (RFC 3962 4: PBKDF2-HMAC-SHA1 then DK(tkey,
  "kerberos")) and RC4-HMAC (RFC 4757 2: the NT hash);
- the simplified profile of RFC 3961 5.3 for aes*-cts-hmac-sha1-96 (RFC 3962:
  AES in CBC mode with ciphertext stealing, HMAC-SHA1-96, DK key derivation with
  n-fold) and RFC 4757 RC4-HMAC, both ways;
- the AP-REQ's ticket (key usage 2) -> EncTicketPart.key, the session key; its
  authenticator (usage 11) -> the initiator's subkey, sequence number and GSS
  flags (RFC 4121 4.1.1); the AP-REP (usage 12) -> the acceptor's subkey;
- per-message Wrap tokens the way DCE/RPC carries them (MS-KILE 3.4.5.4, GSS_WrapEx
  with GSS_C_DCE_STYLE): the token header and the rotated trailer in the auth
  verifier, the data encrypted in place in the stub. RFC 4121 4.2.6.2 tokens for
  AES (rotation by RRC + EC, the encrypted header copy checked, the checksum over
  the sign-only PDU header and sec_trailer when header signing is in use) and
  RFC 4757 7.3 tokens for RC4;
- at packet integrity (DCE/RPC level 5, stubs in clear) the per-message MIC
  tokens: RFC 4121 4.2.6.1 (checksum over the signed buffers, then the token
  header; key usage 23 / 25) and RFC 4757 7.2 (RC4: MD5 of usage 15, the token
  header and the data, under the signature key).

Every parser is bounded by its buffer and raises only `KerberosCryptoError`
(a wrong key, a damaged token) or DecodeError (from the shared DER reader).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .der import der_int, der_octets, der_string, expect, tagged
from .kerberos import KRB5_OID_DER, krb_principal
from .crypto_ntlm import Rc4, UnsealError, hmac_md5, ntowfv1

from ..formats.errors import DecodeError

ETYPE_AES128 = 17
ETYPE_AES256 = 18
ETYPE_RC4 = 23
AES_KEY_SIZES = {ETYPE_AES128: 16, ETYPE_AES256: 32}

# RFC 4120 7.5.1 / RFC 4121 2 key usage numbers
USAGE_TICKET = 2
USAGE_AUTHENTICATOR = 11
USAGE_AP_REP = 12
KG_USAGE_ACCEPTOR_SEAL = 22
KG_USAGE_ACCEPTOR_SIGN = 23
KG_USAGE_INITIATOR_SEAL = 24
KG_USAGE_INITIATOR_SIGN = 25

# RFC 4121 4.2.2 token flags
FLAG_SENT_BY_ACCEPTOR = 1
FLAG_SEALED = 2
FLAG_ACCEPTOR_SUBKEY = 4
GSS_C_DCE_STYLE = 0x1000

_HMAC_LEN = 12                   # HMAC-SHA1-96
_BLOCK = 16
_CFX_HEADER = struct.Struct(">HBBHHQ")      # TOK_ID, Flags, Filler, EC, RRC, SND_SEQ
_MIC_HEADER = struct.Struct(">HB5sQ")       # TOK_ID, Flags, Filler (5 x 0xFF), SND_SEQ (RFC 4121 4.2.6.1)
_MIC_FILLER = b"\xff" * 5


class KerberosCryptoError(Exception):
    """A ciphertext that does not decrypt under a key (integrity check failed), or a bad token."""


# --------------------------------------------------------------------------
# RFC 3961 5.1: n-fold and DK; RFC 3962: AES-CTS


def n_fold(data: bytes, nbytes: int) -> bytes:
    """RFC 3961 5.1 n-fold: replicate data, each copy rotated 13 bits right, and add the
    lcm-length string in nbytes chunks with end-around carry."""
    k = len(data)
    lcm = k * nbytes // _gcd(k, nbytes)
    bits = k * 8
    value = int.from_bytes(data, "big")
    copies = bytearray()
    for i in range(lcm // k):
        r = (13 * i) % bits
        rotated = ((value >> r) | (value << (bits - r))) & ((1 << bits) - 1)
        copies += rotated.to_bytes(k, "big")
    total = 0
    mod = 1 << (nbytes * 8)
    for off in range(0, lcm, nbytes):
        total += int.from_bytes(copies[off:off + nbytes], "big")
        while total >= mod:
            total = (total & (mod - 1)) + (total >> (nbytes * 8))
    return total.to_bytes(nbytes, "big")


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def _aes_ecb(key: bytes, block: bytes, decrypt: bool = False) -> bytes:
    c = Cipher(algorithms.AES(key), modes.ECB())
    op = c.decryptor() if decrypt else c.encryptor()
    return op.update(block) + op.finalize()


def aes_cts_encrypt(key: bytes, plaintext: bytes) -> bytes:
    """AES-CBC with ciphertext stealing, zero IV, the last two blocks always swapped (RFC 3962 5)."""
    n = len(plaintext)
    if n < _BLOCK:
        raise KerberosCryptoError(f"AES-CTS needs a block at least, got {n} octets")
    if n == _BLOCK:
        return _aes_ecb(key, plaintext)
    pad = (-n) % _BLOCK
    enc = Cipher(algorithms.AES(key), modes.CBC(b"\x00" * _BLOCK)).encryptor()
    c = enc.update(plaintext + b"\x00" * pad) + enc.finalize()
    last = len(c) - _BLOCK
    return c[:last - _BLOCK] + c[last:] + c[last - _BLOCK:last - _BLOCK + _BLOCK - pad]


def aes_cts_decrypt(key: bytes, ciphertext: bytes) -> bytes:
    n = len(ciphertext)
    if n < _BLOCK:
        raise KerberosCryptoError(f"AES-CTS ciphertext of {n} octets")
    if n == _BLOCK:
        return _aes_ecb(key, ciphertext, True)
    r = n - _BLOCK * ((n - 1) // _BLOCK)          # octets in the final (stolen) block, 1..16
    head = n - r - _BLOCK                         # the full blocks before the swapped pair
    swapped_last = ciphertext[head:head + _BLOCK]  # the last CBC block, moved forward
    d = _aes_ecb(key, swapped_last, True)
    prev = ciphertext[head + _BLOCK:] + d[r:]     # the second-to-last CBC block, restored
    dec = Cipher(algorithms.AES(key), modes.CBC(b"\x00" * _BLOCK)).decryptor()
    front = dec.update(ciphertext[:head] + prev) + dec.finalize()
    tail = bytes(a ^ b for a, b in zip(d[:r], prev))
    return front + tail


def _dr(key: bytes, constant: bytes, size: int) -> bytes:
    """RFC 3961 5.1 DR: chained encryptions of the n-folded constant."""
    block = constant if len(constant) == _BLOCK else n_fold(constant, _BLOCK)
    out = b""
    while len(out) < size:
        block = _aes_ecb(key, block)
        out += block
    return out[:size]


def string_to_key(etype: int, password: str, salt: str | bytes = b"", iterations: int = 4096) -> "Key":
    """RFC 3962 4 (AES) / RFC 4757 2 (RC4: the NT hash, no salt)."""
    if etype == ETYPE_RC4:
        return Key(etype, ntowfv1(password))
    size = AES_KEY_SIZES.get(etype)
    if size is None:
        raise KerberosCryptoError(f"string-to-key for etype {etype} is not supported")
    salt_b = salt.encode("utf-8") if isinstance(salt, str) else salt
    tkey = hashlib.pbkdf2_hmac("sha1", password.encode("utf-8"), salt_b, iterations, size)
    return Key(etype, _dr(tkey, b"kerberos", size))


def default_salt(realm: str, components: list[str]) -> str:
    """RFC 4120 4: the realm followed by the principal's name components."""
    return realm + "".join(components)


# --------------------------------------------------------------------------
# keys


class Key:
    """An encryption key of one etype, with the usage-derived keys cached (RFC 3961 3)."""

    __slots__ = ("etype", "value", "_derived")

    def __init__(self, etype: int, value: bytes):
        self.etype = etype
        self.value = bytes(value)
        self._derived: dict[object, object] = {}

    def __repr__(self) -> str:          # never the key itself
        return f"Key(etype={self.etype}, {len(self.value)} octets)"

    def __eq__(self, other) -> bool:
        return isinstance(other, Key) and other.etype == self.etype and other.value == self.value

    def __hash__(self) -> int:
        return hash((self.etype, self.value))

    def usage_keys(self, usage: int) -> tuple[bytes, bytes]:
        """(Ke, Ki) for an AES usage: DK(base, usage | 0xAA), DK(base, usage | 0x55)."""
        keys = self._derived.get(usage)
        if keys is None:
            size = len(self.value)
            u = struct.pack(">I", usage)
            keys = (_dr(self.value, u + b"\xaa", size), _dr(self.value, u + b"\x55", size))
            self._derived[usage] = keys
        return keys

    def _once(self, label, derive) -> bytes:
        """derive(key value), computed at its first use: a key that only the key itself
        determines (RFC 4757's Ksign and the bases of Kseq / Kcrypt), not each message."""
        value = self._derived.get(label)
        if value is None:
            value = self._derived[label] = derive(self.value)
        return value

    def checksum(self, usage: int, data: bytes) -> bytes:
        """The keyed checksum of the etype: hmac-sha1-96-aes under Kc = DK(base, usage | 0x99)
        (RFC 3961 5.4, RFC 3962), or RFC 4757 4's HMAC-MD5 under the signature key."""
        if self.etype == ETYPE_RC4:
            return _rc4_md5_checksum(self, usage, data)
        kc = self._derived.get(("Kc", usage))
        if kc is None:
            kc = self._derived[("Kc", usage)] = _dr(self.value, struct.pack(">I", usage) + b"\x99", len(self.value))
        return hmac.digest(kc, data, "sha1")[:_HMAC_LEN]

    def encrypt(self, usage: int, plaintext: bytes, confounder: bytes) -> bytes:
        """RFC 3961 5.3 / RFC 4757 3 encryption with a caller-chosen confounder (the generator's)."""
        if self.etype == ETYPE_RC4:
            k1 = hmac_md5(self.value, struct.pack("<I", 8 if usage == 3 else usage))
            checksum = hmac_md5(k1, confounder[:8] + plaintext)
            return checksum + Rc4(hmac_md5(k1, checksum)).update(confounder[:8] + plaintext)
        ke, ki = self.usage_keys(usage)
        data = confounder[:_BLOCK] + plaintext
        return aes_cts_encrypt(ke, data) + hmac.digest(ki, data, "sha1")[:_HMAC_LEN]

    def decrypt(self, usage: int, ciphertext: bytes) -> bytes:
        """The plaintext, or KerberosCryptoError when the integrity check fails (a wrong key)."""
        if self.etype == ETYPE_RC4:
            if len(ciphertext) < 24:
                raise KerberosCryptoError(f"RC4-HMAC ciphertext of {len(ciphertext)} octets")
            k1 = hmac_md5(self.value, struct.pack("<I", 8 if usage == 3 else usage))
            checksum = ciphertext[:16]
            plain = Rc4(hmac_md5(k1, checksum)).update(ciphertext[16:])
            if not hmac.compare_digest(hmac_md5(k1, plain), checksum):
                raise KerberosCryptoError("integrity check failed")
            return plain[8:]
        if self.etype not in AES_KEY_SIZES:
            raise KerberosCryptoError(f"etype {self.etype} is not supported")
        if len(ciphertext) < _BLOCK + _HMAC_LEN:
            raise KerberosCryptoError(f"AES ciphertext of {len(ciphertext)} octets")
        ke, ki = self.usage_keys(usage)
        plain = aes_cts_decrypt(ke, ciphertext[:-_HMAC_LEN])
        if not hmac.compare_digest(hmac.digest(ki, plain, "sha1")[:_HMAC_LEN], ciphertext[-_HMAC_LEN:]):
            raise KerberosCryptoError("integrity check failed")
        return plain[_BLOCK:]


# --------------------------------------------------------------------------
# keytab files (MIT krb5 keytab format 0x0502, big-endian; 0x0501 files from big-endian hosts)


@dataclass(slots=True)
class KeytabEntry:
    realm: str
    components: list[str]
    name_type: int
    timestamp: int
    kvno: int
    key: Key

    @property
    def principal(self) -> str:
        return "/".join(self.components) + "@" + self.realm


_MAX_KEYTAB_ENTRIES = 4096


def parse_keytab(data: bytes) -> list[KeytabEntry]:
    """Every entry of a keytab file; raises DecodeError naming the offset of what is wrong."""
    if len(data) < 2 or data[0] != 5 or data[1] not in (1, 2):
        raise DecodeError("keytab", 0, "not a keytab (expected version 0x0501 or 0x0502)")
    v1 = data[1] == 1
    out: list[KeytabEntry] = []
    off = 2
    n = len(data)
    while off + 4 <= n and len(out) < _MAX_KEYTAB_ENTRIES:
        (size,) = struct.unpack_from(">i", data, off)
        off += 4
        if size == 0:
            break
        if size < 0:                          # a hole left by a deleted entry
            if off - size > n:
                raise DecodeError("keytab entry", off - 4, f"hole of {-size} octets runs past the file")
            off -= size
            continue
        end = off + size
        if end > n:
            raise DecodeError("keytab entry", off - 4, f"entry of {size} octets runs past the file")
        try:
            out.append(_keytab_entry(data, off, end, v1))
        except (struct.error, IndexError, UnicodeDecodeError) as exc:
            raise DecodeError("keytab entry", off, f"truncated entry: {exc}") from None
        off = end
    if 0 < n - off < 4:
        raise DecodeError("keytab", off, f"{n - off} octets left over after the last entry")
    return out


def _keytab_entry(data: bytes, p: int, end: int, v1: bool) -> KeytabEntry:
    def counted(p: int) -> tuple[bytes, int]:
        (k,) = struct.unpack_from(">H", data, p)
        if p + 2 + k > end:
            raise DecodeError("keytab entry", p, f"counted string of {k} octets runs past the entry")
        return data[p + 2:p + 2 + k], p + 2 + k

    (count,) = struct.unpack_from(">H", data, p)
    p += 2
    if v1:
        count -= 1                             # version 1 counted the realm too
    realm, p = counted(p)
    comps = []
    for _ in range(count):
        c, p = counted(p)
        comps.append(c.decode("utf-8", "replace"))
    name_type = 0
    if not v1:
        (name_type,) = struct.unpack_from(">I", data, p)
        p += 4
    timestamp, vno8, etype = struct.unpack_from(">IBH", data, p)
    p += 7
    keyvalue, p = counted(p)
    kvno = vno8
    if p + 4 <= end:                           # the 32-bit kvno that later versions append
        (kvno32,) = struct.unpack_from(">I", data, p)
        if kvno32:
            kvno = kvno32
    return KeytabEntry(realm.decode("utf-8", "replace"), comps, name_type, timestamp, kvno, Key(etype, keyvalue))


def build_keytab(entries: list[KeytabEntry]) -> bytes:
    """A version 0x0502 keytab (for the sample generator and tests)."""
    out = bytearray(b"\x05\x02")
    for e in entries:
        body = struct.pack(">H", len(e.components)) + _counted(e.realm.encode())
        for c in e.components:
            body += _counted(c.encode())
        body += struct.pack(">IIBH", e.name_type, e.timestamp, e.kvno & 0xFF, e.key.etype)
        body += _counted(e.key.value) + struct.pack(">I", e.kvno)
        out += struct.pack(">i", len(body)) + body
    return bytes(out)


def _counted(b: bytes) -> bytes:
    return struct.pack(">H", len(b)) + b


# --------------------------------------------------------------------------
# the AP exchange (RFC 4120 5.3, 5.5)


@dataclass(slots=True)
class TicketPart:
    """What EncTicketPart (RFC 4120 5.3) tells: the session key and the client."""
    session_key: Key
    client: str                       # cname@crealm


@dataclass(slots=True)
class AuthenticatorPart:
    """RFC 4120 5.5.1 Authenticator, with the RFC 4121 4.1.1 GSS checksum flags."""
    client: str
    subkey: Key | None = None
    seq_number: int | None = None
    gss_flags: int | None = None


@dataclass(slots=True)
class ApRepPart:
    """RFC 4120 5.5.2 EncAPRepPart."""
    subkey: Key | None = None
    seq_number: int | None = None


def _app_body(buf: bytes, tag: int, what: str) -> dict[int, tuple[int, int]]:
    s, e = expect(buf, 0, len(buf), tag, what)
    s, e = expect(buf, s, e, 0x30, what)
    return tagged(buf, s, e, what)


def _encryption_key(buf: bytes, s: int, e: int, what: str) -> Key:
    s, e = expect(buf, s, e, 0x30, what)
    f = tagged(buf, s, e, what)
    if 0 not in f or 1 not in f:
        raise DecodeError(what, s, "EncryptionKey without keytype or keyvalue")
    ks, ke = der_octets(buf, *f[1], what + ".keyvalue")
    return Key(der_int(buf, *f[0], what + ".keytype"), buf[ks:ke])


def _principal_text(buf: bytes, f: dict, name_tag: int, realm_tag: int, what: str) -> str:
    name = "/".join(krb_principal(buf, *f[name_tag], what + ".cname")[1]) if name_tag in f else "?"
    realm = der_string(buf, *f[realm_tag], what + ".crealm") if realm_tag in f else "?"
    return f"{name}@{realm}"


def parse_enc_ticket_part(plain: bytes) -> TicketPart:
    what = "EncTicketPart"
    f = _app_body(plain, 0x63, what)
    if 1 not in f:
        raise DecodeError(what, 0, "EncTicketPart without key")
    return TicketPart(_encryption_key(plain, *f[1], what + ".key"), _principal_text(plain, f, 3, 2, what))


def parse_authenticator(plain: bytes) -> AuthenticatorPart:
    what = "Authenticator"
    f = _app_body(plain, 0x62, what)
    out = AuthenticatorPart(_principal_text(plain, f, 2, 1, what))
    if 3 in f:                                  # Checksum: RFC 4121 4.1.1 for type 0x8003
        cs, ce = expect(plain, *f[3], 0x30, what + ".cksum")
        cf = tagged(plain, cs, ce, what + ".cksum")
        if 0 in cf and 1 in cf and der_int(plain, *cf[0], what + ".cksumtype") == 0x8003:
            vs, ve = der_octets(plain, *cf[1], what + ".checksum")
            if ve - vs >= 24:
                out.gss_flags = struct.unpack_from("<I", plain, vs + 20)[0]
    if 6 in f:
        out.subkey = _encryption_key(plain, *f[6], what + ".subkey")
    if 7 in f:
        out.seq_number = der_int(plain, *f[7], what + ".seq-number") & 0xFFFFFFFF
    return out


def parse_enc_ap_rep_part(plain: bytes) -> ApRepPart:
    what = "EncAPRepPart"
    f = _app_body(plain, 0x7B, what)
    out = ApRepPart()
    if 2 in f:
        out.subkey = _encryption_key(plain, *f[2], what + ".subkey")
    if 3 in f:
        out.seq_number = der_int(plain, *f[3], what + ".seq-number") & 0xFFFFFFFF
    return out


# --------------------------------------------------------------------------
# per-message tokens, DCE style


def _rotate_right(data: bytes, n: int) -> bytes:
    if not data:
        return data
    n %= len(data)
    return data[len(data) - n:] + data[:len(data) - n] if n else data


def _rotate_left(data: bytes, n: int) -> bytes:
    if not data:
        return data
    n %= len(data)
    return data[n:] + data[:n] if n else data


def cfx_wrap_dce(key: Key, plain: bytes, seq: int, acceptor: bool, acceptor_subkey: bool,
                 confounder: bytes, sign_head: bytes = b"", sign_tail: bytes = b"",
                 ec: int = 16, rrc: int = 28, filler: bytes | None = None) -> tuple[bytes, bytes]:
    """GSS_WrapEx (MS-KILE 3.4.5.4.1, RFC 4121 4.2.4) -> (verifier token, data sealed in place).

    plain: the stub with its auth padding (a multiple of the block size);
    sign_head / sign_tail: the sign-only buffers around it (PDU header, sec_trailer).
    """
    flags = FLAG_SEALED | (FLAG_SENT_BY_ACCEPTOR if acceptor else 0) | (FLAG_ACCEPTOR_SUBKEY if acceptor_subkey else 0)
    header = _CFX_HEADER.pack(0x0504, flags, 0xFF, ec, rrc, seq)
    enc_header = _CFX_HEADER.pack(0x0504, flags, 0xFF, ec, 0, seq)
    pad = filler if filler is not None else b"\x00" * ec
    ke, ki = key.usage_keys(KG_USAGE_ACCEPTOR_SEAL if acceptor else KG_USAGE_INITIATOR_SEAL)
    conf = confounder[:_BLOCK]
    c = aes_cts_encrypt(ke, conf + plain + pad + enc_header)
    h = hmac.digest(ki, conf + sign_head + plain + sign_tail + pad + enc_header, "sha1")[:_HMAC_LEN]
    rotated = _rotate_right(c + h, rrc + ec)
    split = len(rotated) - len(plain)
    return header + rotated[:split], rotated[split:]


def cfx_unwrap_dce(key: Key, token: bytes, sealed: bytes, signed: tuple[tuple[bytes, bytes], ...]) -> bytes:
    """The clear data of an RFC 4121 Wrap token in DCE style; KerberosCryptoError if it does not verify.

    signed: candidate (sign_head, sign_tail) pairs (with and without header signing).
    """
    if len(token) < 16 or token[0] != 5 or token[1] != 4:
        raise KerberosCryptoError("not an RFC 4121 Wrap token")
    _tok, flags, filler, ec, rrc, _seq = _CFX_HEADER.unpack_from(token)
    if not flags & FLAG_SEALED:
        raise KerberosCryptoError("Wrap token without confidentiality")
    ke, ki = key.usage_keys(KG_USAGE_ACCEPTOR_SEAL if flags & FLAG_SENT_BY_ACCEPTOR else KG_USAGE_INITIATOR_SEAL)
    rotated = token[16:] + sealed
    if len(rotated) < 2 * _BLOCK + ec + _HMAC_LEN:
        raise KerberosCryptoError(f"Wrap token of {len(rotated)} octets is too short for EC {ec}")
    # MS-KILE rotates by RRC + EC; RFC 4121 proper by RRC alone: the header copy tells which
    for shift in dict.fromkeys((rrc + ec, rrc)):
        ct = _rotate_left(rotated, shift)
        plain = aes_cts_decrypt(ke, ct[:-_HMAC_LEN])
        copy = plain[-16:]
        if copy[:6] == token[:6] and copy[8:16] == token[8:16]:
            break
    else:
        raise KerberosCryptoError("the encrypted token header does not match (wrong key?)")
    data = plain[_BLOCK:len(plain) - ec - 16]
    conf, trailer = plain[:_BLOCK], plain[len(plain) - ec - 16:]
    mac = ct[-_HMAC_LEN:]
    for head, tail in signed:
        if hmac.compare_digest(hmac.digest(ki, conf + head + data + tail + trailer, "sha1")[:_HMAC_LEN], mac):
            return data
    raise KerberosCryptoError("the Wrap token checksum does not verify")


_RC4_TOKEN_LEN = 32                   # TOK_ID .. Confounder (RFC 4757 7.3)
_RC4_MIC_LEN = 24                     # TOK_ID .. SGN_CKSUM (RFC 4757 7.2)
_RC4_WRAP_HEAD = b"\x02\x01\x11\x00\x10\x00\xff\xff"
_RC4_MIC_HEAD = b"\x01\x01\x11\x00\xff\xff\xff\xff"
_RC4_USAGE_SEAL, _RC4_USAGE_SIGN = 13, 15     # the checksum usages of Wrap and GetMIC (RFC 4757 7.2, 7.3)


def _rc4_token_body(token: bytes, mic: bool = False) -> bytes:
    """The octets after the GSS framing of an RFC 4757 Wrap (32) or MIC (24) token."""
    if len(token) < 2 or token[0] != 0x60:
        raise KerberosCryptoError("not a GSS-framed RFC 4757 token")
    at = token.find(KRB5_OID_DER, 2, 6 + len(KRB5_OID_DER))   # after 0x60 and a 1..4-octet length
    if at < 0:
        raise KerberosCryptoError("RFC 4757 token without the Kerberos OID")
    size, head = (_RC4_MIC_LEN, _RC4_MIC_HEAD) if mic else (_RC4_TOKEN_LEN, _RC4_WRAP_HEAD)
    body = token[at + len(KRB5_OID_DER):at + len(KRB5_OID_DER) + size]
    if len(body) < size or body[:2] != head[:2]:
        raise KerberosCryptoError(f"not an RFC 4757 {'MIC' if mic else 'Wrap'} token")
    if body[2:6] != head[2:6]:
        raise KerberosCryptoError(f"RFC 4757 token with SGN_ALG {body[2:4].hex()} / SEAL_ALG {body[4:6].hex()}")
    return body


def _rc4_ksign(value: bytes) -> bytes:
    return hmac_md5(value, b"signaturekey\x00")


def _rc4_kseq_base(value: bytes) -> bytes:
    return hmac_md5(value, b"\x00\x00\x00\x00")


def _rc4_kcrypt_base(value: bytes) -> bytes:
    return hmac_md5(bytes(b ^ 0xF0 for b in value), b"\x00\x00\x00\x00")     # Klocal = Kss XOR F0


def _rc4_md5_checksum(key: Key, usage: int, data: bytes) -> bytes:
    """RFC 4757 4 HMAC-MD5 checksum: HMAC(Ksign, MD5(usage | data))."""
    return hmac_md5(key._once("Ksign", _rc4_ksign), hashlib.md5(struct.pack("<I", usage) + data).digest())


def _rc4_checksum(key: Key, head8: bytes, conf: bytes, data: bytes, usage: int = _RC4_USAGE_SEAL) -> bytes:
    """SGN_CKSUM of RFC 4757 7.2 / 7.3: the checksum of the token header, confounder and data, cut to 8."""
    return _rc4_md5_checksum(key, usage, head8 + conf + data)[:8]


def _rc4_kseq(key: Key, cksum: bytes) -> bytes:
    """Kseq = HMAC(HMAC(Kss, 0), SGN_CKSUM): the key the sequence number is encrypted under."""
    return hmac_md5(key._once("Kseq", _rc4_kseq_base), cksum)


def _rc4_kcrypt(key: Key, seq4: bytes) -> bytes:
    """Kcrypt = HMAC(HMAC(Klocal, 0), SND_SEQ[0..3]): the key of the confounder and data."""
    return hmac_md5(key._once("Kcrypt", _rc4_kcrypt_base), seq4)


def _seq_plain(seq: int, acceptor: bool) -> bytes:
    """RFC 4757 7.2 SND_SEQ before encryption: the sequence number and the direction filler."""
    return struct.pack(">I", seq) + (b"\xff" * 4 if acceptor else b"\x00" * 4)


def rc4_wrap_dce(key: Key, plain: bytes, seq: int, acceptor: bool, confounder: bytes,
                 sign_head: bytes = b"", sign_tail: bytes = b"") -> tuple[bytes, bytes]:
    """RFC 4757 7.3 GSS_Wrap in DCE style -> (verifier token, data sealed in place)."""
    head8 = _RC4_WRAP_HEAD
    conf = confounder[:8]
    cksum = _rc4_checksum(key, head8, conf, sign_head + plain + sign_tail)
    seq_plain = _seq_plain(seq, acceptor)
    snd_seq = Rc4(_rc4_kseq(key, cksum)).update(seq_plain)
    rc4 = Rc4(_rc4_kcrypt(key, seq_plain[:4]))
    enc_conf = rc4.update(conf)
    sealed = rc4.update(plain)
    body = head8 + snd_seq + cksum + enc_conf
    # MS-KILE 3.4.5.1: the GSS length does not count the application data
    framing = b"\x60" + bytes((len(KRB5_OID_DER) + len(body),)) + KRB5_OID_DER
    return framing + body, sealed


def rc4_unwrap_dce(key: Key, token: bytes, sealed: bytes, signed: tuple[tuple[bytes, bytes], ...]) -> bytes:
    body = _rc4_token_body(token)
    snd_seq, cksum, enc_conf = body[8:16], body[16:24], body[24:32]
    seq_plain = Rc4(_rc4_kseq(key, cksum)).update(snd_seq)
    if seq_plain[4:] not in (b"\x00" * 4, b"\xff" * 4):
        raise KerberosCryptoError("RFC 4757 sequence number does not decrypt (wrong key?)")
    rc4 = Rc4(_rc4_kcrypt(key, seq_plain[:4]))
    conf = rc4.update(enc_conf)
    data = rc4.update(sealed)
    for head, tail in signed:
        if hmac.compare_digest(_rc4_checksum(key, body[:8], conf, head + data + tail), cksum):
            return data
    raise KerberosCryptoError("the RFC 4757 token checksum does not verify")


# ---- per-message MIC tokens (packet integrity: the data is signed, not sealed)


def cfx_get_mic_dce(key: Key, data: bytes, seq: int, acceptor: bool, acceptor_subkey: bool) -> bytes:
    """GSS_GetMICEx (RFC 4121 4.2.6.1) -> the MIC token; data: the signed buffers in order
    (PDU header, stub with its padding, sec_trailer when header signing is in use)."""
    flags = (FLAG_SENT_BY_ACCEPTOR if acceptor else 0) | (FLAG_ACCEPTOR_SUBKEY if acceptor_subkey else 0)
    header = _MIC_HEADER.pack(0x0404, flags, _MIC_FILLER, seq)
    return header + key.checksum(KG_USAGE_ACCEPTOR_SIGN if acceptor else KG_USAGE_INITIATOR_SIGN, data + header)


def cfx_verify_mic(key: Key, token: bytes, candidates: tuple[bytes, ...]) -> int:
    """Index of the candidate data an RFC 4121 MIC token verifies; KerberosCryptoError if none."""
    if len(token) < 16 + _HMAC_LEN or token[:2] != b"\x04\x04" or token[3:8] != _MIC_FILLER:
        raise KerberosCryptoError("not an RFC 4121 MIC token")
    header, mac = token[:16], token[16:]
    usage = KG_USAGE_ACCEPTOR_SIGN if token[2] & FLAG_SENT_BY_ACCEPTOR else KG_USAGE_INITIATOR_SIGN
    for i, data in enumerate(candidates):
        if hmac.compare_digest(key.checksum(usage, data + header)[:len(mac)], mac):
            return i
    raise KerberosCryptoError("the MIC token checksum does not verify")


def rc4_get_mic_dce(key: Key, data: bytes, seq: int, acceptor: bool) -> bytes:
    """RFC 4757 7.2 GSS_GetMIC -> the GSS-framed MIC token (37 octets)."""
    cksum = _rc4_checksum(key, _RC4_MIC_HEAD, b"", data, _RC4_USAGE_SIGN)
    body = _RC4_MIC_HEAD + Rc4(_rc4_kseq(key, cksum)).update(_seq_plain(seq, acceptor)) + cksum
    return b"\x60" + bytes((len(KRB5_OID_DER) + len(body),)) + KRB5_OID_DER + body


def rc4_verify_mic(key: Key, token: bytes, candidates: tuple[bytes, ...]) -> int:
    """Index of the candidate data an RFC 4757 MIC token verifies; KerberosCryptoError if none."""
    body = _rc4_token_body(token, mic=True)
    snd_seq, cksum = body[8:16], body[16:24]
    if Rc4(_rc4_kseq(key, cksum)).update(snd_seq)[4:] not in (b"\x00" * 4, b"\xff" * 4):
        raise KerberosCryptoError("RFC 4757 sequence number does not decrypt (wrong key?)")
    for i, data in enumerate(candidates):
        if hmac.compare_digest(_rc4_checksum(key, body[:8], b"", data, _RC4_USAGE_SIGN), cksum):
            return i
    raise KerberosCryptoError("the RFC 4757 MIC checksum does not verify")


# --------------------------------------------------------------------------
# one security context on DCE/RPC


@dataclass(slots=True)
class KerberosContextKeys:
    """The keys of one Kerberos security context, as recovered from its AP exchange."""
    service: str                      # sname@realm of the ticket
    client: str                       # cname@crealm from the decrypted ticket
    session_key: Key
    initiator_subkey: Key | None = None
    acceptor_subkey: Key | None = None
    gss_flags: int | None = None
    initiator_seq: int | None = None
    acceptor_seq: int | None = None
    authenticator_client: str | None = None     # cname@crealm the authenticator repeats (RFC 4120 3.2.3)
    notes: list[str] = field(default_factory=list)

    def candidates(self, flags: int | None) -> list[Key]:
        """Keys to try for a token, the one RFC 4121 4.2.2 designates first."""
        order = []
        if flags is not None and flags & FLAG_ACCEPTOR_SUBKEY and self.acceptor_subkey:
            order.append(self.acceptor_subkey)
        order += [k for k in (self.initiator_subkey, self.acceptor_subkey, self.session_key) if k is not None]
        return list(dict.fromkeys(order))


def recover_context_keys(ap_req, ap_rep, service_keys: list[Key]) -> KerberosContextKeys:
    """Decrypt the ticket with the first service key that opens it, then the authenticator and AP-REP.

    Raises KerberosCryptoError with a user-facing reason when no key opens the ticket.
    """
    if not ap_req.ticket_cipher:
        raise KerberosCryptoError("the AP-REQ carries no ticket cipher text")
    ticket = None
    for key in service_keys:
        if key.etype != ap_req.ticket_etype:
            continue
        try:
            ticket = parse_enc_ticket_part(key.decrypt(USAGE_TICKET, ap_req.ticket_cipher))
            break
        except KerberosCryptoError:
            continue
        except DecodeError as exc:
            raise KerberosCryptoError(f"the ticket decrypts but does not parse: {exc}") from None
    if ticket is None:
        tried = sum(k.etype == ap_req.ticket_etype for k in service_keys)
        raise KerberosCryptoError(f"none of the {tried} key(s) of its etype given decrypts its ticket "
                                  f"(no key for this principal)" if tried else "no key of its etype was given")
    out = KerberosContextKeys(ap_req.principal, ticket.client, ticket.session_key)
    try:
        auth = parse_authenticator(ticket.session_key.decrypt(USAGE_AUTHENTICATOR, ap_req.authenticator_cipher))
        out.initiator_subkey, out.gss_flags, out.initiator_seq = auth.subkey, auth.gss_flags, auth.seq_number
        out.authenticator_client = auth.client
    except (KerberosCryptoError, DecodeError) as exc:
        out.notes.append(f"authenticator: {exc}")
    if ap_rep is not None and ap_rep.cipher:
        try:
            rep = parse_enc_ap_rep_part(ticket.session_key.decrypt(USAGE_AP_REP, ap_rep.cipher))
            out.acceptor_subkey, out.acceptor_seq = rep.subkey, rep.seq_number
        except (KerberosCryptoError, DecodeError) as exc:
            out.notes.append(f"AP-REP: {exc}")
    return out


class KerberosDceSecurity:
    """Kerberos packet privacy on DCE/RPC PDUs: RFC 4121 (AES) or RFC 4757 (RC4) tokens."""

    __slots__ = ("keys", "_hit", "whole_pdu")

    def __init__(self, keys: KerberosContextKeys):
        self.keys = keys
        self._hit: dict[tuple[int, int | None], Key] = {}   # (token kind, flags) -> the key that worked
        self.whole_pdu: bool | None = None

    def unseal(self, direction: int, pdu: bytes, stub_span: tuple[int, int], verifier) -> bytes:
        start, end = stub_span
        stop = end + verifier.pad_len
        sealed = pdu[start:stop]
        whole = ((pdu[:start], pdu[stop:stop + 8]), (b"", b""))
        signed = whole if self.whole_pdu is not False else whole[::-1]
        token = verifier.token
        cfx, flags = self._token_form(token, b"\x05\x04", "per-message")
        kind, unwrap = (0, cfx_unwrap_dce) if cfx else (1, rc4_unwrap_dce)
        key, data = self._first_key(kind, flags, "Wrap",
                                    lambda key: cfx == (key.etype in AES_KEY_SIZES),
                                    lambda key: unwrap(key, token, sealed, signed))
        if self.whole_pdu is None:
            self.whole_pdu = _verifies_with_header(unwrap, key, token, sealed, whole[0])
        return data[:end - start]

    def verify(self, direction: int, pdu: bytes, stub_span: tuple[int, int], verifier) -> None:
        """Check the MIC token of a packet-integrity PDU (level 5, stub in clear); UnsealError if it fails.

        Signed with header signing: the PDU up to its auth_value; without: the stub and its padding.
        """
        start, end = stub_span
        stop = end + verifier.pad_len
        whole, body = pdu[:stop + 8], pdu[start:stop]
        candidates = (whole, body) if self.whole_pdu is not False else (body, whole)
        token = verifier.token
        cfx, flags = self._token_form(token, b"\x04\x04", "MIC")
        kind, check = (2, cfx_verify_mic) if cfx else (3, rc4_verify_mic)
        _, hit = self._first_key(kind, flags, "MIC",
                                 lambda key: cfx or key.etype == ETYPE_RC4,
                                 lambda key: check(key, token, candidates))
        if self.whole_pdu is None:
            self.whole_pdu = candidates[hit] is whole

    def _token_form(self, token: bytes, cfx_tok_id: bytes, what: str) -> tuple[bool, int | None]:
        """(RFC 4121 token, its Flags) of a per-message token: an RFC 4121 one starts with its
        TOK_ID and carries Flags next; an RFC 4757 (RC4) one sits in the GSS-API framing
        (0x60) and has none. UnsealError for anything else."""
        if token[:2] == cfx_tok_id:
            return True, token[2]
        if token[:1] == b"\x60":
            return False, None
        raise UnsealError(f"unknown Kerberos {what} token {token[:4].hex()} for {self.keys.client}")

    def _first_key(self, kind: int, flags: int | None, token_name: str, usable, attempt) -> tuple[Key, object]:
        """(key, attempt(key)) for the first usable key whose attempt raises no KerberosCryptoError.

        The key that worked last time for this kind of token (and flags: sent by the
        acceptor or not, acceptor subkey or not) is the only one tried, else every
        candidate of the context, and the one that works is remembered: a connection
        settles on its key at the first PDU. UnsealError with the last reason when none works.
        """
        cached = self._hit.get((kind, flags))
        keys = [cached] if cached is not None else self.keys.candidates(flags)
        last = "no key"
        for key in keys:
            if not usable(key):
                continue
            try:
                result = attempt(key)
            except KerberosCryptoError as exc:
                last = str(exc)
                continue
            self._hit[(kind, flags)] = key
            return key, result
        raise UnsealError(f"the Kerberos {token_name} token does not verify for {self.keys.client} ({last})")


def _verifies_with_header(unwrap, key: Key, token: bytes, sealed: bytes, head_tail) -> bool:
    try:
        unwrap(key, token, sealed, (head_tail,))
        return True
    except KerberosCryptoError:
        return False
