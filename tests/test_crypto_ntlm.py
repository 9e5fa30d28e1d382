"""NTLMSSP session security (dissectors/crypto_ntlm.py) against MS-NLMP section 4.2 and impacket.

MS-NLMP 4.2 works one example through NTLM v1, NTLM v1 with extended session
security and NTLM v2 (user "User", domain "Domain", password "Password", server
challenge 0123456789abcdef, client challenge aa..aa, random session key 55..55,
plaintext "Plaintext" in UTF-16): every intermediate value is asserted here.
impacket's ntlm module (an independent implementation) must agree on the keys,
the sealed bytes and the signatures of a longer exchange.
"""

from __future__ import annotations

import struct

import pytest

from wmiscope.dissectors import ntlmssp as A
from wmiscope.dissectors import crypto_ntlm as N

H = bytes.fromhex
USER, DOMAIN, PASSWORD = "User", "Domain", "Password"
SERVER_CHALLENGE = H("0123456789abcdef")
CLIENT_CHALLENGE = H("aaaaaaaaaaaaaaaa")
RANDOM_SESSION_KEY = H("55555555555555555555555555555555")
PLAINTEXT = "Plaintext".encode("utf-16-le")

# MS-NLMP 4.2.4: the CHALLENGE_MESSAGE and AUTHENTICATE_MESSAGE of the NTLM v2 example
CHALLENGE_V2 = H(
    "4e544c4d53535000020000000c000c003800000033828ae20123456789abcdef00000000000000002400240044000000"
    "060070170000000f53006500720076006500720002000c0044006f006d00610069006e0001000c005300650072007600"
    "6500720000000000")
AUTHENTICATE_V2 = H(
    "4e544c4d5353500003000000180018006c00000054005400840000000c000c00480000000800080054000000100010005c"
    "00000010001000d8000000358288e20501280a0000000f44006f006d00610069006e00550073006500720043004f004d00"
    "5000550054004500520086c35097ac9cec102554764a57cccc19aaaaaaaaaaaaaaaa68cd0ab851e51c96aabc927bebef6a"
    "1c01010000000000000000000000000000aaaaaaaaaaaaaaaa0000000002000c0044006f006d00610069006e0001000c00"
    "5300650072007600650072000000000000000000c5dad2544fc9799094ce1ce90bc9d03e")


def test_md4_rfc1320_vectors():
    for text, digest in ((b"", "31d6cfe0d16ae931b73c59d7e0c089c0"), (b"a", "bde52cb31de33e46245e05fbdbd6fb24"),
                         (b"message digest", "d9130a8164549fe818874806e1c7014b"),
                         (b"12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                          "e33b4ddc9c38f2199c3e7b164fcc0536")):
        assert N.md4(text).hex() == digest


def test_ntlm_v1_example_4_2_2():
    flags = 0xE2028233
    assert N.lmowfv1(PASSWORD) == H("e52cac67419a9a224a3b108f3fa6cb6d")
    nt_hash = N.ntowfv1(PASSWORD)
    assert nt_hash == H("a4f49c406510bdcab6824ee7c30fd852")
    lm, nt, base = N.ntlmv1_responses(flags, nt_hash, N.lmowfv1(PASSWORD), SERVER_CHALLENGE, CLIENT_CHALLENGE)
    assert lm == H("98def7b87f88aa5dafe2df779688a172def11c7d5ccdef13")
    assert nt == H("67c43011f30298a2ad35ece64f16331c44bdbed927841f94")
    assert base == H("d87262b0cde4b1cb7499becccdf10784")
    kx = N.kxkey(flags, base, lm, SERVER_CHALLENGE, N.lmowfv1(PASSWORD), False)
    assert kx == base
    assert N.rc4k(kx, RANDOM_SESSION_KEY) == H("518822b1b3f350c8958682ecbb3e3cb7")
    # 4.2.2.4: one RC4 handle seals the message, then RandomPad, CRC32 and SeqNum
    s = N.NtlmSession(flags, RANDOM_SESSION_KEY)
    assert s.encrypt(0, PLAINTEXT) == H("56fe04d861f9319af0d7238a2e3b4d457fb8")
    assert s.sign(0, PLAINTEXT) == H("0100000045c844e509dcd1df2e459d36")


def test_ntlm_v1_with_extended_session_security_example_4_2_3():
    flags = 0x820A8233
    lm, nt, base = N.ntlmv1_responses(flags, N.ntowfv1(PASSWORD), None, SERVER_CHALLENGE, CLIENT_CHALLENGE)
    assert lm == H("aaaaaaaaaaaaaaaa00000000000000000000000000000000")
    assert nt == H("7537f803ae367128ca458204bde7caf81e97ed2683267232")
    kx = N.kxkey(flags, base, lm, SERVER_CHALLENGE, None, False)
    assert kx == H("eb93429a8bd952f8b89c55b87f475edc")
    assert N.sign_key(flags, kx, N.CLIENT) == H("60e799be5c72fc92922ae8ebe961fb8d")
    assert N.seal_key(flags, kx, N.CLIENT) == H("04dd7f014d8504d265a25cc86a3a7c06")   # 56-bit: 7 octets hashed
    s = N.NtlmSession(flags, kx)
    assert s.encrypt(0, PLAINTEXT) == H("a02372f6530273f3aa1eb90190ce5200c99d")
    assert s.sign(0, PLAINTEXT) == H("01000000ff2aeb52f681793a00000000")          # no KEY_EXCH: checksum in clear


def test_ntlm_v2_example_4_2_4():
    flags = 0xE28A8233
    key = N.ntowfv2(N.ntowfv1(PASSWORD), USER, DOMAIN)
    assert key == H("0c868a403bfd7a93a3001ef22ef02e3f")
    # the server's AV pairs (NetBIOS domain "Domain", server "Server"), time 0
    target_info = H("02000c0044006f006d00610069006e0001000c0053006500720076006500720000000000")
    blob = N.ntlmv2_client_blob(0, CLIENT_CHALLENGE, target_info)
    nt, base = N.ntlmv2_response(key, SERVER_CHALLENGE, blob)
    assert nt[:16] == H("68cd0ab851e51c96aabc927bebef6a1c")
    assert base == H("8de40ccadbc14a82f15cb0ad0de95ca3")
    assert N.lmv2_response(key, SERVER_CHALLENGE, CLIENT_CHALLENGE) == \
        H("86c35097ac9cec102554764a57cccc19aaaaaaaaaaaaaaaa")
    assert N.rc4k(base, RANDOM_SESSION_KEY) == H("c5dad2544fc9799094ce1ce90bc9d03e")
    assert N.sign_key(flags, RANDOM_SESSION_KEY, N.CLIENT) == H("4788dc861b4782f35d43fd98fe1a2d39")
    assert N.seal_key(flags, RANDOM_SESSION_KEY, N.CLIENT) == H("59f600973cc4960a25480a7c196e4c58")
    s = N.NtlmSession(flags, RANDOM_SESSION_KEY)
    assert s.encrypt(0, PLAINTEXT) == H("54e50165bf1936dc996020c1811b0f06fb5f")
    # HMAC 70352851f2564309, then RC4 under the sealing handle (KEY_EXCH)
    assert s.sign(0, PLAINTEXT) == H("010000007fb38ec5c55d497600000000")


def test_session_key_recovered_from_the_spec_messages():
    """The parsed 4.2.4 CHALLENGE/AUTHENTICATE plus the password give back the random session key."""
    challenge, auth = A.parse_ntlmssp(CHALLENGE_V2), A.parse_ntlmssp(AUTHENTICATE_V2)
    assert auth.principal == "Domain\\User" and auth.ntlm_version == 2
    flags, exported = N.exported_session_key(challenge, auth, N.ntowfv1(PASSWORD))
    assert exported == RANDOM_SESSION_KEY and flags == 0xE2888235
    with pytest.raises(N.NtlmKeyError, match="NTLMv2 response does not match"):
        N.exported_session_key(challenge, auth, N.ntowfv1("password"))


def _v1_messages(flags: int, password: str):
    """A CHALLENGE/AUTHENTICATE pair of NTLM v1 as dissectors.auth parses them."""
    nt_hash, lm_hash = N.ntowfv1(password), N.lmowfv1(password)
    lm, nt, base = N.ntlmv1_responses(flags, nt_hash, lm_hash, SERVER_CHALLENGE, CLIENT_CHALLENGE)
    kx = N.kxkey(flags, base, lm, SERVER_CHALLENGE, lm_hash, False)
    challenge = A.NtlmChallenge(flags, SERVER_CHALLENGE)
    auth = A.NtlmAuthenticate(flags, 24, 24, 1, DOMAIN, USER, "WS", N.rc4k(kx, RANDOM_SESSION_KEY),
                              nt_response=nt, lm_response=lm)
    return challenge, auth


@pytest.mark.parametrize("flags", [0xE2028233, 0xE20A8233, 0xE2028233 | N.NEGOTIATE_LM_KEY, 0x62028233])
def test_ntlm_v1_handshakes_give_the_session_key(flags):
    challenge, auth = _v1_messages(flags, PASSWORD)
    got_flags, key = N.exported_session_key(challenge, auth, N.ntowfv1(PASSWORD), N.lmowfv1(PASSWORD))
    assert got_flags == flags and key == RANDOM_SESSION_KEY
    with pytest.raises(N.NtlmKeyError, match="NTLMv1 response does not match"):
        N.exported_session_key(challenge, auth, N.ntowfv1("Wrong"), N.lmowfv1("Wrong"))


@pytest.mark.parametrize("flags", [0xE28A8235, 0xA28A8235, 0xE2028235, 0x62008235 | N.NEGOTIATE_LM_KEY])
def test_sealing_round_trip_both_directions_with_sequence_numbers(flags):
    ess = bool(flags & N.NEGOTIATE_EXTENDED_SESSIONSECURITY)
    sender, receiver = N.NtlmSession(flags, RANDOM_SESSION_KEY), N.NtlmSession(flags, RANDOM_SESSION_KEY)
    for i in range(6):
        direction = i % 2                  # request, response, request ... in the order sent
        message = bytes([i]) * (7 + 13 * i)
        sealed = sender.encrypt(direction, message)
        sig = sender.sign(direction, b"HDR" + message)
        assert sealed != message
        clear = receiver.decrypt(direction, sealed)
        assert clear == message
        assert receiver.verify(direction, (b"other", b"HDR" + clear), sig) == 1
        if ess:                            # one counter per direction, in clear in the signature
            assert struct.unpack_from("<I", sig, 12)[0] == i // 2


def test_a_tampered_message_does_not_verify_and_the_stream_goes_on():
    flags = 0xE28A8235
    sender, receiver = N.NtlmSession(flags, RANDOM_SESSION_KEY), N.NtlmSession(flags, RANDOM_SESSION_KEY)
    sealed, sig = sender.encrypt(0, b"first message"), sender.sign(0, b"first message")
    bad = bytearray(sealed)
    bad[3] ^= 0x40
    assert receiver.verify(0, (receiver.decrypt(0, bytes(bad)),), sig) == -1
    sealed, sig = sender.encrypt(0, b"second"), sender.sign(0, b"second")
    assert receiver.verify(0, (receiver.decrypt(0, sealed),), sig) == 0      # same length: RC4 still in step


def test_rc4_fallback_matches_openssl_for_odd_key_sizes():
    for key in (b"Key", b"Wiki", b"Secret"):
        expect = {b"Key": "bbf316e8d940af0ad3", b"Wiki": "1021bf0420", b"Secret": "45a01f645fc35b383552544b9bf5"}[key]
        data = {b"Key": b"Plaintext", b"Wiki": b"pedia", b"Secret": b"Attack at dawn"}[key]
        assert N.rc4k(key, data).hex() == expect


# ---------------------------------------------------------------------------
# impacket as an independent oracle


def test_impacket_agrees_on_keys_sealing_and_signatures():
    from Cryptodome.Cipher import ARC4
    from impacket import ntlm as I

    flags = 0xE2888235                     # what Windows ends with: ESS, KEY_EXCH, 128, 56
    nt_hash = N.ntowfv1("Sample-Only-Pa55!")
    assert nt_hash == I.compute_nthash("Sample-Only-Pa55!")
    assert N.ntowfv2(nt_hash, "analyst", "WMILAB") == I.NTOWFv2("analyst", "Sample-Only-Pa55!", "WMILAB")
    exported = bytes(range(16))
    ours = N.NtlmSession(flags, exported)
    for direction, mode in ((0, "Client"), (1, "Server")):
        sign_key, seal_key = I.SIGNKEY(flags, exported, mode), I.SEALKEY(flags, exported, mode)
        assert N.sign_key(flags, exported, direction) == sign_key
        assert N.seal_key(flags, exported, direction) == seal_key
        handle = ARC4.new(seal_key).encrypt
        for seq in range(5):
            message = bytes((seq * 37 + i) & 0xFF for i in range(40 + 16 * seq))
            sealed, signature = I.SEAL(flags, sign_key, seal_key, b"H" + message, message, seq, handle)
            assert ours.encrypt(direction, message) == sealed
            assert ours.sign(direction, b"H" + message) == signature.getData()
