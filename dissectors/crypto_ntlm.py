"""NTLMSSP session security from a captured handshake (MS-NLMP 3.3, 3.4).

Given the NEGOTIATE, CHALLENGE and AUTHENTICATE messages of one security context
and the user's NT hash (the password's MD4, NTOWFv1), this recomputes what the
client and server computed:

- the response keys (NTOWFv1/LMOWFv1 for NTLM v1, NTOWFv2 for NTLM v2), checked
  against the captured NT response, so a wrong password is known at once;
- SessionBaseKey, KeyExchangeKey (KXKEY, 3.4.5.1) and, with
  NTLMSSP_NEGOTIATE_KEY_EXCH, the ExportedSessionKey the client chose (RC4 of
  EncryptedRandomSessionKey under KeyExchangeKey);
- SIGNKEY / SEALKEY per direction (3.4.5.2, 3.4.5.3);
- and then, message after message in connection-oriented mode (3.4), the RC4
  sealing state and the sequence number of each direction, with the signature
  of every message verified (MAC, 3.4.4.1 without and 3.4.4.2 with extended
  session security).

`NtlmSession` is symmetric: the sample generator seals with it, the dissector
unseals with it. `NtlmDceSecurity` applies it to DCE/RPC PDUs (MS-RPCE
3.3.1.5.2.2: the stub and its auth padding are sealed; the signature covers the
whole PDU up to the auth_value, or only the body when the peers do without
header signing: both are tried, the one that verifies is remembered). At packet
integrity (level 5) the stub travels in clear and only the signature is checked;
the RC4 handle still moves by the signature's checksum (with key exchange) or
its whole encrypted part (without extended session security), as the sender's
did. `authenticate_mic` recomputes the AUTHENTICATE message's MIC (MS-NLMP
3.1.5.1.2), which binds the three handshake messages together.

Nothing here keeps or prints a password; errors name the user and the reason.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import zlib

from cryptography.hazmat.primitives.ciphers import Cipher, modes

try:
    from cryptography.hazmat.decrepit.ciphers.algorithms import ARC4, TripleDES
except ImportError:  # pragma: no cover - cryptography < 43
    from cryptography.hazmat.primitives.ciphers.algorithms import ARC4, TripleDES

# The MS-NLMP 2.2.2.5 flags this module acts on and the AUTHENTICATE message's MIC field,
# defined once beside the message parser.
from .ntlmssp import MIC_LEN, MIC_OFFSET
from .ntlmssp import NTLMSSP_NEGOTIATE_56 as NEGOTIATE_56
from .ntlmssp import NTLMSSP_NEGOTIATE_128 as NEGOTIATE_128
from .ntlmssp import NTLMSSP_NEGOTIATE_DATAGRAM as NEGOTIATE_DATAGRAM
from .ntlmssp import NTLMSSP_NEGOTIATE_EXTENDED_SESSIONSECURITY as NEGOTIATE_EXTENDED_SESSIONSECURITY
from .ntlmssp import NTLMSSP_NEGOTIATE_KEY_EXCH as NEGOTIATE_KEY_EXCH
from .ntlmssp import NTLMSSP_NEGOTIATE_LM_KEY as NEGOTIATE_LM_KEY
from .ntlmssp import NTLMSSP_REQUEST_NON_NT_SESSION_KEY as NEGOTIATE_REQUEST_NON_NT_SESSION_KEY

CLIENT, SERVER = 0, 1          # direction of a message: 0 client->server, 1 server->client

_SIGN_MAGIC = (b"session key to client-to-server signing key magic constant\x00",
               b"session key to server-to-client signing key magic constant\x00")
_SEAL_MAGIC = (b"session key to client-to-server sealing key magic constant\x00",
               b"session key to server-to-client sealing key magic constant\x00")
_LM_MAGIC = b"KGS!@#$%"
_U32 = struct.Struct("<I")
_SIG_VERSION = b"\x01\x00\x00\x00"


class NtlmKeyError(Exception):
    """The handshake and the secret given do not yield session keys (the reason is user-facing)."""


# --------------------------------------------------------------------------
# primitives (MS-NLMP 6)

_MD4_SHIFTS = ((3, 7, 11, 19), (3, 5, 9, 13), (3, 9, 11, 15))
_MD4_ORDER = (tuple(range(16)),
              (0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15),
              (0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15))


def md4(data: bytes) -> bytes:
    """RFC 1320 MD4 (OpenSSL 3 no longer offers it by default; only used on short secrets)."""
    try:
        return hashlib.new("md4", data).digest()
    except ValueError:
        pass
    mask = 0xFFFFFFFF
    msg = bytes(data) + b"\x80" + b"\x00" * ((55 - len(data)) % 64) + struct.pack("<Q", len(data) * 8)
    h = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476]
    rounds = (lambda x, y, z: (x & y) | (~x & z),
              lambda x, y, z: (x & y) | (x & z) | (y & z),
              lambda x, y, z: x ^ y ^ z)
    for off in range(0, len(msg), 64):
        x = struct.unpack_from("<16I", msg, off)
        a, b, c, d = h
        for r, (f, add) in enumerate(zip(rounds, (0, 0x5A827999, 0x6ED9EBA1))):
            for i, k in enumerate(_MD4_ORDER[r]):
                s = _MD4_SHIFTS[r][i % 4]
                t = (a + f(b, c, d) + x[k] + add) & mask
                a, b, c, d = d, ((t << s) | (t >> (32 - s))) & mask, b, c
        h = [(v + w) & mask for v, w in zip(h, (a, b, c, d))]
    return struct.pack("<4I", *h)


def hmac_md5(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, "md5")


def _des_key(key7: bytes) -> bytes:
    """A 7-octet key spread over 8 octets, 7 bits each, low bit left for parity (MS-NLMP 6, DES)."""
    k = int.from_bytes(key7, "big")
    return bytes(((k >> (49 - 7 * i)) & 0x7F) << 1 for i in range(8))


def des(key7: bytes, block: bytes) -> bytes:
    """DES(K, D) of MS-NLMP 6: one block under a 7-octet key (single DES as 3DES with K1=K2=K3)."""
    k = _des_key(key7)
    enc = Cipher(TripleDES(k * 3), modes.ECB()).encryptor()
    return enc.update(block) + enc.finalize()


def desl(key16: bytes, data8: bytes) -> bytes:
    """DESL(K, D) of MS-NLMP 6: three DES blocks under K[0..6], K[7..13], K[14..15]+Z(5)."""
    k = key16 + b"\x00" * 5
    return des(k[0:7], data8) + des(k[7:14], data8) + des(k[14:21], data8)


class Rc4:
    """A keyed RC4 stream that keeps its state across calls (MS-NLMP 6, RC4Init / RC4)."""

    __slots__ = ("_enc", "_s", "_i", "_j")

    def __init__(self, key: bytes):
        key = bytes(key)
        if len(key) * 8 in ARC4.key_sizes:
            self._enc = Cipher(ARC4(key), None).encryptor()
        else:  # key lengths OpenSSL refuses: a plain implementation
            self._enc = None
            s = list(range(256))
            j = 0
            for i in range(256):
                j = (j + s[i] + key[i % len(key)]) & 0xFF
                s[i], s[j] = s[j], s[i]
            self._s, self._i, self._j = s, 0, 0

    def update(self, data: bytes) -> bytes:
        if self._enc is not None:
            return self._enc.update(data)
        s, i, j = self._s, self._i, self._j
        out = bytearray(len(data))
        for n, byte in enumerate(data):
            i = (i + 1) & 0xFF
            j = (j + s[i]) & 0xFF
            s[i], s[j] = s[j], s[i]
            out[n] = byte ^ s[(s[i] + s[j]) & 0xFF]
        self._i, self._j = i, j
        return bytes(out)


def rc4k(key: bytes, data: bytes) -> bytes:
    """RC4K(K, D): a one-shot RC4 under a fresh key."""
    return Rc4(key).update(data)


# --------------------------------------------------------------------------
# response keys and responses (MS-NLMP 3.3.1, 3.3.2)


def ntowfv1(password: str) -> bytes:
    """NTOWFv1: MD4(UNICODE(Passwd)), the 'NT hash'."""
    return md4(password.encode("utf-16-le"))


def lmowfv1(password: str) -> bytes | None:
    """LMOWFv1: DES of the constant under the upper-cased OEM password (None past 14 characters)."""
    raw = password.upper().encode("cp437", "replace")
    if len(raw) > 14:
        return None
    raw = raw.ljust(14, b"\x00")
    return des(raw[:7], _LM_MAGIC) + des(raw[7:], _LM_MAGIC)


def ntowfv2(nt_hash: bytes, user: str, domain: str) -> bytes:
    """NTOWFv2 (= LMOWFv2): HMAC_MD5(NTOWFv1, UNICODE(Uppercase(User) + UserDom))."""
    return hmac_md5(nt_hash, (user.upper() + domain).encode("utf-16-le"))


def ntlmv2_client_blob(timestamp: int, client_challenge: bytes, av_pairs: bytes) -> bytes:
    """The 'temp' of 3.3.2: NTLMv2_CLIENT_CHALLENGE (2.2.2.7) ending in Z(4)."""
    return (b"\x01\x01" + b"\x00" * 6 + struct.pack("<Q", timestamp) + client_challenge
            + b"\x00" * 4 + av_pairs + b"\x00" * 4)


def ntlmv2_response(response_key: bytes, server_challenge: bytes, blob: bytes) -> tuple[bytes, bytes]:
    """(NTChallengeResponse, SessionBaseKey) of NTLM v2 for a client blob ('temp')."""
    proof = hmac_md5(response_key, server_challenge + blob)
    return proof + blob, hmac_md5(response_key, proof)


def lmv2_response(response_key: bytes, server_challenge: bytes, client_challenge: bytes) -> bytes:
    return hmac_md5(response_key, server_challenge + client_challenge) + client_challenge


def ntlmv1_responses(flags: int, nt_hash: bytes, lm_hash: bytes | None, server_challenge: bytes,
                     client_challenge: bytes) -> tuple[bytes, bytes, bytes]:
    """(LmChallengeResponse, NtChallengeResponse, SessionBaseKey) of NTLM v1 (3.3.1)."""
    if flags & NEGOTIATE_EXTENDED_SESSIONSECURITY:
        nt = desl(nt_hash, hashlib.md5(server_challenge + client_challenge).digest()[:8])
        lm = client_challenge + b"\x00" * 16
    else:
        nt = desl(nt_hash, server_challenge)
        lm = desl(lm_hash, server_challenge) if lm_hash is not None else nt
    return lm, nt, md4(nt_hash)


# --------------------------------------------------------------------------
# keys (MS-NLMP 3.4.5)


def kxkey(flags: int, session_base_key: bytes, lm_response: bytes, server_challenge: bytes,
          lm_hash: bytes | None, ntlm_v2: bool) -> bytes:
    """KXKEY (3.4.5.1); NTLM v2 uses SessionBaseKey as is."""
    if ntlm_v2:
        return session_base_key
    if flags & NEGOTIATE_EXTENDED_SESSIONSECURITY:
        return hmac_md5(session_base_key, server_challenge + lm_response[:8])
    if flags & NEGOTIATE_LM_KEY:
        if lm_hash is None:
            raise NtlmKeyError("NEGOTIATE_LM_KEY needs the LM hash, which a password longer than 14 characters has not")
        return des(lm_hash[:7], lm_response[:8]) + des(lm_hash[7:8] + b"\xbd" * 6, lm_response[:8])
    if flags & NEGOTIATE_REQUEST_NON_NT_SESSION_KEY:
        if lm_hash is None:
            raise NtlmKeyError("REQUEST_NON_NT_SESSION_KEY needs the LM hash")
        return lm_hash[:8] + b"\x00" * 8
    return session_base_key


def sign_key(flags: int, exported_session_key: bytes, direction: int) -> bytes | None:
    """SIGNKEY (3.4.5.2): only with extended session security."""
    if not flags & NEGOTIATE_EXTENDED_SESSIONSECURITY:
        return None
    return hashlib.md5(exported_session_key + _SIGN_MAGIC[direction]).digest()


def seal_key(flags: int, exported_session_key: bytes, direction: int) -> bytes:
    """SEALKEY (3.4.5.3): 40, 56 or 128 bits of the session key, per direction with ESS."""
    k = exported_session_key
    if flags & NEGOTIATE_EXTENDED_SESSIONSECURITY:
        if not flags & NEGOTIATE_128:
            k = k[:7] if flags & NEGOTIATE_56 else k[:5]
        return hashlib.md5(k + _SEAL_MAGIC[direction]).digest()
    if flags & (NEGOTIATE_LM_KEY | NEGOTIATE_DATAGRAM):
        return k[:7] + b"\xa0" if flags & NEGOTIATE_56 else k[:5] + b"\xe5\x38\xb0"
    return k


# --------------------------------------------------------------------------
# from a captured handshake to the exported session key


def _response_key_v2(nt_hash: bytes, user: str, domain: str, server_challenge: bytes, nt_response: bytes):
    """The NTOWFv2 under which the captured NTProofStr verifies, trying the domain spellings clients use."""
    proof, blob = nt_response[:16], nt_response[16:]
    for dom in dict.fromkeys((domain, domain.upper(), "")):
        key = ntowfv2(nt_hash, user, dom)
        if hmac.compare_digest(hmac_md5(key, server_challenge + blob), proof):
            return key
    return None


def exported_session_key(challenge, authenticate, nt_hash: bytes,
                         lm_hash: bytes | None = None) -> tuple[int, bytes]:
    """(negotiated flags, ExportedSessionKey) of a context, or NtlmKeyError saying why not.

    challenge / authenticate: the parsed CHALLENGE and AUTHENTICATE messages
    (dissectors.auth.NtlmChallenge / NtlmAuthenticate); the flags that count are
    the AUTHENTICATE's (the client's final choice, MS-NLMP 3.1.5.1.2).
    """
    flags = authenticate.flags
    server_challenge = challenge.server_challenge
    nt = authenticate.nt_response
    lm = authenticate.lm_response
    if not nt:
        raise NtlmKeyError("the user authenticated anonymously or with an LM response only: there is no session key")
    if len(nt) > 24:
        key = _response_key_v2(nt_hash, authenticate.user, authenticate.domain, server_challenge, nt)
        if key is None:
            raise NtlmKeyError("its NTLMv2 response does not match")
        base = hmac_md5(key, nt[:16])
        kx = base
    else:
        lm_cc = lm[:8] if len(lm) >= 8 else b"\x00" * 8
        _lm, expect, base = ntlmv1_responses(flags, nt_hash, lm_hash, server_challenge, lm_cc)
        if not hmac.compare_digest(expect, nt):
            raise NtlmKeyError("its NTLMv1 response does not match")
        kx = kxkey(flags, base, lm, server_challenge, lm_hash, False)
    if flags & NEGOTIATE_KEY_EXCH and authenticate.encrypted_session_key:
        if len(authenticate.encrypted_session_key) != 16:
            raise NtlmKeyError(f"EncryptedRandomSessionKey of {len(authenticate.encrypted_session_key)} octets")
        return flags, rc4k(kx, authenticate.encrypted_session_key)
    return flags, kx


def authenticate_mic(exported: bytes, negotiate: bytes, challenge: bytes, authenticate: bytes) -> bytes:
    """MIC of MS-NLMP 3.1.5.1.2: HMAC_MD5(ExportedSessionKey, NEGOTIATE | CHALLENGE | AUTHENTICATE),
    the AUTHENTICATE message taken with its MIC field zeroed."""
    zeroed = authenticate[:MIC_OFFSET] + b"\x00" * MIC_LEN + authenticate[MIC_OFFSET + MIC_LEN:]
    return hmac_md5(exported, negotiate + challenge + zeroed)


# --------------------------------------------------------------------------
# message security (MS-NLMP 3.4.2 - 3.4.4), connection-oriented


class _Channel:
    """One direction's sealing state: RC4 handle, signing key, sequence number."""

    __slots__ = ("rc4", "sign_key", "seq")

    def __init__(self, rc4: Rc4, sign: bytes | None):
        self.rc4 = rc4
        self.sign_key = sign
        self.seq = 0


class NtlmSession:
    """The sealing and signing state of one NTLM security context, both directions.

    Without extended session security one RC4 handle and one sequence number serve
    both directions (MS-NLMP 3.4.3: half-duplex), so messages must be processed in
    the order they were sent; with it, each direction has its own.
    """

    __slots__ = ("flags", "channels", "ess", "key_exch")

    def __init__(self, flags: int, exported_session_key: bytes):
        self.flags = flags
        self.ess = bool(flags & NEGOTIATE_EXTENDED_SESSIONSECURITY)
        self.key_exch = bool(flags & NEGOTIATE_KEY_EXCH)
        if self.ess:
            self.channels = tuple(_Channel(Rc4(seal_key(flags, exported_session_key, d)),
                                           sign_key(flags, exported_session_key, d)) for d in (CLIENT, SERVER))
        else:
            shared = _Channel(Rc4(seal_key(flags, exported_session_key, CLIENT)), None)
            self.channels = (shared, shared)

    # sender side: SEAL (3.4.3) = encrypt, then MAC over the clear message
    def encrypt(self, direction: int, data: bytes) -> bytes:
        return self.channels[direction].rc4.update(data)

    def sign(self, direction: int, message: bytes) -> bytes:
        """NTLMSSP_MESSAGE_SIGNATURE (2.2.2.9) of message; advances the sequence number."""
        ch = self.channels[direction]
        seq = _U32.pack(ch.seq)
        ch.seq += 1
        if self.ess:
            checksum = hmac_md5(ch.sign_key, seq + message)[:8]
            if self.key_exch:
                checksum = ch.rc4.update(checksum)
            return _SIG_VERSION + checksum + seq
        # RandomPad, CRC32 and SeqNum all pass through the shared handle (3.4.4.1)
        return _SIG_VERSION + ch.rc4.update(b"\x00" * 4 + _U32.pack(zlib.crc32(message)) + seq)

    # receiver side
    def decrypt(self, direction: int, data: bytes) -> bytes:
        return self.channels[direction].rc4.update(data)

    def verify(self, direction: int, messages: tuple[bytes, ...], signature: bytes) -> int:
        """Index of the candidate message the signature verifies, or -1.

        Must follow `decrypt` of the same message (the RC4 handle moves on in the
        sender's order). The sequence number follows the sender's.
        """
        if len(signature) != 16 or signature[:4] != _SIG_VERSION:
            return -1
        ch = self.channels[direction]
        if self.ess:
            checksum = signature[4:12]
            if self.key_exch:
                checksum = ch.rc4.update(checksum)
            seq = signature[12:16]
            (n,) = _U32.unpack(seq)
            ch.seq = n + 1
            for i, message in enumerate(messages):
                if hmac.compare_digest(hmac_md5(ch.sign_key, seq + message)[:8], checksum):
                    return i
            return -1
        clear = ch.rc4.update(signature[4:16])
        seq = ch.seq
        ch.seq += 1
        if _U32.unpack_from(clear, 8)[0] != seq:
            return -1
        crc = _U32.unpack_from(clear, 4)[0]
        for i, message in enumerate(messages):
            if zlib.crc32(message) == crc:
                return i
        return -1


class UnsealError(Exception):
    """A sealed PDU that does not decrypt, or a sealed or signed one whose signature does not verify."""


class NtlmDceSecurity:
    """NTLMSSP packet privacy on DCE/RPC PDUs (MS-RPCE 3.3.1.5.2.2)."""

    __slots__ = ("session", "whole_pdu", "principal")

    def __init__(self, session: NtlmSession, principal: str):
        self.session = session
        self.principal = principal
        self.whole_pdu: bool | None = None     # learned from the first signature that verifies

    def unseal(self, direction: int, pdu: bytes, stub_span: tuple[int, int], verifier) -> bytes:
        start, end = stub_span
        stop = end + verifier.pad_len
        plain = self.session.decrypt(direction, pdu[start:stop])
        self._check(direction, pdu[:start] + plain + pdu[stop:stop + 8], plain, verifier.token)
        return plain[:end - start]

    def verify(self, direction: int, pdu: bytes, stub_span: tuple[int, int], verifier) -> None:
        """Check the signature of a packet-integrity PDU (MS-RPCE 3.3.1.5.2.2, level 5); UnsealError if it fails.

        The stub is clear: the candidates are the PDU up to its auth_value (header
        signing) and the stub with its auth padding alone.
        """
        start, end = stub_span
        stop = end + verifier.pad_len
        self._check(direction, pdu[:stop + 8], pdu[start:stop], verifier.token)

    def _check(self, direction: int, whole: bytes, body: bytes, signature: bytes) -> None:
        """The signature covers either the whole PDU up to its auth_value (header signing
        negotiated) or the stub and its padding alone; the form the first verifying
        signature used is tried first from then on. UnsealError if neither verifies."""
        candidates = (whole, body) if self.whole_pdu is not False else (body, whole)
        hit = self.session.verify(direction, candidates, signature)
        if hit < 0:
            raise UnsealError(f"the NTLMSSP signature does not verify for {self.principal}")
        if self.whole_pdu is None:
            self.whole_pdu = candidates[hit] is whole

    @staticmethod
    def seal(session: NtlmSession, direction: int, pdu_head: bytes, plain: bytes, trailer: bytes,
             whole_pdu: bool = True) -> tuple[bytes, bytes]:
        """Sender side for the generator: (sealed stub+pad, signature) for a PDU laid out as head|plain|trailer."""
        sealed = session.encrypt(direction, plain)
        return sealed, session.sign(direction, pdu_head + plain + trailer if whole_pdu else plain)
