"""Kerberos crypto (dissectors/crypto_kerberos.py) against RFC 3961/3962 vectors and impacket.

RFC 3961 A.1 (n-fold), RFC 3962 appendix B (string-to-key, AES-CTS), the
key-derivation values OpenSSL's KRB5KDF tests use, then impacket (an independent
Kerberos implementation) as the oracle for encryption, keytabs, tickets and the
RFC 4121 / RFC 4757 per-message tokens, both ways.
"""

from __future__ import annotations

import struct

import pytest

import tshark_util
from tshark_util import generator
from wmiscope.dissectors import auth as A
from wmiscope.dissectors import kerberos as K5
from wmiscope.dissectors import crypto_kerberos as K
from wmiscope.formats.errors import DecodeError

H = bytes.fromhex


GEN = generator()


@pytest.mark.parametrize("nbytes, data, expected", [
    (8, b"012345", "be072631276b1955"),
    (7, b"password", "78a07b6caf85fa"),
    (8, b"Rough Consensus, and Running Code", "bb6ed30870b7f0e0"),
    (21, b"password", "59e4a8ca7c0385c3c37b3f6d2000247cb6e6bd5b3e"),
    (24, b"MASSACHVSETTS INSTITVTE OF TECHNOLOGY", "db3b0d8f0b061e603282b308a50841229ad798fab9540c1b"),
    (21, b"Q", "518a54a215a8452a518a54a215a8452a518a54a215"),
    (21, b"ba", "fb25d531ae8974499f52fd92ea9857c4ba24cf297e"),
    (16, b"kerberos", "6b65726265726f737b9b5b2b93132b93"),
    (32, b"kerberos", "6b65726265726f737b9b5b2b93132b935c9bdcdad95c9899c4cae4dee6d6cae4"),
])
def test_n_fold_rfc3961(nbytes, data, expected):
    assert K.n_fold(data, nbytes).hex() == expected


@pytest.mark.parametrize("iterations, password, salt, k128, k256", [
    (1, "password", b"ATHENA.MIT.EDUraeburn", "42263c6e89f4fc28b8df68ee09799f15",
     "fe697b52bc0d3ce14432ba036a92e65bbb52280990a2fa27883998d72af30161"),
    (2, "password", b"ATHENA.MIT.EDUraeburn", "c651bf29e2300ac27fa469d693bdda13",
     "a2e16d16b36069c135d5e9d2e25f896102685618b95914b467c67622225824ff"),
    (1200, "password", b"ATHENA.MIT.EDUraeburn", "4c01cd46d632d01e6dbe230a01ed642a",
     "55a6ac740ad17b4846941051e1e8b0a7548d93b0ab30a8bc3ff16280382b8c2a"),
    (5, "password", H("1234567878563412"), "e9b23d52273747dd5c35cb55be619d8e",
     "97a4e786be20d81a382d5ebc96d5909cabcdadc87ca48f574504159f16c36e31"),
    (1200, "X" * 64, b"pass phrase equals block size", "59d1bb789a828b1aa54ef9c2883f69ed",
     "89adee3608db8bc71f1bfbfe459486b05618b70cbae22092534e56c553ba4b34"),
])
def test_string_to_key_rfc3962(iterations, password, salt, k128, k256):
    assert K.string_to_key(K.ETYPE_AES128, password, salt, iterations).value.hex() == k128
    assert K.string_to_key(K.ETYPE_AES256, password, salt, iterations).value.hex() == k256


def test_key_derivation_and_usage_keys():
    # DK(base, usage | 0x99 / 0xAA) for usage 2 (OpenSSL's KRB5KDF test values)
    assert K._dr(H("42263c6e89f4fc28b8df68ee09799f15"), H("0000000299"), 16) == H("34280a382bc92769b2da2f9ef066854b")
    key = K.Key(17, H("42263c6e89f4fc28b8df68ee09799f15"))
    assert key.usage_keys(2)[0] == H("5b14fc4e250e14ddf9dccf1af6674f53")
    assert K._dr(H("fe697b52bc0d3ce14432ba036a92e65bbb52280990a2fa27883998d72af30161"), H("0000000299"), 32) == \
        H("bfab388bdcb238e9f9c98d6a878304f04d30c82556375ac507a7a852790f4674")


def test_aes_cts_rfc3962_vectors():
    key = b"chicken teriyaki"
    text = b"I would like the General Gau's Chicken, please, and wonton soup."
    for n, expected in ((17, "c6353568f2bf8cb4d8a580362da7ff7f97"),
                        (31, "fc00783e0efdb2c1d445d4c8eff7ed2297687268d6ecccc0c07b25e25ecfe5"),
                        (32, "39312523a78662d5be7fcbcc98ebf5a897687268d6ecccc0c07b25e25ecfe584"),
                        (47, "97687268d6ecccc0c07b25e25ecfe584b3fffd940c16a18c1b5549d2f838029e39312523a78662d5be7fc"
                             "bcc98ebf5"),
                        (64, "97687268d6ecccc0c07b25e25ecfe58439312523a78662d5be7fcbcc98ebf5a84807efe836ee89a526730d"
                             "bc2f7bc8409dad8bbb96c4cdc03bc103e1a194bbd8")):
        assert K.aes_cts_encrypt(key, text[:n]).hex() == expected
        assert K.aes_cts_decrypt(key, H(expected)) == text[:n]


@pytest.mark.parametrize("etype", [17, 18, 23])
def test_encryption_matches_impacket_and_a_wrong_key_is_refused(etype):
    from impacket.krb5 import crypto as IC

    size = 32 if etype == 18 else 16
    key = K.Key(etype, bytes(range(size)))
    for usage, n in ((2, 0), (11, 1), (12, 47), (24, 300)):
        plain = bytes((i * 7) & 0xFF for i in range(n))
        conf = bytes(range(100, 116))
        ours = key.encrypt(usage, plain, conf)
        theirs = IC.encrypt(IC.Key(etype, key.value), usage, plain, conf[:8] if etype == 23 else conf)
        assert ours == theirs
        assert key.decrypt(usage, ours) == plain
        with pytest.raises(K.KerberosCryptoError, match="integrity"):
            K.Key(etype, bytes(size)).decrypt(usage, ours)


def test_sample_keytab_parses_like_impacket_reads_it():
    from impacket.krb5.keytab import Keytab

    data = tshark_util.sample_secrets()["wmi-process-create-kerberos.keytab"].read_bytes()
    ours = K.parse_keytab(data)
    assert [(e.principal, e.kvno, e.key.etype) for e in ours] == [
        ("host/srv-files01.wmilab.example@WMILAB.EXAMPLE", 2, 18),
        ("host/srv-files01.wmilab.example@WMILAB.EXAMPLE", 2, 17),
        ("host/srv-files01.wmilab.example@WMILAB.EXAMPLE", 2, 23)]
    theirs = Keytab(data)
    assert [(bytes(e.main_part["keyblock"]["keyvalue"]["data"]), e.kvno) for e in theirs.entries] == \
        [(e.key.value, e.kvno) for e in ours]
    # the AES key is string-to-key of the sample service password with the default salt
    assert ours[0].key == K.string_to_key(18, GEN.SAMPLE_SERVICE_PASSWORD,
                                          "WMILAB.EXAMPLEhostsrv-files01.wmilab.example")


def test_keytab_holes_and_damage():
    entry = K.KeytabEntry("R.EXAMPLE", ["svc", "h"], 1, 0, 7, K.Key(23, bytes(16)))
    data = K.build_keytab([entry])
    with_hole = data[:2] + struct.pack(">i", -10) + b"\x00" * 10 + data[2:]
    assert [e.principal for e in K.parse_keytab(with_hole)] == ["svc/h@R.EXAMPLE"]
    with pytest.raises(DecodeError, match="runs past"):
        K.parse_keytab(data[:-5])
    with pytest.raises(DecodeError, match="not a keytab"):
        K.parse_keytab(b"\x04\x02")


def _sample_handshake(etype=18, auth_type=GEN.RPC_C_AUTHN_GSS_NEGOTIATE):
    sealer = GEN.KerberosSealer(etype=etype, auth_type=auth_type)
    ap_req = A.inner_token(A.parse_token(sealer.first_leg()))
    ap_rep = A.inner_token(A.parse_token(sealer.second_leg()))
    return sealer, ap_req, ap_rep


@pytest.mark.parametrize("auth_type", [9, 16])
def test_ticket_authenticator_and_ap_rep_open_with_the_keytab(auth_type):
    sealer, ap_req, ap_rep = _sample_handshake(auth_type=auth_type)
    assert isinstance(ap_req, K5.KerberosApReq) and ap_req.principal == "host/srv-files01.wmilab.example@WMILAB.EXAMPLE"
    keys = [e.key for e in K.parse_keytab(tshark_util.sample_secrets()["wmi-process-create-kerberos.keytab"].read_bytes())]
    ctx = K.recover_context_keys(ap_req, ap_rep, keys)
    assert ctx.client == "analyst@WMILAB.EXAMPLE"
    assert ctx.session_key == sealer.session_key and ctx.initiator_subkey == sealer.initiator_subkey
    assert ctx.acceptor_subkey == sealer.acceptor_subkey
    assert ctx.gss_flags & K.GSS_C_DCE_STYLE and (ctx.initiator_seq, ctx.acceptor_seq) == tuple(sealer.seq)
    with pytest.raises(K.KerberosCryptoError):
        K.recover_context_keys(ap_req, ap_rep, [K.Key(18, bytes(32))])


def test_impacket_decrypts_the_generated_ticket():
    from impacket.krb5 import crypto as IC
    from impacket.krb5.asn1 import AP_REQ, EncTicketPart
    from pyasn1.codec.der import decoder

    sealer, _ap_req, _ = _sample_handshake()
    raw = sealer.first_leg()
    ap_req_der = raw[raw.index(b"\x6e\x82"):]          # the mechToken: a bare AP-REQ (MS-KILE 3.4.5.1)
    req = decoder.decode(ap_req_der, asn1Spec=AP_REQ())[0]
    cipher = bytes(req["ticket"]["enc-part"]["cipher"])
    plain = IC.decrypt(IC.Key(18, GEN.sample_service_key(18).value), 2, cipher)
    part = decoder.decode(plain, asn1Spec=EncTicketPart())[0]
    assert str(part["cname"]["name-string"][0]) == "analyst" and str(part["crealm"]) == "WMILAB.EXAMPLE"
    assert bytes(part["key"]["keyvalue"]) == sealer.session_key.value


def _trailer(pad=0):
    return struct.pack("<BBBBI", 9, 6, pad, 0, 0)


@pytest.mark.parametrize("etype", [17, 18])
def test_cfx_dce_wrap_round_trip_and_header_signing(etype):
    key = K.Key(etype, bytes(range(32 if etype == 18 else 16)))
    head, tail, plain = b"\x05\x00\x00\x03" + bytes(20), _trailer(), bytes(range(48))
    for acceptor in (False, True):
        token, sealed = K.cfx_wrap_dce(key, plain, 7, acceptor, True, b"C" * 16, head, tail)
        assert len(token) == 76 and len(sealed) == len(plain) and sealed != plain
        assert token[:2] == b"\x05\x04" and token[2] == (7 if acceptor else 6)
        assert K.cfx_unwrap_dce(key, token, sealed, ((head, tail),)) == plain
        with pytest.raises(K.KerberosCryptoError, match="checksum"):
            K.cfx_unwrap_dce(key, token, sealed, ((b"", b""),))      # header signing was on
        with pytest.raises(K.KerberosCryptoError):
            K.cfx_unwrap_dce(K.Key(etype, bytes(len(key.value))), token, sealed, ((head, tail),))


def test_impacket_unwraps_our_aes_tokens_and_we_unwrap_theirs():
    from impacket.krb5 import crypto as IC
    from impacket.krb5.gssapi import GSSAPI_AES256

    key = K.Key(18, bytes(range(32)))
    plain = bytes(range(64))
    # acceptor -> initiator without header signing: what impacket's client-side unwrap expects
    token, sealed = K.cfx_wrap_dce(key, plain, 3, True, True, b"c" * 16)
    clear, _ = GSSAPI_AES256().GSS_Unwrap(IC.Key(18, key.value), sealed, 3, authData=_trailer() + token)
    assert clear == plain
    # impacket's client-side wrap (EC 0, usage 24) read by ours
    sealed, token = GSSAPI_AES256().GSS_Wrap(IC.Key(18, key.value), plain, 9)
    assert K.cfx_unwrap_dce(key, token, sealed, ((b"", b""),)) == plain


def test_rc4_dce_tokens_both_ways_with_impacket():
    from impacket.krb5 import crypto as IC
    from impacket.krb5.gssapi import GSSAPI_RC4

    key = K.Key(23, bytes(range(16)))
    plain = bytes(range(40))                           # already a multiple of 8: impacket adds no pad
    sealed, token = GSSAPI_RC4().GSS_Wrap(IC.Key(23, key.value), plain, 5, direction="init")
    assert K.rc4_unwrap_dce(key, token, sealed, ((b"", b""),)) == plain
    token, sealed = K.rc4_wrap_dce(key, plain, 11, True, b"confound")
    assert len(token) == 45 and sealed != plain
    clear, _ = GSSAPI_RC4().GSS_Unwrap(IC.Key(23, key.value), sealed, 11, direction="accept",
                                       authData=_trailer() + token)
    assert clear == plain
    head, tail = b"H" * 24, _trailer()
    token, sealed = K.rc4_wrap_dce(key, plain, 12, False, b"confound", head, tail)
    assert K.rc4_unwrap_dce(key, token, sealed, ((b"", b""), (head, tail))) == plain
    with pytest.raises(K.KerberosCryptoError):
        K.rc4_unwrap_dce(key, token, sealed, ((b"", b""),))


def test_damaged_tokens_raise_only_the_documented_error():
    key = K.Key(18, bytes(32))
    for token in (b"", b"\x05\x04", b"\x05\x04\x02\xff" + bytes(12), b"\x60\x03\x06\x01\x00", b"\x60" + bytes(60)):
        for unwrap in (K.cfx_unwrap_dce, K.rc4_unwrap_dce):
            with pytest.raises(K.KerberosCryptoError):
                unwrap(key if unwrap is K.cfx_unwrap_dce else K.Key(23, bytes(16)), token, bytes(32), ((b"", b""),))
