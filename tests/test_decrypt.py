"""Sealed WMI traffic decrypted with the analyst's credentials, end to end.

The project's sealed samples (pcaps/wmi-process-create-{ntlm,kerberos}-sealed.pcap)
are the clear wmi-process-create.pcap session at packet privacy; decrypted, every
call must be what the clear capture shows. tshark, given the same password or
keytab, must decrypt the same stub bytes; impacket (with scapy cutting the TCP
payloads) must open the generator's sealing on its own. Wrong or missing
credentials give one message per connection and leave everything else as it was,
on the samples and on the real captures.
"""

from __future__ import annotations

import json
import subprocess
import struct

import pytest

import tshark_util
from session_util import CREDS, call_pdus, damaged_sessions, payload_pdus, replay, sample_credentials
from tshark_util import CAPTURES, PCAPS, generator
from wmiscope.dissectors.credentials import Credentials, CredentialsError, UserName
from wmiscope.dissectors.pipeline import Analysis, analyse, call_outcome
from wmiscope.dissectors.records import Call, ErrorRecord, Pdu, as_dict


GEN = generator()
CLEAR = PCAPS / "wmi-process-create.pcap"
NTLM = PCAPS / "wmi-process-create-ntlm-sealed.pcap"
KERB = PCAPS / "wmi-process-create-kerberos-sealed.pcap"
KEYTAB = tshark_util.sample_secrets()["wmi-process-create-kerberos.keytab"]
LM_WMI = CAPTURES / "LM_WMI_ProcessCallCreate.pcapng"
needs_tshark = pytest.mark.skipif(not tshark_util.have_tshark(), reason="tshark not installed")


def calls_of(path, credentials=None):
    records, stats = analyse(path, credentials=credentials)
    return [r for r in records if type(r) is Call], [r for r in records if type(r) is ErrorRecord], stats


def _comparable(call: Call) -> dict:
    """What a call says once its frames and its authentication are set aside."""
    d = as_dict(call)
    for k in ("req_frames", "resp_frames", "req_ts", "resp_ts", "auth_type", "auth_level", "auth_principal", "auth_client",
              "req_decrypted", "resp_decrypted", "operation"):
        d.pop(k, None)
    d["req_stub"], d["resp_stub"] = call.req_stub, call.resp_stub
    return json.loads(json.dumps(d, default=lambda o: o.hex() if isinstance(o, bytes) else str(o)))


# ---------------------------------------------------------------------------
# the samples


def test_sample_secrets_are_deterministic_and_kept_out_of_the_repository(tmp_path):
    again = GEN.write_secrets(tmp_path)
    for name, path in tshark_util.sample_secrets().items():
        assert again[name].read_bytes() == path.read_bytes()
        assert not (PCAPS / name).exists()


@pytest.mark.parametrize("sealed", [NTLM, KERB], ids=["ntlm", "kerberos"])
def test_decrypted_sample_is_the_clear_session(sealed):
    clear, clear_errors, clear_stats = calls_of(CLEAR)
    calls, errors, stats = calls_of(sealed, sample_credentials())
    assert [(c.interface, c.method) for c in calls] == [
        ("IWbemLevel1Login", "NTLMLogin"), ("IWbemServices", "GetObject"), ("IWbemServices", "ExecMethod")]
    assert all(c.req_decrypted and c.resp_decrypted and not c.req_encrypted and not c.resp_encrypted for c in calls)
    assert all(c.auth_level == 6 for c in calls)
    assert [_comparable(c) for c in calls] == [_comparable(c) for c in clear]
    assert [call_outcome(c) for c in calls] == [call_outcome(c) for c in clear]
    assert errors == [] and stats.calls_by_outcome == clear_stats.calls_by_outcome
    # the class reply came in three sealed fragments and reassembles to the clear stub
    assert calls[1].resp_frames[1] - calls[1].resp_frames[0] == 2 and len(calls[1].resp_stub) == 2228


def test_without_credentials_the_sealed_samples_stay_encrypted_and_named():
    for sealed in (NTLM, KERB):
        calls, errors, stats = calls_of(sealed)
        assert [c.method for c in calls] == ["NTLMLogin", "GetObject", "ExecMethod"]
        assert all(c.req_encrypted and c.resp_encrypted and c.req_stub is None for c in calls)
        assert errors == [] and stats.calls_by_outcome["encrypted"] == 3


def _tshark_decrypted(path, options) -> dict[int, bytes]:
    out = subprocess.run(["tshark", "-r", str(path), *options, "-T", "fields", "-e", "frame.number",
                          "-e", "dcerpc.decrypted_stub_data"], capture_output=True, text=True, check=True).stdout
    rows = (line.split("\t") for line in out.splitlines())
    return {int(f): bytes.fromhex(h) for f, h in rows if h}


@needs_tshark
@pytest.mark.parametrize("sealed, options", [
    (NTLM, ["-o", f"ntlmssp.nt_password:{GEN.SAMPLE_PASSWORD}"]),
    (KERB, ["-o", "kerberos.decrypt:TRUE", "-o", f"kerberos.file:{KEYTAB}"]),
], ids=["ntlm", "kerberos"])
def test_tshark_decrypts_the_same_stub_bytes(sealed, options):
    theirs = _tshark_decrypted(sealed, options)
    analysis = Analysis(want_pdus=True, credentials=sample_credentials())
    pdus = [r for r in analysis.run(sealed) if type(r) is Pdu and r.ptype in (0, 2)]
    assert sorted(theirs) == [p.frame for p in pdus] and len(pdus) == 8
    pending = b""
    for p in pdus:
        if not p.flags & 2:
            # Wireshark's reassembly of decrypted fragments keeps the auth padding of all but the
            # last one (it is not stub data: ours leaves it out); rebuild that to compare every octet
            assert theirs[p.frame] == p.stub
            pending += p.stub + b"\x00" * p.auth.pad_len
        else:
            assert theirs[p.frame] == pending + p.stub
            pending = b""


@needs_tshark
def test_tshark_clear_stubs_equal_the_decrypted_ones():
    """tshark's clear sample and tshark's decryption of the sealed ones: the same requests and replies."""
    clear = [s for frame, stubs in sorted(tshark_util.stubs("wmi-process-create.pcap").items()) for s in stubs]
    for sealed, options in ((NTLM, ["-o", f"ntlmssp.nt_password:{GEN.SAMPLE_PASSWORD}"]),
                            (KERB, ["-o", "kerberos.decrypt:TRUE", "-o", f"kerberos.file:{KEYTAB}"])):
        got = _tshark_decrypted(sealed, options)
        whole = [v for f, v in sorted(got.items()) if len(v) != 1000]     # the last fragment holds the reply
        # GetObject's class reply is the fragmented one: tshark's reassembly of its decrypted
        # fragments keeps the 16 octets of auth padding of the two earlier fragments.
        reply = max(len(v) for v in clear)
        assert [len(v) for v in whole] == [len(v) if len(v) != reply else reply + 16 for v in clear]
        assert [v for v in whole if len(v) != reply + 16] == [v for v in clear if len(v) != reply]


# ---------------------------------------------------------------------------
# the generator's sealing, opened by impacket alone (scapy cuts the TCP payloads)


def _clear_plaintexts():
    """Each clear fragment's stub, padded to 16 as the sealed session pads it, in order per direction."""
    out = {0: [], 1: []}
    for direction, pdu, hdr, _ in call_pdus(payload_pdus(CLEAR)):
        stub = pdu[hdr:]
        out[direction].append(stub + b"\x00" * ((-len(stub)) % 16))
    return out


def test_impacket_opens_the_ntlm_sample():
    from Cryptodome.Cipher import ARC4
    from impacket import ntlm as I

    pdus = payload_pdus(NTLM)
    auth3 = next(p for d, p in pdus if p[2] == 16)
    challenge = next(p for d, p in pdus if p[2] == 12)
    auth_msg = I.NTLMAuthChallengeResponse()
    auth_msg.fromString(auth3[28:])
    chal_msg = I.NTLMAuthChallenge()
    chal_msg.fromString(challenge[len(challenge) - struct.unpack_from("<H", challenge, 10)[0]:])
    nt = auth_msg["ntlm"]
    key = I.NTOWFv2("analyst", GEN.SAMPLE_PASSWORD, "WMILAB")
    assert I.hmac_md5(key, chal_msg["challenge"] + nt[16:]) == nt[:16]       # NTProofStr
    base = I.hmac_md5(key, nt[:16])
    flags = auth_msg["flags"]
    exported = ARC4.new(I.KXKEY(flags, base, b"", b"", "", "", "")).decrypt(auth_msg["session_key"])
    clear = _clear_plaintexts()
    handles, seq = {}, {0: 0, 1: 0}
    for d, mode in ((0, "Client"), (1, "Server")):
        handles[d] = (I.SIGNKEY(flags, exported, mode), ARC4.new(I.SEALKEY(flags, exported, mode)).encrypt)
    opened = {0: [], 1: []}
    for d, pdu, hdr, trailer_at in call_pdus(pdus):
        sign_key, handle = handles[d]
        plain = handle(pdu[hdr:trailer_at])
        signature = I.SIGN(flags, sign_key, pdu[:hdr] + plain + pdu[trailer_at:trailer_at + 8], seq[d], handle)
        assert signature.getData() == pdu[trailer_at + 8:]
        seq[d] += 1
        opened[d].append(plain)
    assert opened == clear


def test_impacket_opens_the_kerberos_sample():
    from Cryptodome.Hash import HMAC, SHA1
    from impacket.krb5 import crypto as IC
    from impacket.krb5.asn1 import AP_REP, AP_REQ, Authenticator, EncAPRepPart, EncTicketPart
    from impacket.krb5.gssapi import GSSAPI_AES256
    from pyasn1.codec.der import decoder

    pdus = payload_pdus(KERB)
    bind, ack = pdus[0][1], pdus[1][1]
    req = decoder.decode(bind[bind.index(b"\x6e\x82"):], asn1Spec=AP_REQ())[0]
    service_key = IC.Key(18, GEN.sample_service_key(18).value)
    ticket = decoder.decode(IC.decrypt(service_key, 2, bytes(req["ticket"]["enc-part"]["cipher"])),
                            asn1Spec=EncTicketPart())[0]
    session = IC.Key(18, bytes(ticket["key"]["keyvalue"]))
    authenticator = decoder.decode(IC.decrypt(session, 11, bytes(req["authenticator"]["cipher"])),
                                   asn1Spec=Authenticator())[0]
    assert struct.unpack_from("<I", bytes(authenticator["cksum"]["checksum"]), 20)[0] & 0x1000   # DCE style
    rep = decoder.decode(ack[ack.index(b"\x6f\x81"):], asn1Spec=AP_REP())[0]
    rep_part = decoder.decode(IC.decrypt(session, 12, bytes(rep["enc-part"]["cipher"])), asn1Spec=EncAPRepPart())[0]
    subkey = IC.Key(18, bytes(rep_part["subkey"]["keyvalue"]))
    aes = IC._AES256CTS
    clear = _clear_plaintexts()
    opened = {0: [], 1: []}
    for d, pdu, hdr, trailer_at in call_pdus(pdus):
        token = pdu[trailer_at + 8:]
        ec, rrc = struct.unpack_from(">HH", token, 4)
        assert token[2] == (7 if d else 6) and (ec, rrc) == (16, 28)
        ct = GSSAPI_AES256().unrotate(token[16:] + pdu[hdr:trailer_at], rrc + ec)
        usage = 22 if d else 24
        ke = aes.derive(subkey, struct.pack(">IB", usage, 0xAA))
        ki = aes.derive(subkey, struct.pack(">IB", usage, 0x55))
        plain = aes.basic_decrypt(ke, ct[:-12])
        conf, data, tail = plain[:16], plain[16:-32], plain[-32:]
        assert tail[16:18] == b"\x05\x04"                       # the encrypted copy of the token header
        mac = HMAC.new(ki.contents, conf + pdu[:hdr] + data + pdu[trailer_at:trailer_at + 8] + tail, SHA1)
        assert mac.digest()[:12] == ct[-12:]                    # header signing: PDU header and trailer signed
        opened[d].append(data)
    assert opened == clear


# ---------------------------------------------------------------------------
# other mechanisms and options, generated on the fly


VARIANTS = {
    "ntlmv1": lambda: GEN.NtlmSealer(ntlm_v2=False, ess=False),
    "ntlmv1-ess": lambda: GEN.NtlmSealer(ntlm_v2=False, ess=True),
    "ntlmv2-spnego": lambda: GEN.NtlmSealer(auth_type=GEN.RPC_C_AUTHN_GSS_NEGOTIATE),
    "kerberos-rc4": lambda: GEN.KerberosSealer(etype=23),
    "kerberos-aes128-direct": lambda: GEN.KerberosSealer(etype=17, auth_type=GEN.RPC_C_AUTHN_GSS_KERBEROS),
    "kerberos-no-header-signing": lambda: GEN.KerberosSealer(header_signing=False),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_mechanism_variant_decrypts_to_the_clear_calls(variant, tmp_path):
    path = tmp_path / f"{variant}.pcap"
    GEN.process_create(path, VARIANTS[variant]())
    clear, _, _ = calls_of(CLEAR)
    calls, errors, _ = calls_of(path, sample_credentials())
    assert errors == []
    assert all(c.req_decrypted and c.resp_decrypted for c in calls)
    assert [(c.req_stub, c.resp_stub) for c in calls] == [(c.req_stub, c.resp_stub) for c in clear]
    expected_type = 10 if variant.startswith("ntlmv1") or variant == "ntlmv2" else \
        16 if variant.endswith("direct") else 9
    assert {c.auth_type for c in calls} == {expected_type}


@needs_tshark
@pytest.mark.parametrize("variant", ["ntlmv1-ess", "kerberos-rc4", "kerberos-aes128-direct"])
def test_tshark_agrees_on_the_variants(variant, tmp_path):
    # (tshark 4.0 does not decrypt NTLMv1 without extended session security at all: that
    # variant is held to the MS-NLMP 4.2.2 vectors in test_crypto_ntlm instead)
    path = tmp_path / f"{variant}.pcap"
    GEN.process_create(path, VARIANTS[variant]())
    options = (["-o", f"ntlmssp.nt_password:{GEN.SAMPLE_PASSWORD}"] if variant.startswith("ntlm")
               else ["-o", "kerberos.decrypt:TRUE", "-o", f"kerberos.file:{KEYTAB}"])
    theirs = _tshark_decrypted(path, options)
    analysis = Analysis(want_pdus=True, credentials=sample_credentials())
    ours = {r.frame: r.stub for r in analysis.run(path) if type(r) is Pdu and r.ptype in (0, 2) and r.flags & 3 == 3}
    assert ours and all(theirs[f] == stub for f, stub in ours.items())


# ---------------------------------------------------------------------------
# several security contexts on one connection, and a damaged PDU


def _two_context_session(tamper: int | None = None):
    """NTLM on auth context 0 and Kerberos on auth context 3, requests alternating between them."""
    synth = GEN.synth
    ntlm, krb = GEN.NtlmSealer(), GEN.KerberosSealer()
    krb.ctx_id = 3
    steps = ntlm.secure([(0, synth.bind(1, [(0, GEN.IWBEM_SERVICES, (0, 0))]))])
    steps += ntlm.secure([(1, synth.bind_ack(1, 1))])
    steps += krb.secure([(0, synth.bind(2, [(1, GEN.IWBEM_SERVICES, (0, 0))], alter=True))])
    steps += krb.secure([(1, synth.bind_ack(2, 1, alter=True))])
    stubs = []
    for i in range(6):
        sealer = (ntlm, krb)[i % 2]
        req, resp = bytes([i]) * (40 + 24 * i), bytes([0x80 | i]) * (30 + 10 * i)
        stubs.append((req, resp))
        sealed = sealer.secure([(0, pdu) for pdu in synth.request(10 + i, i % 2, 3, req,
                                                                  object_uuid=GEN.SERVICES_IPID)])
        if tamper == i:
            d, pdu = sealed[0]
            sealed[0] = (d, pdu[:50] + bytes([pdu[50] ^ 1]) + pdu[51:])
        steps += sealed + sealer.secure([(1, pdu) for pdu in synth.response(10 + i, i % 2, resp)])
    return steps, stubs


def test_several_auth_contexts_on_one_connection_each_with_its_keys():
    steps, stubs = _two_context_session()
    out = replay(steps, sample_credentials())
    calls = [r for r in out if type(r) is Call]
    assert [(c.req_stub, c.resp_stub) for c in calls] == stubs
    assert [c.auth_type for c in calls] == [10, 9] * 3 and all(c.req_decrypted for c in calls)
    assert not [r for r in out if type(r) is ErrorRecord]


@pytest.mark.parametrize("tamper", [2, 3])
def test_a_pdu_whose_signature_fails_stays_encrypted_and_is_said_once(tamper):
    steps, stubs = _two_context_session(tamper)
    out = replay(steps, sample_credentials())
    calls = [r for r in out if type(r) is Call]
    errors = [r for r in out if type(r) is ErrorRecord]
    assert len(errors) == 1 and errors[0].stage == "auth" and errors[0].conn == 4
    assert "does not verify" in errors[0].reason and f"call_id {10 + tamper}" in errors[0].reason
    assert ("analyst" if tamper % 2 == 0 else "analyst@WMILAB.EXAMPLE") in errors[0].reason
    assert calls[tamper].req_encrypted and calls[tamper].req_stub is None
    others = [(c.req_stub, c.resp_stub) for i, c in enumerate(calls) if i != tamper]
    assert others == [s for i, s in enumerate(stubs) if i != tamper]   # the RC4 streams stay in step


# ---------------------------------------------------------------------------
# wrong and missing credentials


def test_wrong_password_is_said_once_and_the_rest_is_complete():
    wrong = Credentials()
    wrong.add_password("WMILAB\\analyst", "not the password")
    plain_calls, _, plain_stats = calls_of(NTLM)
    calls, errors, stats = calls_of(NTLM, wrong)
    assert len(errors) == 1
    e = errors[0]
    assert (e.stage, e.conn, e.frame) == ("auth", 0, 7)
    assert "NTLMSSP user WMILAB\\analyst" in e.reason and "does not verify" in e.reason
    assert "not the password" not in e.reason
    assert [as_dict(c) for c in calls] == [as_dict(c) for c in plain_calls]
    assert stats.calls_by_outcome == plain_stats.calls_by_outcome and stats.pdus == plain_stats.pdus


def test_missing_keys_are_said_per_connection_with_the_principal():
    nobody = Credentials()
    nobody.add_password("OTHER\\someone", "x")
    _, errors, _ = calls_of(NTLM, nobody)
    assert [e.reason for e in errors] == [
        "cannot decrypt auth context 0: NTLMSSP user WMILAB\\analyst: no password or NT hash given for this user; "
        "its sealed stubs stay encrypted"]
    wrong_key = Credentials()
    wrong_key.add_key("host/srv-files01.wmilab.example@WMILAB.EXAMPLE", "aes256", "00" * 32, 2)
    calls, errors, _ = calls_of(KERB, wrong_key)
    assert len(errors) == 1 and "host/srv-files01.wmilab.example@WMILAB.EXAMPLE" in errors[0].reason
    assert "no key for this principal" in errors[0].reason and all(c.req_encrypted for c in calls)


def test_nt_hash_and_keytab_alone_suffice():
    by_hash = Credentials()
    by_hash.add_nt_hash("analyst", "aad3b435b51404eeaad3b435b51404ee:" + GEN.crypto_ntlm.ntowfv1(GEN.SAMPLE_PASSWORD).hex())
    assert all(c.req_decrypted for c in calls_of(NTLM, by_hash)[0])
    by_keytab = Credentials()
    assert by_keytab.add_keytab(KEYTAB) == 3
    assert all(c.resp_decrypted for c in calls_of(KERB, by_keytab)[0])


def test_real_capture_with_a_wrong_password_keeps_its_full_analysis():
    wrong = Credentials()
    wrong.add_password("3B\\lgreen", "Password1")
    base = [r for r in analyse(LM_WMI)[0] if type(r) in (Call, ErrorRecord)]
    records = [r for r in analyse(LM_WMI, credentials=wrong)[0] if type(r) in (Call, ErrorRecord)]
    auth = [r for r in records if type(r) is ErrorRecord and r.stage == "auth"]
    assert len(auth) == 1
    assert auth[0].conn == 3 and auth[0].frame == 52
    assert "NTLMSSP user 3B\\lgreen" in auth[0].reason and "NTLMv2 response does not match" in auth[0].reason
    assert [as_dict(r) for r in records if r is not auth[0]] == [as_dict(r) for r in base]
    sealed = [r for r in records if type(r) is Call and r.req_encrypted]
    assert [c.method for c in sealed] == ["GetObject", "ExecMethod"]


def test_real_kerberos_capture_without_the_service_key():
    wrong = Credentials()
    wrong.add_password("*", "Password1")
    records, stats = analyse(CAPTURES / "covenant_sharpwmi_dcerpc_wmi_execquery_execmethod.cap", credentials=wrong)
    auth = [r for r in records if type(r) is ErrorRecord and r.stage == "auth"]
    assert [r.reason for r in auth] == [
        "cannot decrypt auth context 2: Kerberos service host/WORKSTATION6.theshire.local@THESHIRE.LOCAL "
        "(ticket aes256-cts-hmac-sha1-96, kvno 1): none of the 1 key(s) of its etype given decrypts its ticket "
        "(no key for this principal); its sealed stubs stay encrypted"]
    base = analyse(CAPTURES / "covenant_sharpwmi_dcerpc_wmi_execquery_execmethod.cap")[1]
    assert stats.calls_by_outcome == base.calls_by_outcome


# ---------------------------------------------------------------------------
# credentials: the file, the names, the command line


def test_credentials_file_forms_and_errors(tmp_path):
    f = tmp_path / "creds"
    f.write_text("# comment\n\npassword  WMILAB\\analyst  two words  \nnthash admin@wmilab.example "
                 + "11" * 16 + f"\nkey host/x@R aes128 {'22' * 16} 5\nkeytab {KEYTAB}\n")
    c = Credentials()
    c.load(f)
    assert repr(c) == "Credentials(1 passwords, 1 NT hashes, 4 Kerberos keys)"
    assert c.ntlm_secrets("ANALYST", "wmilab") == [(GEN.crypto_ntlm.ntowfv1("two words"),
                                                    GEN.crypto_ntlm.lmowfv1("two words"))]
    assert c.ntlm_secrets("admin", "WMILAB") == [(b"\x11" * 16, None)]
    assert c.ntlm_secrets("analyst", "OTHER") == []
    for line, message in (("password WMILAB\\x", "expected: password USER PASSWORD"),
                          ("nthash u 1234", "32 hex digits"), ("key p aes512 00", "unknown Kerberos etype"),
                          ("keytab /nonexistent", "No such file"), ("user a b", "unknown entry 'user'")):
        f.write_text("# x\n" + line + "\n")
        with pytest.raises(CredentialsError, match=message) as exc:
            Credentials().load(f)
        assert f"{f}:2:" in str(exc.value)


def test_user_names_match_netbios_and_dns_domains():
    assert UserName.parse("3B\\lgreen").matches("LGREEN", "3b")
    assert UserName.parse("lgreen@3b.corp.example").matches("lgreen", "3B")
    assert UserName.parse("lgreen").matches("lgreen", "ANY")
    assert UserName.parse("*").matches("whoever", "ANY")
    assert not UserName.parse("3B\\lgreen").matches("lgreen", "OTHER")


def test_command_line_decrypts_and_says_so(capsys):
    from wmiscope.cli import main

    assert main(["calls", str(KERB), "--keytab", str(KEYTAB), "--format", "jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    calls = [r for r in rows if r.get("type") == "call"]
    assert [(c["method"], c["decrypted"], c["request"]["decrypted"], c["encrypted"]) for c in calls] == [
        ("NTLMLogin", True, True, False), ("GetObject", True, True, False), ("ExecMethod", True, True, False)]
    assert main(["calls", str(NTLM), "--user", "WMILAB\\analyst", "--password", "nope"]) == 0
    out = capsys.readouterr().out
    assert out.count("cannot decrypt auth context 0: NTLMSSP user WMILAB\\analyst") == 1 and "nope" not in out
    assert main(["stats", str(NTLM), "--credentials", str(CREDS), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["calls_by_outcome"]["encrypted"] == 0
    assert main(["stats", str(NTLM), "--nt-hash", "xyz"]) == 2      # a usage error, in one line
    assert "32 hex digits" in capsys.readouterr().err


def test_transcript_of_the_decrypted_samples_is_the_clear_one(capsys):
    from wmiscope.cli import main

    def transcript(*argv):
        assert main(["transcript", *argv]) == 0
        lines = capsys.readouterr().out.splitlines()
        return lines[:-1], lines[-1]               # the last line counts calls, errors and frames

    clear, clear_tail = transcript(str(CLEAR))
    assert any("Win32_Process" in line for line in clear) and "errors" in clear_tail
    for sealed in (NTLM, KERB):
        body, tail = transcript(str(sealed), "--credentials", str(CREDS))
        said = [line for line in body if line.lstrip().startswith("(decrypted")]
        assert len(said) == 6                      # each request and response says it was opened
        assert [line for line in body if line not in said] == clear
        # The same calls and outcomes; the sealed session also carries its auth3 /
        # alter_context PDUs, so it counts more PDUs than the clear one.
        calls, pdus = tail.split("), ")[0], int(tail.split("), ")[1].split(" PDUs")[0])
        clear_calls, clear_pdus = clear_tail.split("), ")[0], int(clear_tail.split("), ")[1].split(" PDUs")[0])
        assert calls == clear_calls and pdus > clear_pdus and ", 0 errors" in tail


@pytest.mark.parametrize("make", [GEN.NtlmSealer, GEN.KerberosSealer, lambda: GEN.KerberosSealer(etype=23)],
                         ids=["ntlm", "kerberos", "kerberos-rc4"])
def test_damaged_handshakes_and_sealed_pdus_never_break_the_run(make, tmp_path):
    GEN.process_create(tmp_path / "s.pcap", make())
    steps = payload_pdus(tmp_path / "s.pcap")
    for damaged in damaged_sessions(steps, seed=1234, count=60):
        out = replay(damaged, sample_credentials())
        calls = [r for r in out if type(r) is Call]
        auth_errors = [r for r in out if type(r) is ErrorRecord and r.stage == "auth"]
        assert len(calls) == 3
        assert not any("internal error" in e.reason for e in auth_errors)
        assert len([e for e in auth_errors if e.reason.startswith("cannot decrypt")]) <= 1   # said once
