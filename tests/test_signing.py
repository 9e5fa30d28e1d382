"""Packet integrity (auth level 5) verified with the analyst's credentials, and the NTLM MIC.

pcaps/wmi-process-create-ntlm-signed.pcap is the clear wmi-process-create session at
level 5: stubs in clear, each PDU signed with NTLMSSP (NTLMv2, extended session
security, key exchange). With the password every signature must verify and the calls
must be those of the clear capture; impacket must compute the same signatures with its
own RC4 handles advanced by the checksums alone, and the same AUTHENTICATE MIC. Kerberos
MIC tokens (RFC 4121 AES, RFC 4757 RC4) are held to impacket's GSS_GetMIC. A altered
PDU or handshake is said once; a wrong password gives one message per connection and
leaves every call as it was, on the sample and on the real level-5 captures. tshark 4.0
shows the verifier fields of a level-5 PDU but judges neither the signatures nor the MIC,
so it is only asked to read the sample (tests/test_samples.py).
"""

from __future__ import annotations

import json
import struct

import pytest

import tshark_util
from session_util import CREDS, damaged_sessions, payload_pdus, replay, sample_credentials, stub_at
from tshark_util import CAPTURES, PCAPS, generator
from wmiscope.dissectors import crypto_kerberos as K
from wmiscope.dissectors import crypto_ntlm as N
from wmiscope.dissectors.auth import parse_token
from wmiscope.dissectors.credentials import Credentials
from wmiscope.dissectors.pipeline import analyse, call_outcome
from wmiscope.dissectors.records import Call, ErrorRecord, as_dict
from wmiscope.synth.sealing import KerberosSigner, NtlmSealer, NtlmSigner


GEN = generator()
CLEAR = PCAPS / "wmi-process-create.pcap"
SIGNED = PCAPS / "wmi-process-create-ntlm-signed.pcap"
WMIEXEC = CAPTURES / "impacket_wmiexec.pcapng"
WMIEXECPRO = CAPTURES / "wmiexecpro-create-start-service.pcap"


def wrong_password() -> Credentials:
    c = Credentials()
    c.add_password("*", "not the password")
    return c


def split(records):
    return [r for r in records if type(r) is Call], [r for r in records if type(r) is ErrorRecord]


def _flip(pdu: bytes, at: int) -> bytes:
    return pdu[:at] + bytes([pdu[at] ^ 0x01]) + pdu[at + 1:]


# ---------------------------------------------------------------------------
# the signed sample


def test_signed_sample_verifies_and_is_the_clear_session():
    clear, _ = split(analyse(CLEAR)[0])
    records, stats = analyse(SIGNED, credentials=sample_credentials())
    calls, errors = split(records)
    assert errors == []
    assert [(c.method, c.auth_type, c.auth_level, c.auth_principal) for c in calls] == [
        ("NTLMLogin", 10, 5, "WMILAB\\analyst"), ("GetObject", 10, 5, "WMILAB\\analyst"),
        ("ExecMethod", 10, 5, "WMILAB\\analyst")]
    assert all(c.req_verified is True and c.resp_verified is True for c in calls)
    assert all(not c.req_encrypted and not c.req_decrypted for c in calls)
    # padded to 16 on the wire, the stubs are the clear ones (GetObject's reply in three signed fragments)
    assert [(c.req_stub, c.resp_stub) for c in calls] == [(c.req_stub, c.resp_stub) for c in clear]
    assert calls[1].resp_frames[1] - calls[1].resp_frames[0] == 2 and len(calls[1].resp_stub) == 2228
    assert [call_outcome(c) for c in calls] == [call_outcome(c) for c in clear] == ["decoded"] * 3
    out = calls[2].decoded
    assert "cmd.exe /c whoami" in json.dumps(out, default=str)


def test_without_credentials_the_signed_sample_is_decoded_unverified():
    calls, errors = split(analyse(SIGNED)[0])
    assert errors == [] and [c.method for c in calls] == ["NTLMLogin", "GetObject", "ExecMethod"]
    assert all(c.req_verified is None and c.resp_verified is None and c.decoded for c in calls)


def test_impacket_signs_the_sample_as_we_do():
    """impacket's SIGN, its RC4 handles advanced only by the checksums, and its MIC of the handshake."""
    from Cryptodome.Cipher import ARC4
    from impacket import ntlm as I

    pdus = payload_pdus(SIGNED)
    bind, ack, auth3 = (next(p for d, p in pdus if p[2] == t) for t in (11, 12, 16))
    neg = bind[len(bind) - struct.unpack_from("<H", bind, 10)[0]:]
    chal = ack[len(ack) - struct.unpack_from("<H", ack, 10)[0]:]
    auth_raw = auth3[28:]
    auth_msg = I.NTLMAuthChallengeResponse()
    auth_msg.fromString(auth_raw)
    chal_msg = I.NTLMAuthChallenge()
    chal_msg.fromString(chal)
    nt = auth_msg["ntlm"]
    key = I.NTOWFv2("analyst", GEN.SAMPLE_PASSWORD, "WMILAB")
    flags = auth_msg["flags"]
    exported = ARC4.new(I.KXKEY(flags, I.hmac_md5(key, nt[:16]), b"", b"", "", "", "")).decrypt(auth_msg["session_key"])
    assert flags & I.NTLMSSP_NEGOTIATE_KEY_EXCH and flags & I.NTLMSSP_NEGOTIATE_EXTENDED_SESSIONSECURITY
    # the MIC: HMAC_MD5(ExportedSessionKey, NEGOTIATE | CHALLENGE | AUTHENTICATE with a zero MIC)
    mic = auth_raw[72:88]
    assert I.hmac_md5(exported, neg + chal + auth_raw[:72] + b"\x00" * 16 + auth_raw[88:]) == mic
    assert N.authenticate_mic(exported, neg, chal, auth_raw) == mic
    handles = {d: (I.SIGNKEY(flags, exported, mode), ARC4.new(I.SEALKEY(flags, exported, mode)).encrypt)
               for d, mode in ((0, "Client"), (1, "Server"))}
    seq = {0: 0, 1: 0}
    signed = 0
    for d, pdu in pdus:
        if pdu[2] not in (0, 2):
            continue
        assert pdu[len(pdu) - 16 - 8 + 1] == 5                   # sec_trailer auth_level: integrity
        sign_key, handle = handles[d]
        signature = I.SIGN(flags, sign_key, pdu[:-16], seq[d], handle)
        assert signature.getData() == pdu[-16:]
        seq[d] += 1
        signed += 1
    assert signed == 8 and seq == {0: 3, 1: 5}


@pytest.mark.parametrize("make", [
    lambda: NtlmSigner(ntlm_v2=False, ess=False), lambda: NtlmSigner(ntlm_v2=False, ess=True),
    lambda: NtlmSigner(auth_type=GEN.RPC_C_AUTHN_GSS_NEGOTIATE), lambda: KerberosSigner(),
    lambda: KerberosSigner(header_signing=False), lambda: KerberosSigner(etype=23),
    lambda: KerberosSigner(etype=17, auth_type=GEN.RPC_C_AUTHN_GSS_KERBEROS),
], ids=["ntlmv1", "ntlmv1-ess", "ntlmv2-spnego", "kerberos-aes256", "kerberos-no-header-signing", "kerberos-rc4",
        "kerberos-aes128-direct"])
def test_every_mechanism_verifies_at_level_5(make, tmp_path):
    path = tmp_path / "s.pcap"
    GEN.process_create(path, make())
    clear, _ = split(analyse(CLEAR)[0])
    calls, errors = split(analyse(path, credentials=sample_credentials())[0])
    assert errors == []
    assert all(c.auth_level == 5 and c.req_verified and c.resp_verified for c in calls)
    assert [(c.req_stub, c.resp_stub) for c in calls] == [(c.req_stub, c.resp_stub) for c in clear]


# ---------------------------------------------------------------------------
# altered PDUs and handshakes


@pytest.mark.parametrize("make, who", [
    (NtlmSigner, "NTLMSSP signature does not verify for WMILAB\\analyst"),
    (lambda: NtlmSigner(ntlm_v2=False, ess=False), "NTLMSSP signature does not verify for WMILAB\\analyst"),
    (KerberosSigner, "Kerberos MIC token does not verify for analyst@WMILAB.EXAMPLE"),
    (lambda: KerberosSigner(etype=23), "Kerberos MIC token does not verify for analyst@WMILAB.EXAMPLE"),
], ids=["ntlmv2", "ntlmv1", "kerberos-aes", "kerberos-rc4"])
def test_an_altered_stub_is_said_once_and_the_rest_verifies(make, who, tmp_path):
    GEN.process_create(tmp_path / "s.pcap", make())
    steps = payload_pdus(tmp_path / "s.pcap")
    calls_at = [i for i, (d, p) in enumerate(steps) if p[2] == 0]
    # the GetObject request (call_id 4) and the ExecMethod one (call_id 5): one stub octet each
    for i in calls_at[1:]:
        d, pdu = steps[i]
        steps[i] = (d, _flip(pdu, stub_at(pdu) + 40))
    calls, errors = split(replay(steps, sample_credentials()))
    assert len(errors) == 1
    e = errors[0]
    assert (e.stage, e.conn, e.structure) == ("auth", 4, "auth_value")
    assert e.reason.startswith("cannot verify the signatures of auth context 0: the ")
    assert who in e.reason and "(call_id 4, request)" in e.reason
    assert [(c.call_id, c.req_verified, c.resp_verified) for c in calls] == [
        (2, True, True), (4, False, True), (5, False, True)]            # the RC4 handles stay in step
    assert calls[1].req_stub and not calls[1].req_encrypted              # the stub is still there to decode


def test_an_altered_signature_of_one_fragment_marks_the_whole_reply():
    steps = payload_pdus(SIGNED)
    frags = [i for i, (d, p) in enumerate(steps) if p[2] == 2 and not p[3] & 0x02]
    d, pdu = steps[frags[1]]                                             # GetObject's second fragment
    steps[frags[1]] = (d, _flip(pdu, len(pdu) - 6))                     # in the checksum
    calls, errors = split(replay(steps, sample_credentials()))
    assert len(errors) == 1 and "(call_id 4, response)" in errors[0].reason
    assert [c.resp_verified for c in calls] == [True, False, True]


@pytest.mark.parametrize("make", [NtlmSigner, NtlmSealer], ids=["signed", "sealed"])
def test_a_mic_that_does_not_verify_is_said_once(make, tmp_path):
    GEN.process_create(tmp_path / "s.pcap", make())
    steps = payload_pdus(tmp_path / "s.pcap")
    i = next(i for i, (d, p) in enumerate(steps) if p[2] == 16)
    d, auth3 = steps[i]
    token = auth3[28:]
    ws = parse_token(token)
    # one octet of the workstation name: the NTLMv2 response still verifies, the MIC no longer
    ws_at = 28 + struct.unpack_from("<I", token, 48)[0]
    assert ws.workstation == "WKS-ANALYST7" and auth3[ws_at] == ord("W")
    steps[i] = (d, auth3[:ws_at] + b"V" + auth3[ws_at + 1:])
    calls, errors = split(replay(steps, sample_credentials()))
    assert [(e.stage, e.frame, e.structure) for e in errors] == [("auth", i + 1, "AUTHENTICATE_MESSAGE.MIC")]
    assert "NTLMSSP user WMILAB\\analyst" in errors[0].reason and "does not verify" in errors[0].reason
    # the keys are right all the same: every call opens / verifies
    assert all((c.req_verified and c.resp_verified) or (c.req_decrypted and c.resp_decrypted) for c in calls)


def test_a_zeroed_mic_is_noticed_and_a_wrong_password_checks_none():
    steps = payload_pdus(SIGNED)
    i = next(i for i, (d, p) in enumerate(steps) if p[2] == 16)
    d, auth3 = steps[i]
    steps[i] = (d, auth3[:28 + 72] + b"\x00" * 16 + auth3[28 + 88:])
    _, errors = split(replay(steps, sample_credentials()))
    assert [e.structure for e in errors] == ["AUTHENTICATE_MESSAGE.MIC"]
    _, errors = split(replay(steps, wrong_password()))
    assert [e.structure for e in errors] == ["auth_value"]           # no key, no MIC check: the one message


@pytest.mark.parametrize("make", [NtlmSigner, KerberosSigner, lambda: KerberosSigner(etype=23)],
                         ids=["ntlm", "kerberos", "kerberos-rc4"])
def test_damaged_signed_pdus_never_break_the_run(make, tmp_path):
    GEN.process_create(tmp_path / "s.pcap", make())
    steps = payload_pdus(tmp_path / "s.pcap")
    for damaged in damaged_sessions(steps, seed=5, count=40, any_bit=False):
        calls, errors = split(replay(damaged, sample_credentials()))
        auth = [e for e in errors if e.stage == "auth"]
        assert len(calls) == 3 and not any("internal error" in e.reason for e in auth)
        assert len([e for e in auth if e.reason.startswith("cannot verify")]) <= 1


# ---------------------------------------------------------------------------
# wrong passwords: one message per connection, nothing else changes


def test_wrong_password_on_the_signed_sample():
    plain = analyse(SIGNED)[0]
    records = analyse(SIGNED, credentials=wrong_password())[0]
    _, errors = split(records)
    assert [e.reason for e in errors] == [
        "cannot verify the signatures of auth context 0: NTLMSSP user WMILAB\\analyst: the password or NT hash "
        "given for this user does not verify (its NTLMv2 response does not match), so no signature would verify; "
        "its signed stubs are decoded unverified"]
    assert errors[0].frame == 7                                      # the first signed PDU
    assert [as_dict(r) for r in records if r is not errors[0]] == [as_dict(r) for r in plain]


@pytest.mark.parametrize("capture, user, per_conn", [
    (WMIEXEC, "administrator", {1: "decrypt", 2: "verify"}),
    (WMIEXECPRO, "chewbacca", {0: "decrypt", 1: "verify", 3: "decrypt", 4: "verify"}),
], ids=["impacket_wmiexec", "wmiexecpro"])
def test_real_level5_captures_with_a_wrong_password(capture, user, per_conn):
    base = analyse(capture)[0]
    records = analyse(capture, credentials=wrong_password())[0]
    auth = [r for r in records if type(r) is ErrorRecord and r.stage == "auth"]
    # impacket opens one auth context per interface on a connection: the refusal is said once
    assert {e.conn: e.reason.split()[1] for e in auth} == per_conn and len(auth) == len(per_conn)
    assert all(f"NTLMSSP user {user}: the password or NT hash given" in e.reason for e in auth)
    assert [as_dict(r) for r in records if r not in auth] == [as_dict(r) for r in base]
    signed = [c for c in split(records)[0] if c.auth_level == 5]
    assert signed and all(c.req_verified is None and not c.req_encrypted for c in signed)


# ---------------------------------------------------------------------------
# Kerberos MIC tokens against impacket


def test_rfc4121_mic_tokens_match_impacket():
    from impacket.krb5 import crypto as IC
    from impacket.krb5.gssapi import GSSAPI_AES256

    key = K.Key(18, bytes(range(32)))
    data = bytes(range(200)) * 3                                     # a multiple of 4: impacket adds no pad
    ours = K.cfx_get_mic_dce(key, data, 0x1A2B3C4D, False, True)
    theirs = GSSAPI_AES256().GSS_GetMIC(IC.Key(18, key.value), data, 0x1A2B3C4D)
    assert ours == theirs and len(ours) == 28
    # the acceptor's token: usage 23, SentByAcceptor set
    acc = K.cfx_get_mic_dce(key, data, 7, True, True)
    assert acc[2] == 5 and acc[16:] == IC._SHA1AES256.checksum(IC.Key(18, key.value), 23, data + acc[:16])
    assert K.cfx_verify_mic(key, acc, (b"other", data)) == 1
    with pytest.raises(K.KerberosCryptoError):
        K.cfx_verify_mic(key, acc, (data + b"x",))


def test_rfc4757_mic_tokens_match_impacket():
    from impacket.krb5 import crypto as IC
    from impacket.krb5.gssapi import GSSAPI_RC4

    key = K.Key(23, bytes(range(16)))
    data = b"signed stub " * 20
    for acceptor, direction in ((False, "init"), (True, "accept")):
        ours = K.rc4_get_mic_dce(key, data, 42, acceptor)
        assert ours == GSSAPI_RC4().GSS_GetMIC(IC.Key(23, key.value), data, 42, direction)
        assert len(ours) == 37 and K.rc4_verify_mic(key, ours, (data,)) == 0
    with pytest.raises(K.KerberosCryptoError):
        K.rc4_verify_mic(K.Key(23, b"\x01" * 16), ours, (data,))


def test_the_json_of_a_verified_call_says_so(capsys):
    from wmiscope.cli import main

    assert main(["calls", str(SIGNED), "--credentials", str(CREDS), "--format", "jsonl"]) == 0
    calls = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    calls = [c for c in calls if c.get("type") == "call"]
    assert [(c["method"], c["auth"]["level_name"], c["request"]["verified"], c["response"]["verified"])
            for c in calls] == [("NTLMLogin", "integrity", True, True), ("GetObject", "integrity", True, True),
                                ("ExecMethod", "integrity", True, True)]


def test_transcript_says_whether_each_signature_verified():
    from wmiscope.dissectors.transcript import render

    creds = Credentials()
    creds.load(tshark_util.sample_secrets()["wmi-sealed-samples.credentials"])
    lines = list(render(analyse(SIGNED, credentials=creds)[0]))
    checked = [line for line in lines if line.startswith("  (signed with NTLMSSP/integrity")]
    assert len(checked) == 6 and all("the signature verifies" in line for line in checked)
    wrong = Credentials()
    wrong.add_password("WMILAB\\analyst", "not-the-password")
    lines = list(render(analyse(SIGNED, credentials=wrong)[0]))
    assert not any(line.startswith("  (signed with") for line in lines)     # nothing checked, nothing claimed
    assert sum(line.startswith("! auth:") for line in lines) == 1
