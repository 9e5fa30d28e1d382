"""Packet privacy for synthetic captures: a clear DCE/RPC session turned into a sealed one
(MS-RPCE 2.2.2.11, 3.3.1.5.2.2) by NTLMSSP (MS-NLMP) or Kerberos (RFC 4120, RFC 4121,
MS-KILE 3.4.5.1), and the test-only secrets that decrypt it.

TEST-ONLY SECRETS. The sealed samples use credentials made up for them and published
here so that anyone can decrypt them (wmiscope, tshark, impacket): user WMILAB\\analyst,
password SAMPLE_PASSWORD; the Kerberos service key of
host/srv-files01.wmilab.example@WMILAB.EXAMPLE comes from a made-up password. They protect
nothing. They are still not kept in the repository: `python pcaps/generate.py --secrets DIR`
(write_secrets) writes the keytab and a credentials file in wmiscope's format listing both
(the tests do that in a temporary directory).

Every "random" value (challenges, session keys, confounders, timestamps) is fixed, so a
sealed sample is byte-identical each time it is written.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from ..dissectors import crypto_kerberos, crypto_ntlm
from ..dissectors.kerberos import OID_KRB5, OID_MS_KRB5
from ..dissectors.ntlmssp import OID_NTLMSSP
from ..dissectors.dcerpc import (ALTER_CONTEXT, ALTER_CONTEXT_RESP, BIND, BIND_ACK, PFC_OBJECT_UUID,
                                 PFC_SUPPORT_HEADER_SIGN, REQUEST, RESPONSE)
from .dcom_session import IWBEM_LEVEL1_LOGIN
from .der import (ctx, der, encrypted_data, encryption_key, general_string, generalized_time, integer, octets,
                  principal_name, seq, spnego_init, spnego_resp)
from .wire import auth3, bind, bind_ack

SAMPLE_DOMAIN = "WMILAB"
SAMPLE_DNS_DOMAIN = "wmilab.example"
SAMPLE_USER = "analyst"
SAMPLE_PASSWORD = "Sample-Only-Pa55!"
SAMPLE_WORKSTATION = "WKS-ANALYST7"
SAMPLE_SERVER_NAME = "SRV-FILES01"
SAMPLE_SERVER_DNS_NAME = "srv-files01.wmilab.example"
SAMPLE_REALM = "WMILAB.EXAMPLE"
SAMPLE_SERVICE = ("host", SAMPLE_SERVER_DNS_NAME)
SAMPLE_SERVICE_PASSWORD = "srv-files01 machine account, sample only"
SAMPLE_KVNO = 2

RPC_C_AUTHN_GSS_NEGOTIATE, RPC_C_AUTHN_WINNT, RPC_C_AUTHN_GSS_KERBEROS = 9, 10, 16
PKT_PRIVACY = 6
_FILETIME_2023 = 133_444_000_000_000_000          # MsvAvTimestamp / client blob time (2023-11-14)
_U16, _U32 = struct.Struct("<H"), struct.Struct("<I")
_LENGTHS = struct.Struct("<HH")                   # frag_length, auth_length of the common header
_SEC_TRAILER = struct.Struct("<BBBBI")            # auth_type, auth_level, pad_length, reserved, context_id


def _fixed(label: str, n: int) -> bytes:
    """A 'random' value that is the same on every run."""
    return hashlib.sha256(b"wmiscope sample: " + label.encode()).digest()[:n]


def _relength(pdu: bytes, end: int, frag_len: int, auth_len: int, flags: int = 0) -> bytes:
    """The PDU's header up to `end`, frag_length and auth_length rewritten, `flags` added."""
    return pdu[:3] + bytes((pdu[3] | flags,)) + pdu[4:8] + _LENGTHS.pack(frag_len, auth_len) + pdu[12:end]


class _Sealer:
    """Turns the clear session into a sealed one, PDU by PDU (MS-RPCE 2.2.2.11, 3.3.1.5.2.2).

    The first bind (or alter_context) and its reply carry the first two legs of the
    handshake, a third leg follows; every request and response is padded to 16 octets, sealed
    and given a sec_trailer and verifier at level 6 (packet privacy). Binds say
    PFC_SUPPORT_HEADER_SIGN, as Windows does. Sealed fragments grow by the padding, the
    sec_trailer and the verifier (up to 15 + 8 + 76 octets): build them with that room.
    """

    auth_type = 0
    verifier_len = 0
    ctx_id = 0

    def __init__(self) -> None:
        self.leg = 0
        self.bind_call = 0

    def secure(self, steps):
        out = []
        for direction, pdu in steps:
            ptype = pdu[2]
            if ptype in (BIND, ALTER_CONTEXT) and self.leg == 0:   # alter_context: for a further context
                self.leg, self.bind_call = 1, _U32.unpack_from(pdu, 12)[0]
                out.append((direction, self._with_auth(pdu, self.first_leg())))
            elif ptype in (BIND_ACK, ALTER_CONTEXT_RESP) and self.leg == 1:
                self.leg = 2
                out.append((direction, self._with_auth(pdu, self.second_leg())))
                out += self.third_leg()
            elif ptype in (REQUEST, RESPONSE) and self.leg == 2:
                out.append((direction, self._seal_pdu(direction, pdu)))
            else:
                out.append((direction, pdu))
        return out

    def _sec_trailer(self, pad: int) -> bytes:
        return _SEC_TRAILER.pack(self.auth_type, PKT_PRIVACY, pad, 0, self.ctx_id)

    def _with_auth(self, pdu: bytes, token: bytes) -> bytes:
        """A bind-type PDU with a sec_trailer and auth_value appended (4-octet aligned)."""
        body = pdu[16:]
        pad = (-len(body)) % 4
        frag_len = 16 + len(body) + pad + 8 + len(token)
        return _relength(pdu, 16, frag_len, len(token), PFC_SUPPORT_HEADER_SIGN) \
            + body + b"\x00" * pad + self._sec_trailer(pad) + token

    def _auth3(self, token: bytes) -> bytes:
        return self._with_auth(auth3(self.bind_call), token)

    def _seal_pdu(self, direction: int, pdu: bytes) -> bytes:
        ptype, flags = pdu[2], pdu[3]
        hdr_len = 24 + (16 if ptype == REQUEST and flags & PFC_OBJECT_UUID else 0)
        stub = pdu[hdr_len:]
        pad = (-len(stub)) % 16
        plain = stub + b"\x00" * pad
        head = _relength(pdu, hdr_len, hdr_len + len(plain) + 8 + self.verifier_len, self.verifier_len)
        trailer = self._sec_trailer(pad)
        sealed, token = self.wrap(direction, head, plain, trailer)
        assert len(token) == self.verifier_len
        return head + sealed + trailer + token

    def first_leg(self) -> bytes:
        raise NotImplementedError

    def second_leg(self) -> bytes:
        raise NotImplementedError

    def third_leg(self) -> list:
        raise NotImplementedError

    def wrap(self, direction, head, plain, trailer):
        raise NotImplementedError


# ---- NTLMSSP (MS-NLMP 2.2.1, 3.1.5, 3.2.5)

NTLM_NEGOTIATE_FLAGS = 0xE2088297
NTLM_CHALLENGE_FLAGS = 0xE28A8235
NTLM_VERSION = bytes((10, 0)) + _U16.pack(19041) + b"\x00\x00\x00\x0f"
_NTLM_FIELD = struct.Struct("<HHI")               # Len, MaxLen, BufferOffset of a message field (2.2.1)


def _av_pairs(pairs: list[tuple[int, bytes]]) -> bytes:
    return b"".join(_U16.pack(i) + _U16.pack(len(v)) + v for i, v in pairs) + b"\x00\x00\x00\x00"


def _utf16(text: str) -> bytes:
    return text.encode("utf-16-le")


class NtlmSealer(_Sealer):
    """NTLMSSP at packet privacy: NEGOTIATE in the bind, CHALLENGE in the bind_ack, AUTHENTICATE in auth3."""

    auth_type = RPC_C_AUTHN_WINNT
    verifier_len = 16

    def __init__(self, password: str = SAMPLE_PASSWORD, ntlm_v2: bool = True, ess: bool = True,
                 auth_type: int = RPC_C_AUTHN_WINNT) -> None:
        super().__init__()
        self.password = password
        self.ntlm_v2 = ntlm_v2
        self.auth_flags = 0xE2888235 if ess else 0xE2888235 & ~crypto_ntlm.NEGOTIATE_EXTENDED_SESSIONSECURITY
        self.auth_type = auth_type
        self.messages: list[bytes] = []
        self.session = None

    def _spnego(self, leg: int, token: bytes) -> bytes:
        if self.auth_type != RPC_C_AUTHN_GSS_NEGOTIATE:
            return token
        if leg == 1:
            return spnego_init([OID_NTLMSSP], token)
        return spnego_resp(1 if leg == 2 else None, OID_NTLMSSP if leg == 2 else None, token)

    def first_leg(self) -> bytes:
        msg = (b"NTLMSSP\x00" + _U32.pack(1) + _U32.pack(NTLM_NEGOTIATE_FLAGS)
               + _NTLM_FIELD.pack(0, 0, 40) * 2 + NTLM_VERSION)
        self.messages.append(msg)
        return self._spnego(1, msg)

    def second_leg(self) -> bytes:
        self.target_info = _av_pairs([
            (2, _utf16(SAMPLE_DOMAIN)), (1, _utf16(SAMPLE_SERVER_NAME)), (4, _utf16(SAMPLE_DNS_DOMAIN)),
            (3, _utf16(SAMPLE_SERVER_DNS_NAME)), (5, _utf16(SAMPLE_DNS_DOMAIN)),
            (7, struct.pack("<Q", _FILETIME_2023))])
        self.server_challenge = _fixed("server challenge", 8)
        name = _utf16(SAMPLE_DOMAIN)
        offset = 56
        msg = (b"NTLMSSP\x00" + _U32.pack(2) + _NTLM_FIELD.pack(len(name), len(name), offset)
               + _U32.pack(NTLM_CHALLENGE_FLAGS) + self.server_challenge + b"\x00" * 8
               + _NTLM_FIELD.pack(len(self.target_info), len(self.target_info), offset + len(name))
               + NTLM_VERSION + name + self.target_info)
        self.messages.append(msg)
        return self._spnego(2, msg)

    def third_leg(self) -> list:
        flags = self.auth_flags
        nt_hash = crypto_ntlm.ntowfv1(self.password)
        client_challenge = _fixed("client challenge", 8)
        if self.ntlm_v2:
            key = crypto_ntlm.ntowfv2(nt_hash, SAMPLE_USER, SAMPLE_DOMAIN)
            client_av = self.target_info[:-4] + _av_pairs([(6, _U32.pack(2))])   # MsvAvFlags: MIC present
            blob = crypto_ntlm.ntlmv2_client_blob(_FILETIME_2023, client_challenge, client_av)
            nt, base = crypto_ntlm.ntlmv2_response(key, self.server_challenge, blob)
            lm = b"\x00" * 24                 # MS-NLMP 3.1.5.1.2: with MsvAvTimestamp, Z(24)
            kx = base
        else:
            lm_hash = crypto_ntlm.lmowfv1(self.password)
            lm, nt, base = crypto_ntlm.ntlmv1_responses(flags, nt_hash, lm_hash, self.server_challenge,
                                                        client_challenge)
            kx = crypto_ntlm.kxkey(flags, base, lm, self.server_challenge, lm_hash, False)
        exported = _fixed("exported session key", 16)
        enc_key = crypto_ntlm.rc4k(kx, exported)
        fields = [lm, nt, _utf16(SAMPLE_DOMAIN), _utf16(SAMPLE_USER), _utf16(SAMPLE_WORKSTATION), enc_key]
        header_len = crypto_ntlm.MIC_OFFSET + (crypto_ntlm.MIC_LEN if self.ntlm_v2 else 0)   # NTLMv2: room for the MIC
        descr, payload = b"", b""
        for value in fields:
            descr += _NTLM_FIELD.pack(len(value), len(value), header_len + len(payload))
            payload += value
        head = b"NTLMSSP\x00" + _U32.pack(3) + descr + _U32.pack(flags) + NTLM_VERSION
        if self.ntlm_v2:
            mic = crypto_ntlm.authenticate_mic(exported, self.messages[0], self.messages[1],
                                               head + b"\x00" * crypto_ntlm.MIC_LEN + payload)
            msg = head + mic + payload
        else:
            msg = head + payload
        self.messages.append(msg)
        self.session = crypto_ntlm.NtlmSession(flags, exported)
        return [(0, self._auth3(self._spnego(3, msg)))]

    def wrap(self, direction, head, plain, trailer):
        return crypto_ntlm.NtlmDceSecurity.seal(self.session, direction, head, plain, trailer)


# ---- Kerberos (RFC 4120, RFC 4121, MS-KILE 3.4.5.1 three-leg DCE style)

_SAMPLE_AUTH_TIME = "20231114221320Z"


def sample_service_key(etype: int = 18):
    salt = crypto_kerberos.default_salt(SAMPLE_REALM, list(SAMPLE_SERVICE))
    return crypto_kerberos.string_to_key(etype, SAMPLE_SERVICE_PASSWORD, salt)


class KerberosSealer(_Sealer):
    """Kerberos at packet privacy through SPNEGO (or directly, auth type 16), DCE style.

    bind: AP-REQ (mutual, GSS_C_DCE_STYLE); bind_ack: the server's AP-REP with an
    acceptor subkey; alter_context: the client's AP-REP (MS-KILE 3.4.5.1);
    alter_context_resp: accept-completed. Calls: RFC 4121 Wrap tokens under the
    acceptor subkey (AES), or RFC 4757 tokens (RC4).
    """

    def __init__(self, etype: int = 18, auth_type: int = RPC_C_AUTHN_GSS_NEGOTIATE,
                 service_key=None, header_signing: bool = True) -> None:
        super().__init__()
        self.etype = etype
        self.auth_type = auth_type
        self.service_key = service_key or sample_service_key(etype)
        self.header_signing = header_signing
        size = 32 if etype == 18 else 16
        Key = crypto_kerberos.Key
        self.session_key = Key(etype, _fixed(f"session key {etype}", size))
        self.initiator_subkey = Key(etype, _fixed(f"initiator subkey {etype}", size))
        self.acceptor_subkey = Key(etype, _fixed(f"acceptor subkey {etype}", size))
        self.seq = [0x1A2B3C4D & 0x7FFFFFFF, 0x5E6F7081 & 0x7FFFFFFF]
        self.verifier_len = 76 if etype in (17, 18) else 45
        self.n = 0

    def _conf(self) -> bytes:
        self.n += 1
        return _fixed(f"confounder {self.n}", 16)

    def _negotiated(self) -> bool:
        return self.auth_type == RPC_C_AUTHN_GSS_NEGOTIATE

    def first_leg(self) -> bytes:
        client = principal_name(1, SAMPLE_USER)
        enc_ticket = der(0x63, seq(
            ctx(0, der(0x03, b"\x00\x40\xa1\x00\x00")), ctx(1, encryption_key(self.session_key)),
            ctx(2, general_string(SAMPLE_REALM)), ctx(3, client),
            ctx(4, seq(ctx(0, integer(1)), ctx(1, octets(b"")))),
            ctx(5, generalized_time(_SAMPLE_AUTH_TIME)), ctx(6, generalized_time(_SAMPLE_AUTH_TIME)),
            ctx(7, generalized_time("20231115081320Z"))))
        ticket = der(0x61, seq(
            ctx(0, integer(5)), ctx(1, general_string(SAMPLE_REALM)), ctx(2, principal_name(2, *SAMPLE_SERVICE)),
            ctx(3, encrypted_data(self.etype, self.service_key.encrypt(2, enc_ticket, self._conf()), SAMPLE_KVNO))))
        gss_flags = crypto_kerberos.GSS_C_DCE_STYLE | 0x3E       # mutual, replay, sequence, conf, integ
        checksum = _U32.pack(16) + b"\x00" * 16 + _U32.pack(gss_flags)
        authenticator = der(0x62, seq(
            ctx(0, integer(5)), ctx(1, general_string(SAMPLE_REALM)), ctx(2, client),
            ctx(3, seq(ctx(0, integer(0x8003)), ctx(1, octets(checksum)))),
            ctx(4, integer(123456)), ctx(5, generalized_time(_SAMPLE_AUTH_TIME)),
            ctx(6, encryption_key(self.initiator_subkey)), ctx(7, integer(self.seq[0]))))
        ap_req = der(0x6E, seq(
            ctx(0, integer(5)), ctx(1, integer(14)), ctx(2, der(0x03, b"\x00\x20\x00\x00\x00")), ctx(3, ticket),
            ctx(4, encrypted_data(self.etype, self.session_key.encrypt(11, authenticator, self._conf())))))
        # MS-KILE 3.4.5.1: in DCE style the AP-REQ (and the AP-REPs) go without GSS-API framing
        return spnego_init([OID_MS_KRB5, OID_KRB5, OID_NTLMSSP], ap_req) if self._negotiated() else ap_req

    def _ap_rep(self, subkey, seq_number: int) -> bytes:
        part = der(0x7B, seq(ctx(0, generalized_time(_SAMPLE_AUTH_TIME)), ctx(1, integer(123456)),
                             *([ctx(2, encryption_key(subkey))] if subkey is not None else []),
                             ctx(3, integer(seq_number))))
        return der(0x6F, seq(ctx(0, integer(5)), ctx(1, integer(15)),
                             ctx(2, encrypted_data(self.etype, self.session_key.encrypt(12, part, self._conf())))))

    def second_leg(self) -> bytes:
        token = self._ap_rep(self.acceptor_subkey, self.seq[1])
        return spnego_resp(1, OID_MS_KRB5, token) if self._negotiated() else token

    def third_leg(self) -> list:
        token = self._ap_rep(None, self.seq[0])
        if self._negotiated():
            token = spnego_resp(None, None, token)
        # The client's AP-REP rides an alter_context for the samples' first presentation
        # context (IWbemLevel1Login, context 0), as Windows sends it after the bind.
        alter = bind(self.bind_call, [(0, IWBEM_LEVEL1_LOGIN, (0, 0))], alter=True)
        done = spnego_resp(0, None, None) if self._negotiated() else b""
        ack = bind_ack(self.bind_call, 1, alter=True)
        return [(0, self._with_auth(alter, token)), (1, self._with_auth(ack, done) if done else ack)]

    def _next_seq(self, direction: int) -> int:
        """This direction's sequence number (RFC 4121 4.2.6: one per token), then the next."""
        seq_number = self.seq[direction]
        self.seq[direction] += 1
        return seq_number

    def wrap(self, direction, head, plain, trailer):
        acceptor = direction == 1
        seq_number = self._next_seq(direction)
        sign = (head, trailer) if self.header_signing else (b"", b"")
        if self.etype == 23:
            return tuple(reversed(crypto_kerberos.rc4_wrap_dce(self.acceptor_subkey, plain, seq_number, acceptor,
                                                                self._conf(), *sign)))
        token, sealed = crypto_kerberos.cfx_wrap_dce(self.acceptor_subkey, plain, seq_number, acceptor, True,
                                                     self._conf(), *sign)
        return sealed, token


# ---- packet integrity (level 5): the same handshakes, stubs in clear, every PDU signed

PKT_INTEGRITY = 5


class _SignOnly:
    """Turns a sealer into a signer: sec_trailers say level 5 and `wrap` leaves the stub (with its
    padding) in clear, the verifier signing the PDU up to it (MS-RPCE 3.3.1.5.2.2, header signing)."""

    def _sec_trailer(self, pad: int) -> bytes:
        return _SEC_TRAILER.pack(self.auth_type, PKT_INTEGRITY, pad, 0, self.ctx_id)


class NtlmSigner(_SignOnly, NtlmSealer):
    """NTLMSSP at packet integrity: NTLMSSP_MESSAGE_SIGNATUREs only; with key exchange the
    checksums alone go through each direction's RC4 handle (MS-NLMP 3.4.4.2)."""

    def wrap(self, direction, head, plain, trailer):
        return plain, self.session.sign(direction, head + plain + trailer)


class KerberosSigner(_SignOnly, KerberosSealer):
    """Kerberos at packet integrity: RFC 4121 MIC tokens under the acceptor subkey (AES), or
    RFC 4757 MIC tokens (RC4)."""

    def __init__(self, etype: int = 18, **options) -> None:
        super().__init__(etype, **options)
        self.verifier_len = 37 if etype == 23 else 28

    def wrap(self, direction, head, plain, trailer):
        acceptor = direction == 1
        seq_number = self._next_seq(direction)
        data = head + plain + trailer if self.header_signing else plain
        if self.etype == 23:
            return plain, crypto_kerberos.rc4_get_mic_dce(self.acceptor_subkey, data, seq_number, acceptor)
        return plain, crypto_kerberos.cfx_get_mic_dce(self.acceptor_subkey, data, seq_number, acceptor, True)


# ---- the secrets of the sealed samples, written only on request

SAMPLE_KEYTAB = "wmi-process-create-kerberos.keytab"


def sample_keytab(path: Path) -> None:
    """The service key of the Kerberos sample (AES256, AES128 and RC4 of the same made-up password)."""
    entries = [crypto_kerberos.KeytabEntry(SAMPLE_REALM, list(SAMPLE_SERVICE), 1, 1_700_000_000, SAMPLE_KVNO,
                                           sample_service_key(etype)) for etype in (18, 17, 23)]
    Path(path).write_bytes(crypto_kerberos.build_keytab(entries))


def sample_credentials(path: Path) -> None:
    Path(path).write_text(
        "# wmiscope credentials for the sealed sample captures in this folder.\n"
        "# TEST-ONLY secrets, made up for these samples and published on purpose.\n"
        f"password {SAMPLE_DOMAIN}\\{SAMPLE_USER} {SAMPLE_PASSWORD}\n"
        f"keytab {SAMPLE_KEYTAB}\n")


# Never written into pcaps/ (see the module docstring): file name -> writer.
SECRETS = {
    SAMPLE_KEYTAB: sample_keytab,
    "wmi-sealed-samples.credentials": sample_credentials,
}


def write_secrets(directory: Path) -> dict[str, Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, make in SECRETS.items():
        make(directory / name)
    return {name: directory / name for name in SECRETS}
