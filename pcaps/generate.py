"""Writes the project's sample captures into pcaps/.

    python pcaps/generate.py            # all samples, next to this file
    python pcaps/generate.py OUTDIR
    python pcaps/generate.py --secrets DIR   # the test-only keys of the sealed samples

Each sample is a WMI session as Windows puts it on the wire (see wmiscope.synth
for the TCP and DCE/RPC framing), with stubs written by our NDR writer and
objects by our MS-WMIO builder. The *-sealed samples are the same session at
packet privacy (NTLMv2, Kerberos AES256) under TEST-ONLY credentials published in
this folder (see "Sealed variants" below). Tests check every sample against independent
implementations: tshark must read each PDU as we do, impacket must decode the
objects we encoded. Output is deterministic (fixed clock, fixed UUIDs), so a
regenerated file is byte-identical and `git diff` shows real changes only.

The spec-*.pcap samples carry the calls and values of the MS-WMI section 4 traces (hosts,
causality ids, IPIDs, proxy GUIDs, flags, object sizes; tests/test_spec_traces.py compares our
transcript of them with the spec's text); wmi-async-query-callbacks, wmi-semisync-execmethod,
wmi-refresher and wmi-persistence-subscription show what the traces do not. Each of these
sessions starts with the DCOM activation on port 135 (see DcomSession).
"""

from __future__ import annotations

import hashlib
import struct
import sys
import uuid
from pathlib import Path

from wmiscope import synth
from wmiscope.dissectors.dcom import (OBJREF_CUSTOM, OBJREF_STANDARD, build_dualstringarray, build_objref,
                                      write_orpcthat, write_orpcthis)
from wmiscope.dissectors import crypto_kerberos, crypto_ntlm
from wmiscope.dissectors.ndr import NdrWriter
from wmiscope.formats import wmio
from wmiscope.dissectors import interfaces, wmi
from wmiscope.dissectors.dcom import build_activation_properties
from wmiscope.formats.object_array import ClassCache, PacketType, build_object_array
from wmiscope.formats.refresher import RefreshedObject

IWBEM_LEVEL1_LOGIN = "f309ad18-d86a-11d0-a075-00c04fb68820"
IWBEM_SERVICES = "9556dc99-828c-11cf-a37e-00aa003240c7"
IWBEM_CLASS_OBJECT = "dc12a681-737f-11cf-884d-00aa004b2e24"
CLSID_WBEM_CLASS_OBJECT_UNMARSHALER = "4590f812-1d3a-11d0-891f-00aa004b2e24"

CLIENT = ("10.20.30.40", 50111)
SERVER = ("10.20.30.50", 49669)
SERVER_NAME = "SRV-FILES01"
LOGIN_IPID = "00008c00-1a5c-0000-4b1d-7e0a3c2f1a01"
SERVICES_IPID = "00009401-1a5c-0000-7a6e-2b9f51c3d402"
CAUSALITY = "5a6f0c3e-2b1d-4e8a-9c7b-0d1e2f3a4b5c"


def _stub(build) -> bytes:
    w = NdrWriter()
    build(w)
    return w.getvalue()


def _class_objref(obj) -> bytes:
    """IWbemClassObject custom-marshaled (MS-WMI 2.2.4): OBJREF_CUSTOM around an EncodingUnit."""
    return build_objref(IWBEM_CLASS_OBJECT, OBJREF_CUSTOM, clsid=CLSID_WBEM_CLASS_OBJECT_UNMARSHALER,
                        payload=wmio.build_encoding_unit(obj))


def win32_process_class() -> wmio.WmiClass:
    """A Win32_Process shaped like the real one (keys, CIMTYPE qualifiers, Create's signature)."""
    startup = wmio.new_class("Win32_ProcessStartup", properties=[("ShowWindow", "uint16")])
    create_in = [("CommandLine", "string", None, [("In", True)]),
                 ("CurrentDirectory", "string", None, [("In", True)]),
                 ("ProcessStartupInformation", "object:Win32_ProcessStartup", None, [("In", True)])]
    create_out = [("ProcessId", "uint32", None, [("Out", True)]),
                  ("ReturnValue", "uint32", None, [("Out", True)])]
    del startup
    return wmio.new_class(
        "Win32_Process", superclass="CIM_Process",
        qualifiers=[("dynamic", True), ("provider", "CIMWin32"), ("UUID", "{8502C4DC-5FBB-11D2-AAC1-006008C78BC7}")],
        properties=[
            ("Caption", "string"), ("CommandLine", "string"), ("CreationDate", "datetime"),
            ("ExecutablePath", "string"), ("Handle", "string", None, [("key", True)]),
            ("HandleCount", "uint32"), ("Name", "string"), ("ParentProcessId", "uint32"),
            ("ProcessId", "uint32"), ("SessionId", "uint32"), ("ThreadCount", "uint32"),
            ("WorkingSetSize", "uint64"),
        ],
        methods=[("Create", create_in, create_out, [("Constructor", True), ("Static", True)]),
                 ("Terminate", [("Reason", "uint32", None, [("In", True)])],
                  [("ReturnValue", "uint32", None, [("Out", True)])], [("Destructor", True)])],
    )


def process_create(path: Path, security=None) -> None:
    """NTLMLogin to root\\cimv2, GetObject Win32_Process (a fragmented reply), ExecMethod Create.

    security: a sealing variant (see `_Sealer`) that authenticates the first bind and
    seals every call; the calls and their stubs stay the same.
    """
    clock = synth.Clock()
    with synth.PcapWriter(path) as pcap:
        tcp = synth.TcpSession(pcap, clock, CLIENT, SERVER)
        tcp.open()
        call = iter(range(1, 100))

        def exchange(req_pdus, resp_pdus):
            steps = [(0, pdu) for pdu in req_pdus] + [(1, pdu) for pdu in resp_pdus]
            if security is not None:
                steps = security.secure(steps)
            last = 0
            for direction, pdu in steps:
                if direction != last:          # the peer takes a moment to answer
                    clock.tick(0.004)
                    last = direction
                tcp.send(direction, pdu)

        cid = next(call)
        exchange([synth.bind(cid, [(0, IWBEM_LEVEL1_LOGIN, (0, 0))])],
                 [synth.bind_ack(cid, 1, sec_addr=str(SERVER[1]))])

        cid = next(call)
        req = wmi.encode_request("IWbemLevel1Login", "NTLMLogin", {
            "wszNetworkResource": f"\\\\{SERVER_NAME}\\root\\cimv2", "wszPreferredLocale": "en-US,en",
            "lFlags": 0, "pCtx": None}, cid=CAUSALITY)
        services = build_objref(IWBEM_SERVICES, OBJREF_STANDARD, ipid=SERVICES_IPID,
                                oxid=0x6d1a4c0b2e9f8a31, oid=0x1c2b3a4d5e6f7081,
                                resolver=build_dualstringarray([(0x07, SERVER_NAME), (0x07, SERVER[0])]))
        resp = wmi.encode_response("IWbemLevel1Login", "NTLMLogin", {"ppNamespace": services})
        exchange(synth.request(cid, 0, 6, req, object_uuid=LOGIN_IPID), synth.response(cid, 0, resp))

        cid = next(call)
        exchange([synth.bind(cid, [(1, IWBEM_SERVICES, (0, 0))], alter=True)],
                 [synth.bind_ack(cid, 1, alter=True)])

        cls = win32_process_class()
        cid = next(call)
        # Windows asks for the object back with a pointer to a NULL interface pointer.
        req = wmi.encode_request("IWbemServices", "GetObject", {
            "strObjectPath": "Win32_Process", "lFlags": 0, "pCtx": None,
            "ppObject": wmi.REF_TO_NULL, "ppCallResult": None}, cid=CAUSALITY)
        resp = wmi.encode_response("IWbemServices", "GetObject", {"ppObject": cls, "ppCallResult": None})
        # A small max_xmit_frag makes the class reply span several fragments, as big replies do.
        exchange(synth.request(cid, 1, 6, req, object_uuid=SERVICES_IPID),
                 synth.response(cid, 1, resp, max_frag=1024))

        create = cls.methods[0]
        in_params = wmio.new_instance(create.in_params, {"CommandLine": "cmd.exe /c whoami > C:\\Windows\\Temp\\o.txt"})
        out_params = wmio.new_instance(create.out_params, {"ProcessId": 4242, "ReturnValue": 0})
        cid = next(call)
        req = wmi.encode_request("IWbemServices", "ExecMethod", {
            "strObjectPath": "Win32_Process", "strMethodName": "Create", "lFlags": 0, "pCtx": None,
            "pInParams": in_params, "ppOutParams": wmi.REF_TO_NULL, "ppCallResult": None}, cid=CAUSALITY)
        resp = wmi.encode_response("IWbemServices", "ExecMethod", {"ppOutParams": out_params, "ppCallResult": None})
        exchange(synth.request(cid, 1, 24, req, object_uuid=SERVICES_IPID), synth.response(cid, 1, resp))
        tcp.close()


# --------------------------------------------------------------------------
# Sealed variants: the same session at packet privacy (auth level 6).
#
# TEST-ONLY SECRETS. The samples below are sealed with credentials made up for
# them and published here so that anyone can decrypt them (wmiscope, tshark,
# impacket): user WMILAB\analyst, password SAMPLE_PASSWORD; the Kerberos service
# key of host/srv-files01.wmilab.example@WMILAB.EXAMPLE comes from a made-up
# password. They protect nothing. They are still not kept in the repository:
# `python pcaps/generate.py --secrets DIR` writes the keytab and a credentials
# file in wmiscope's format listing both (the tests do that in a temp dir).
#
# Every "random" value (challenges, session keys, confounders, timestamps) is
# fixed, so the files are byte-identical each time they are written.

SAMPLE_DOMAIN = "WMILAB"
SAMPLE_USER = "analyst"
SAMPLE_PASSWORD = "Sample-Only-Pa55!"
SAMPLE_WORKSTATION = "WKS-ANALYST7"
SAMPLE_REALM = "WMILAB.EXAMPLE"
SAMPLE_SERVICE = ("host", "srv-files01.wmilab.example")
SAMPLE_SERVICE_PASSWORD = "srv-files01 machine account, sample only"
SAMPLE_KVNO = 2

RPC_C_AUTHN_GSS_NEGOTIATE, RPC_C_AUTHN_WINNT, RPC_C_AUTHN_GSS_KERBEROS = 9, 10, 16
PKT_PRIVACY = 6
PFC_SUPPORT_HEADER_SIGN = 0x04
_FILETIME_2023 = 133_444_000_000_000_000          # MsvAvTimestamp / client blob time (2023-11-14)
_U16, _U32 = struct.Struct("<H"), struct.Struct("<I")


def _fixed(label: str, n: int) -> bytes:
    """A 'random' value that is the same on every run."""
    return hashlib.sha256(b"wmiscope sample: " + label.encode()).digest()[:n]


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
            if ptype in (11, 14) and self.leg == 0:       # bind, or alter_context for a further context
                self.leg, self.bind_call = 1, _U32.unpack_from(pdu, 12)[0]
                out.append((direction, self._with_auth(pdu, self.first_leg())))
            elif ptype in (12, 15) and self.leg == 1:
                self.leg = 2
                out.append((direction, self._with_auth(pdu, self.second_leg())))
                out += self.third_leg()
            elif ptype in (0, 2) and self.leg == 2:
                out.append((direction, self._seal_pdu(direction, pdu)))
            else:
                out.append((direction, pdu))
        return out

    def _with_auth(self, pdu: bytes, token: bytes, ptype: int | None = None) -> bytes:
        """A bind-type PDU with a sec_trailer and auth_value appended (4-octet aligned)."""
        body = pdu[16:]
        pad = (-len(body)) % 4
        trailer = struct.pack("<BBBBI", self.auth_type, PKT_PRIVACY, pad, 0, self.ctx_id)
        frag_len = 16 + len(body) + pad + 8 + len(token)
        head = bytes((pdu[0], pdu[1], pdu[2] if ptype is None else ptype, pdu[3] | PFC_SUPPORT_HEADER_SIGN))
        return head + pdu[4:8] + struct.pack("<HHI", frag_len, len(token), _U32.unpack_from(pdu, 12)[0]) \
            + body + b"\x00" * pad + trailer + token

    def _auth3(self, token: bytes) -> bytes:
        """rpc_auth_3 (MS-RPCE 2.2.2.10): four octets of pad, then the trailer."""
        bare = struct.pack("<BBBB4sHHI", 5, 0, 16, 3 | PFC_SUPPORT_HEADER_SIGN, b"\x10\x00\x00\x00", 20, 0,
                           self.bind_call) + b"\x00" * 4
        return self._with_auth(bare, token)

    def _seal_pdu(self, direction: int, pdu: bytes) -> bytes:
        ptype, flags = pdu[2], pdu[3]
        hdr_len = 24 + (16 if ptype == 0 and flags & synth.PFC_OBJECT_UUID else 0)
        stub = pdu[hdr_len:]
        pad = (-len(stub)) % 16
        plain = stub + b"\x00" * pad
        frag_len = hdr_len + len(plain) + 8 + self.verifier_len
        head = pdu[:8] + struct.pack("<HH", frag_len, self.verifier_len) + pdu[12:hdr_len]
        trailer = struct.pack("<BBBBI", self.auth_type, PKT_PRIVACY, pad, 0, self.ctx_id)
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


def _av_pairs(pairs: list[tuple[int, bytes]]) -> bytes:
    return b"".join(_U16.pack(i) + _U16.pack(len(v)) + v for i, v in pairs) + b"\x00\x00\x00\x00"


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
               + struct.pack("<HHI", 0, 0, 40) * 2 + NTLM_VERSION)
        self.messages.append(msg)
        return self._spnego(1, msg)

    def second_leg(self) -> bytes:
        utf16 = lambda t: t.encode("utf-16-le")
        self.target_info = _av_pairs([
            (2, utf16(SAMPLE_DOMAIN)), (1, utf16(SERVER_NAME)), (4, utf16("wmilab.example")),
            (3, utf16("srv-files01.wmilab.example")), (5, utf16("wmilab.example")),
            (7, struct.pack("<Q", _FILETIME_2023))])
        self.server_challenge = _fixed("server challenge", 8)
        name = utf16(SAMPLE_DOMAIN)
        offset = 56
        msg = (b"NTLMSSP\x00" + _U32.pack(2) + struct.pack("<HHI", len(name), len(name), offset)
               + _U32.pack(NTLM_CHALLENGE_FLAGS) + self.server_challenge + b"\x00" * 8
               + struct.pack("<HHI", len(self.target_info), len(self.target_info), offset + len(name))
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
        fields = [lm, nt, SAMPLE_DOMAIN.encode("utf-16-le"), SAMPLE_USER.encode("utf-16-le"),
                  SAMPLE_WORKSTATION.encode("utf-16-le"), enc_key]
        header_len = 88 if self.ntlm_v2 else 72
        descr, offset = b"", header_len
        payload = b""
        for value in fields:
            descr += struct.pack("<HHI", len(value), len(value), offset + len(payload))
            payload += value
        head = b"NTLMSSP\x00" + _U32.pack(3) + descr + _U32.pack(flags) + NTLM_VERSION
        if self.ntlm_v2:
            bare = head + b"\x00" * 16 + payload
            mic = crypto_ntlm.hmac_md5(exported, self.messages[0] + self.messages[1] + bare)
            msg = head + mic + payload
        else:
            msg = head + payload
        self.messages.append(msg)
        self.session = crypto_ntlm.NtlmSession(flags, exported)
        return [(0, self._auth3(self._spnego(3, msg)))]

    def wrap(self, direction, head, plain, trailer):
        return crypto_ntlm.NtlmDceSecurity.seal(self.session, direction, head, plain, trailer)


# ---- Kerberos (RFC 4120, RFC 4121, MS-KILE 3.4.5.1 three-leg DCE style)

OID_SPNEGO = "1.3.6.1.5.5.2"
OID_MS_KRB5 = "1.2.840.48018.1.2.2"
OID_KRB5 = "1.2.840.113554.1.2.2"
OID_NTLMSSP = "1.3.6.1.4.1.311.2.2.10"


def _der(tag: int, *parts: bytes) -> bytes:
    body = b"".join(parts)
    n = len(body)
    if n < 0x80:
        length = bytes((n,))
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes((0x80 | len(raw),)) + raw
    return bytes((tag,)) + length + body


def _int(v: int) -> bytes:
    return _der(0x02, v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big", signed=True))


def _ctx(n: int, inner: bytes) -> bytes:
    return _der(0xA0 + n, inner)


def _seq(*parts: bytes) -> bytes:
    return _der(0x30, *parts)


def _gstr(text: str) -> bytes:
    return _der(0x1B, text.encode())


def _time(text: str) -> bytes:
    return _der(0x18, text.encode())


def _oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray((40 * arcs[0] + arcs[1],))
    for a in arcs[2:]:
        chunk = [a & 0x7F]
        a >>= 7
        while a:
            chunk.append(0x80 | (a & 0x7F))
            a >>= 7
        body += bytes(reversed(chunk))
    return _der(0x06, bytes(body))


def _principal(name_type: int, *names: str) -> bytes:
    return _seq(_ctx(0, _int(name_type)), _ctx(1, _seq(*(_gstr(n) for n in names))))


def _enc_data(etype: int, cipher: bytes, kvno: int | None = None) -> bytes:
    return _seq(_ctx(0, _int(etype)), *([_ctx(1, _int(kvno))] if kvno is not None else []),
                _ctx(2, _der(0x04, cipher)))


def _enc_key(key) -> bytes:
    return _seq(_ctx(0, _int(key.etype)), _ctx(1, _der(0x04, key.value)))


def spnego_init(mechs: list[str], token: bytes) -> bytes:
    """RFC 4178 NegTokenInit in its GSS InitialContextToken framing."""
    return _der(0x60, _oid(OID_SPNEGO), _ctx(0, _seq(_ctx(0, _seq(*(_oid(m) for m in mechs))),
                                                     _ctx(2, _der(0x04, token)))))


def spnego_resp(state: int | None, mech: str | None, token: bytes | None) -> bytes:
    parts = []
    if state is not None:
        parts.append(_ctx(0, _der(0x0A, bytes((state,)))))
    if mech is not None:
        parts.append(_ctx(1, _oid(mech)))
    if token is not None:
        parts.append(_ctx(2, _der(0x04, token)))
    return _der(0xA1, _seq(*parts))


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

    def first_leg(self) -> bytes:
        client = _principal(1, SAMPLE_USER)
        enc_ticket = _der(0x63, _seq(
            _ctx(0, _der(0x03, b"\x00\x40\xa1\x00\x00")), _ctx(1, _enc_key(self.session_key)),
            _ctx(2, _gstr(SAMPLE_REALM)), _ctx(3, client),
            _ctx(4, _seq(_ctx(0, _int(1)), _ctx(1, _der(0x04, b"")))),
            _ctx(5, _time("20231114221320Z")), _ctx(6, _time("20231114221320Z")),
            _ctx(7, _time("20231115081320Z"))))
        ticket = _der(0x61, _seq(
            _ctx(0, _int(5)), _ctx(1, _gstr(SAMPLE_REALM)), _ctx(2, _principal(2, *SAMPLE_SERVICE)),
            _ctx(3, _enc_data(self.etype, self.service_key.encrypt(2, enc_ticket, self._conf()), SAMPLE_KVNO))))
        gss_flags = crypto_kerberos.GSS_C_DCE_STYLE | 0x3E       # mutual, replay, sequence, conf, integ
        checksum = _U32.pack(16) + b"\x00" * 16 + _U32.pack(gss_flags)
        authenticator = _der(0x62, _seq(
            _ctx(0, _int(5)), _ctx(1, _gstr(SAMPLE_REALM)), _ctx(2, client),
            _ctx(3, _seq(_ctx(0, _int(0x8003)), _ctx(1, _der(0x04, checksum)))),
            _ctx(4, _int(123456)), _ctx(5, _time("20231114221320Z")),
            _ctx(6, _enc_key(self.initiator_subkey)), _ctx(7, _int(self.seq[0]))))
        ap_req = _der(0x6E, _seq(
            _ctx(0, _int(5)), _ctx(1, _int(14)), _ctx(2, _der(0x03, b"\x00\x20\x00\x00\x00")), _ctx(3, ticket),
            _ctx(4, _enc_data(self.etype, self.session_key.encrypt(11, authenticator, self._conf())))))
        # MS-KILE 3.4.5.1: in DCE style the AP-REQ (and the AP-REPs) go without GSS-API framing
        return spnego_init([OID_MS_KRB5, OID_KRB5, OID_NTLMSSP], ap_req) \
            if self.auth_type == RPC_C_AUTHN_GSS_NEGOTIATE else ap_req

    def _ap_rep(self, subkey, seq: int) -> bytes:
        part = _der(0x7B, _seq(_ctx(0, _time("20231114221320Z")), _ctx(1, _int(123456)),
                               *([_ctx(2, _enc_key(subkey))] if subkey is not None else []),
                               _ctx(3, _int(seq))))
        return _der(0x6F, _seq(_ctx(0, _int(5)), _ctx(1, _int(15)),
                               _ctx(2, _enc_data(self.etype, self.session_key.encrypt(12, part, self._conf())))))

    def second_leg(self) -> bytes:
        token = self._ap_rep(self.acceptor_subkey, self.seq[1])
        return spnego_resp(1, OID_MS_KRB5, token) if self.auth_type == RPC_C_AUTHN_GSS_NEGOTIATE else token

    def third_leg(self) -> list:
        token = self._ap_rep(None, self.seq[0])
        if self.auth_type == RPC_C_AUTHN_GSS_NEGOTIATE:
            token = spnego_resp(None, None, token)
        alter = synth.bind(self.bind_call, [(0, IWBEM_LEVEL1_LOGIN, (0, 0))], alter=True)
        done = spnego_resp(0, None, None) if self.auth_type == RPC_C_AUTHN_GSS_NEGOTIATE else b""
        ack = synth.bind_ack(self.bind_call, 1, alter=True)
        return [(0, self._with_auth(alter, token)), (1, self._with_auth(ack, done) if done else ack)]

    def wrap(self, direction, head, plain, trailer):
        acceptor = direction == 1
        seq = self.seq[direction]
        self.seq[direction] += 1
        sign = (head, trailer) if self.header_signing else (b"", b"")
        if self.etype == 23:
            return tuple(reversed(crypto_kerberos.rc4_wrap_dce(self.acceptor_subkey, plain, seq, acceptor,
                                                                self._conf(), *sign)))
        token, sealed = crypto_kerberos.cfx_wrap_dce(self.acceptor_subkey, plain, seq, acceptor, True,
                                                     self._conf(), *sign)
        return sealed, token


def process_create_ntlm_sealed(path: Path) -> None:
    """wmi-process-create sealed with NTLMv2 (ESS, key exchange), user WMILAB\\analyst."""
    process_create(path, NtlmSealer())


def process_create_kerberos_sealed(path: Path) -> None:
    """wmi-process-create sealed with Kerberos AES256 through SPNEGO, acceptor subkey, header signing."""
    process_create(path, KerberosSealer())


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
        "keytab wmi-process-create-kerberos.keytab\n")



# ---------------------------------------------------------------------------------------
# Sessions as Windows runs them (MS-WMI 4.1): DCOM activation of WbemLevel1Login on port
# 135, then the object exporter the activation named: IRemUnknown2 bound first, an
# alter_context for each further interface, large replies cut at max_xmit_frag.
# Stubs come from the interface table (wmi.encode_request / encode_response).

ISYSTEM_ACTIVATOR = "000001a0-0000-0000-c000-000000000046"
IREMUNKNOWN2 = "00000143-0000-0000-c000-000000000046"
IWBEM_LOGIN_CLIENT_ID = "d4781cd6-e5d3-44df-ad94-930efe48a887"
IWBEM_FETCH_SMART_ENUM = "1c1c45ee-4395-11d2-b60b-00104b703efd"
IWBEM_REFRESHING_SERVICES = "2c9273e0-1dc3-11d3-b364-00105a1f8177"
IACTIVATION_PROPERTIES_IN = "000001a2-0000-0000-c000-000000000046"
IACTIVATION_PROPERTIES_OUT = "000001a3-0000-0000-c000-000000000046"
ICONTEXT = "000001c0-0000-0000-c000-000000000046"
CLSID_WBEM_LEVEL1_LOGIN = "8bc3f05e-d86b-11d0-a075-00c04fb68820"
CLSID_ACT_PROPS_IN = "00000338-0000-0000-c000-000000000046"
CLSID_ACT_PROPS_OUT = "00000339-0000-0000-c000-000000000046"
CLSID_CONTEXT_MARSHALER = "0000033b-0000-0000-c000-000000000046"
PROP_SPECIAL = "000001b9-0000-0000-c000-000000000046"
PROP_INSTANTIATION = "000001ab-0000-0000-c000-000000000046"
PROP_ACTIVATION_CONTEXT = "000001a5-0000-0000-c000-000000000046"
PROP_SECURITY = "000001a6-0000-0000-c000-000000000046"
PROP_LOCATION = "000001a4-0000-0000-c000-000000000046"
PROP_SCM_REQUEST = "000001aa-0000-0000-c000-000000000046"
PROP_SCM_REPLY = "000001b6-0000-0000-c000-000000000046"
NCACN_IP_TCP = 0x07
# The security bindings a Windows Server 2008 R2 exporter lists (authentication services,
# MS-RPCE 2.2.1.1.7): SPNEGO, NTLM, Kerberos, Schannel, and the Negotiate extension 0x1e.
SECURITY_BINDINGS = tuple((svc, 0xFFFF, "") for svc in (0x09, 0x0A, 0x10, 0x0E, 0x1E))


def _ipid(counter: int, pid: int, tag: str) -> str:
    """An IPID the way Windows lays them out (MS-DCOM 2.2.18.2 leaves the form to the
    exporter): a per-process counter, the exporter's process id, then a fixed tail; ours is
    derived from `tag` so that every run writes the same one."""
    tail = hashlib.sha256(tag.encode()).hexdigest()[:16]
    return f"{counter:08x}-{pid:04x}-0000-{tail[:4]}-{tail[4:]}"


class Host:
    """A Windows host of a sample: its NetBIOS name and IPv4 address."""

    def __init__(self, name: str, ip: str):
        self.name, self.ip = name, ip

    def resolver(self, port: int | None = None) -> bytes:
        """The DUALSTRINGARRAY of this host's exporter: its name and address (with the
        exporter's port in an OXID resolution, without it in an OBJREF)."""
        at = f"[{port}]" if port else ""
        return build_dualstringarray([(NCACN_IP_TCP, self.name + at), (NCACN_IP_TCP, self.ip + at)],
                                     SECURITY_BINDINGS)


class Association:
    """One DCE/RPC connection as Windows drives it: bind for the first interface, an
    alter_context for each further one, call ids counting up, PDUs cut at max_frag."""

    def __init__(self, pcap, clock, client: tuple[str, int], server: tuple[str, int], first_iface: str, *,
                 max_frag: int = 5840):
        self.clock = clock
        self.tcp = synth.TcpSession(pcap, clock, client, server)
        self.tcp.open()
        self.call_id = 0
        self.contexts: dict[str, int] = {}
        self.max_frag = max_frag
        self.port = server[1]
        self._bind(first_iface, alter=False)

    def _exchange(self, requests, responses, think: float = 0.004) -> None:
        for pdu in requests:
            self.tcp.send(0, pdu)
        self.clock.tick(think)
        for pdu in responses:
            self.tcp.send(1, pdu)
        self.clock.tick(0.002)

    def _bind(self, iface: str, alter: bool) -> int:
        self.call_id += 1
        ctx = len(self.contexts)
        self._exchange([synth.bind(self.call_id, [(ctx, iface, (0, 0))], alter=alter, max_frag=self.max_frag)],
                       [synth.bind_ack(self.call_id, 1, alter=alter, max_frag=self.max_frag,
                                       sec_addr="" if alter else str(self.port))])
        self.contexts[iface] = ctx
        return ctx

    def call(self, iface: str, opnum: int, req: bytes, resp: bytes, *, ipid: str | None = None,
             think: float = 0.004) -> None:
        ctx = self.contexts.get(iface)
        if ctx is None:
            ctx = self._bind(iface, alter=True)
        self.call_id += 1
        self._exchange(synth.request(self.call_id, ctx, opnum, req, object_uuid=ipid, max_frag=self.max_frag),
                       synth.response(self.call_id, ctx, resp, max_frag=self.max_frag), think)

    def close(self) -> None:
        self.tcp.close()


def _activation_request(cid: str, server: Host) -> bytes:
    """IRemoteSCMActivator::RemoteCreateInstance for WbemLevel1Login (MS-DCOM 3.1.2.5.2.3.2),
    its ActivationPropertiesIn blob built property by property as Windows 7 sends it."""
    special = NdrWriter()
    for v in (0xFFFFFFFF, 0, 0, 0, 1):         # session, RemoteThisSessionId, impersonating, partition, authn level
        special.u32(v)
    special.guid("00000000-0000-0000-0000-000000000000")
    for v in (0, 0x14, 2):                       # dwPRTFlags, dwOrigClsctx, dwFlags
        special.u32(v)
    special.raw(bytes(40))                       # Reserved1..3
    inst = NdrWriter()
    inst.guid(CLSID_WBEM_LEVEL1_LOGIN), inst.u32(0x14), inst.u32(0), inst.i32(0), inst.u32(1), inst.u32(0)
    inst.referent(), inst.u32(88), inst.u16(5), inst.u16(7), inst.conformant_guids([IWBEM_LEVEL1_LOGIN])
    context = struct.pack("<HH16sIIIIIII", 1, 1, uuid.UUID("e91a6c22-ecd3-4bcd-b236-1a73b86360ad").bytes_le,
                          2, 0, 0, 0, 0, 0, 1)
    act_ctx = NdrWriter()
    act_ctx.u32(0), act_ctx.u32(0), act_ctx.u32(0), act_ctx.u32(0), act_ctx.referent(), act_ctx.referent(False)
    act_ctx.interface_pointer_data(build_objref(ICONTEXT, OBJREF_CUSTOM, clsid=CLSID_CONTEXT_MARSHALER,
                                                payload=context))
    security = NdrWriter()
    security.u32(0), security.referent(), security.referent(False)
    security.u32(0), security.referent(), security.referent(False), security.u32(0)
    security.wstring(server.name)
    location = NdrWriter()
    location.referent(False), location.u32(0), location.u32(0), location.u32(0)
    scm = NdrWriter()
    scm.referent(False), scm.referent(), scm.u32(2), scm.u16(1), scm.referent(), scm.count(1), scm.u16(NCACN_IP_TCP)
    blob = build_activation_properties([
        (PROP_SPECIAL, special.getvalue()), (PROP_INSTANTIATION, inst.getvalue()),
        (PROP_ACTIVATION_CONTEXT, act_ctx.getvalue()), (PROP_SECURITY, security.getvalue()),
        (PROP_LOCATION, location.getvalue()), (PROP_SCM_REQUEST, scm.getvalue())])
    w = NdrWriter()
    write_orpcthis(w, cid)
    w.referent(False)                            # pUnkOuter: no aggregation
    w.interface_pointer(build_objref(IACTIVATION_PROPERTIES_IN, OBJREF_CUSTOM, clsid=CLSID_ACT_PROPS_IN,
                                     payload=blob))
    return w.getvalue()


def _activation_response(server: Host, port: int, oxid: int, login: bytes, remunknown_ipid: str) -> bytes:
    """Its reply: PropsOutInfo with the IWbemLevel1Login OBJREF, ScmReplyInfoData with the
    exporter's OXID, IRemUnknown IPID and bindings; ORPCTHAT flags ORPCF_LOCAL as in 4.1.1."""
    props = NdrWriter()
    props.u32(1), props.referent(), props.referent(), props.referent()
    props.conformant_guids([IWBEM_LEVEL1_LOGIN]), props.conformant_u32s([0])
    props.count(1), props.referent(), props.interface_pointer_data(login)
    bindings = server.resolver(port)
    reply = NdrWriter()
    reply.referent(False), reply.referent()
    reply.u64(oxid), reply.referent(), reply.guid(remunknown_ipid), reply.u32(4), reply.u16(5), reply.u16(7)
    reply.count(len(bindings) // 2 - 2), reply.raw(bindings)
    blob = build_activation_properties([(CLSID_ACT_PROPS_OUT, props.getvalue()), (PROP_SCM_REPLY, reply.getvalue())],
                                       dest_ctx=2)
    w = NdrWriter()
    write_orpcthat(w, flags=1)
    w.interface_pointer(build_objref(IACTIVATION_PROPERTIES_OUT, OBJREF_CUSTOM, clsid=CLSID_ACT_PROPS_OUT,
                                     payload=blob))
    w.u32(0)
    return w.getvalue()


class DcomSession:
    """A WMI client's session with one server: activation, the object exporter connection,
    and the calls on it. IPIDs are drawn from the server's process id in call order unless
    a call names the one it hands out (the spec traces print some)."""

    def __init__(self, pcap, clock, client: Host, server: Host, cid: str, *, pid: int, exporter: int = 49158,
                 client_port: int = 49301, oxid: int = 0x3A7C5D1E0B9F2468, login_ipid: str | None = None):
        self.pcap, self.clock = pcap, clock
        self.client, self.server = client, server
        self.cid = cid
        self.pid = pid
        self.exporter = exporter
        self.client_port = client_port
        self.oxid = oxid
        self.counter = 0x9000
        self.remunknown = _ipid(0xC000, pid, cid + "remunknown")
        self.login = login_ipid or self.new_ipid("login")
        self.conn: Association | None = None

    def new_ipid(self, tag: str) -> str:
        self.counter += 0x1004
        return _ipid(self.counter, self.pid, self.cid + tag)

    def objref(self, iid: str, ipid: str) -> bytes:
        self.counter += 1
        return build_objref(iid, OBJREF_STANDARD, ipid=ipid, oxid=self.oxid,
                            oid=0x5F3E2D1C00000000 + self.counter, resolver=self.server.resolver())

    def activate(self) -> None:
        """Port 135 first: RemoteCreateInstance, then the connection is closed."""
        scm = Association(self.pcap, self.clock, (self.client.ip, self.client_port), (self.server.ip, 135),
                          ISYSTEM_ACTIVATOR)
        login = self.objref(IWBEM_LEVEL1_LOGIN, self.login)
        scm.call(ISYSTEM_ACTIVATOR, 4, _activation_request(self.cid, self.server),
                 _activation_response(self.server, self.exporter, self.oxid, login, self.remunknown), think=0.02)
        scm.close()
        self.clock.tick(0.003)
        self.conn = Association(self.pcap, self.clock, (self.client.ip, self.client_port + 1),
                                (self.server.ip, self.exporter), IREMUNKNOWN2)

    def rem_qi(self, ipid: str, iid: str, new_ipid: str | None = None) -> str:
        """IRemUnknown2::RemQueryInterface (MS-DCOM 3.1.1.5.6.1.1): one IID, cRefs 5 as the traces show."""
        new_ipid = new_ipid or self.new_ipid("qi" + iid)
        self.counter += 1
        req = wmi.encode_request("IRemUnknown2", "RemQueryInterface",
                                 {"ripid": ipid, "cRefs": 5, "iids": [iid]}, cid=self.cid)
        resp = wmi.encode_response("IRemUnknown2", "RemQueryInterface", {"ppQIResults": [
            {"hResult": 0, "std": {"flags": 0, "cPublicRefs": 5, "oxid": self.oxid,
                                   "oid": 0x5F3E2D1C00000000 + self.counter, "ipid": new_ipid}}]})
        self.conn.call(IREMUNKNOWN2, 3, req, resp, ipid=self.remunknown)
        return new_ipid

    def rem_release(self, ipids: list[str]) -> None:
        req = wmi.encode_request("IRemUnknown2", "RemRelease", {"InterfaceRefs": [
            {"ipid": i, "cPublicRefs": 5, "cPrivateRefs": 0} for i in ipids]}, cid=self.cid)
        self.conn.call(IREMUNKNOWN2, 5, req, wmi.encode_response("IRemUnknown2", "RemRelease", {}),
                       ipid=self.remunknown)

    def call(self, interface: str, method: str, ipid: str, request: dict, response: dict | None = None,
             hresult: int = 0, *, think: float = 0.004, conn: "Association | None" = None) -> None:
        """A WMI call; interface pointers given as OBJREF bytes or WMI objects."""
        info = interfaces.interface_by_name(interface)
        opnum = next(m["opnum"] for m in interfaces.methods_of(info["uuid"]).values() if m["name"] == method)
        req = wmi.encode_request(interface, method, request, cid=self.cid)
        resp = wmi.encode_response(interface, method, response or {}, hresult)
        (conn or self.conn).call(info["uuid"], opnum, req, resp, ipid=ipid, think=think)

    def login_sequence(self, machine: str, pid: int, resource: str, locale: str = "en-US,en",
                       services_ipid: str | None = None) -> str:
        """MS-WMI 4.1.1 after the activation: IWbemLoginClientID, SetClientInfo, EstablishPosition,
        NTLMLogin; returns the IWbemServices IPID."""
        client_id = self.rem_qi(self.login, IWBEM_LOGIN_CLIENT_ID)
        self.call("IWbemLoginClientID", "SetClientInfo", client_id,
                  {"wszClientMachine": machine, "lClientProcId": pid, "lReserved": 0})
        self.call("IWbemLevel1Login", "EstablishPosition", self.login,
                  {"reserved1": None, "reserved2": 0}, {"LocaleVersion": 1})
        services = services_ipid or self.new_ipid("services")
        self.call("IWbemLevel1Login", "NTLMLogin", self.login,
                  {"wszNetworkResource": resource, "wszPreferredLocale": locale, "lFlags": 0, "pCtx": None},
                  {"ppNamespace": self.objref(IWBEM_SERVICES, services)}, think=0.03)
        return services

    def smart_enum(self, enum_ipid: str) -> str:
        """RemQueryInterface for IWbemFetchSmartEnum on an enumerator, then GetSmartEnum (4.2.2.3)."""
        fetch = self.rem_qi(enum_ipid, IWBEM_FETCH_SMART_ENUM)
        smart = self.new_ipid("smartenum" + enum_ipid)
        self.call("IWbemFetchSmartEnum", "GetSmartEnum", fetch, {},
                  {"ppSmartEnum": self.objref(IWBEM_WCO_SMART_ENUM, smart)})
        return smart

    def close(self) -> None:
        self.conn.close()


IWBEM_WCO_SMART_ENUM = "423ec01e-2e35-11d2-b604-00104b703efd"
IENUM_WBEM_CLASS_OBJECT = "027947e1-d731-11ce-a357-000000000001"
IWBEM_CALL_RESULT = "44aca675-e8fc-11d0-a07c-00c04fb68820"
IWBEM_OBJECT_SINK = "7c857801-7381-11cf-884d-00aa004b2e24"
IWBEM_REMOTE_REFRESHER = "f1e9c5b2-f59b-11d2-b362-00105a1f8177"
WBEM_S_FALSE = 0x1
WBEM_S_NEW_STYLE = 0x400FF
WBEM_FLAG_RETURN_IMMEDIATELY = 0x10
WBEM_FLAG_FORWARD_ONLY = 0x20
WBEM_FLAG_SHALLOW = 0x1
WBEM_NO_WAIT = 0


def object_array(objects, class_ids) -> bytes:
    """An ObjectArray (MS-WMI 2.2.14) whose classIDs are the given ones (in order of first
    use) instead of random ones, so that the capture is the same on every run."""
    cache = ClassCache()
    data = build_object_array(objects, PacketType.NEXT, cache)
    fixed = iter(class_ids)
    for drawn in list(cache):
        data = data.replace(drawn.bytes_le, uuid.UUID(next(fixed)).bytes_le)
    return data


def _indicate_packet(objects, class_id: str) -> bytes:
    """The ObjectArray of an optimized IWbemObjectSink::Indicate (bPacketType 0)."""
    cache = ClassCache()
    data = build_object_array(objects, PacketType.INDICATE, cache)
    for drawn in list(cache):
        data = data.replace(drawn.bytes_le, uuid.UUID(class_id).bytes_le)
    return data


# --- objects of the spec traces -----------------------------------------------------------

SAI_CLIENT = Host("SAI-NAV009", "192.168.1.23")
SAI_SERVER = Host("SAI-NAV009-2", "192.168.1.24")
SAI_CIMV2 = (SAI_SERVER.name, "root\\cimv2")
SAI_MYTEST = (SAI_SERVER.name, "ROOT\\cimv2\\MyTest")


def testwmi_class(decoration=SAI_MYTEST) -> wmio.WmiClass:
    """The class of 4.2.3.2: `Class TestWMI { [key] uint32 x; uint32 y; };` in root\\cimv2\\MyTest."""
    return wmio.new_class("TestWMI", properties=[("x", "uint32", None, [("key", True)]), ("y", "uint32")],
                          decoration=decoration)


def testwmi(cls: wmio.WmiClass, x: int, y: int) -> wmio.WmiInstance:
    return wmio.new_instance(cls, {"x": x, "y": y}, decoration=cls.decoration)


def _string(name, *quals, cimtype="string"):
    return (name, cimtype, None, [("read", True), *quals])


# Win32_Process as Windows Server 2008 R2 defines it (CIM_Process, root\cimv2): its 45 properties
# with the qualifiers that are not amended (the localized ones stay on the server unless
# WBEM_FLAG_USE_AMENDED_QUALIFIERS is set).
_KEYISH = (("MaxLen", 256), ("CIM_Key", True))
_PROCESS_PROPERTIES = [
    _string("Caption", ("MaxLen", 64)), _string("CommandLine"), _string("CreationClassName", *_KEYISH),
    _string("CreationDate", ("Fixed", True), cimtype="datetime"), _string("CSCreationClassName", *_KEYISH),
    _string("CSName", *_KEYISH), _string("Description"),
    _string("ExecutablePath", ("Privileges", ["SeDebugPrivilege"]),
            ("MappingStrings", ["Win32API|Tool Help Structures|MODULEENTRY32|szExePath"])),
    _string("ExecutionState", ("ValueMap", [str(i) for i in range(8)]), cimtype="uint16"),
    ("Handle", "string", None, [("read", True), ("key", True), ("MaxLen", 256), ("Override", "Handle")]),
    _string("HandleCount", ("MappingStrings", ["Win32API|Process and Thread Functions|GetProcessHandleCount"]),
            cimtype="uint32"),
    _string("InstallDate", ("MappingStrings", ["MIF.DMTF|ComponentID|001.5"]), cimtype="datetime"),
    _string("KernelModeTime", ("Units", "100 nanoseconds"), ("Override", "KernelModeTime"), cimtype="uint64"),
    _string("MaximumWorkingSetSize", ("Privileges", ["SeDebugPrivilege"]), ("Units", "kilobytes"),
            ("MappingStrings", ["Win32|WINNT.H|QUOTA_LIMITS|MaximumWorkingSetSize"]), cimtype="uint32"),
    _string("MinimumWorkingSetSize", ("Privileges", ["SeDebugPrivilege"]), ("Units", "kilobytes"),
            ("MappingStrings", ["Win32|WINNT.H|QUOTA_LIMITS|MinimumWorkingSetSize"]), cimtype="uint32"),
    _string("Name", ("Override", "Name")), _string("OSCreationClassName", *_KEYISH), _string("OSName", *_KEYISH),
    _string("OtherOperationCount", ("MappingStrings", ["Win32API|Process and Thread Structures|IO_COUNTERS|"
                                                       "OtherOperationCount"]), cimtype="uint64"),
    _string("OtherTransferCount", ("Units", "bytes"), ("MappingStrings", ["Win32API|Process and Thread Structures|"
                                                                          "IO_COUNTERS|OtherTransferCount"]),
            cimtype="uint64"),
    _string("PageFaults", ("MappingStrings", ["Win32API|Process Status|PROCESS_MEMORY_COUNTERS|PageFaultCount"]),
            cimtype="uint32"),
    _string("PageFileUsage", ("Units", "kilobytes"),
            ("MappingStrings", ["Win32API|Process Status|PROCESS_MEMORY_COUNTERS|PagefileUsage"]),
            cimtype="uint32"),
    _string("ParentProcessId", ("MappingStrings", ["Win32API|Process and Thread Structures|"
                                                   "PROCESS_INFORMATION|dwProcessId"]), cimtype="uint32"),
    _string("PeakPageFileUsage", ("Units", "kilobytes"),
            ("MappingStrings", ["Win32API|Process Status|PROCESS_MEMORY_COUNTERS|PeakPagefileUsage"]),
            cimtype="uint32"),
    _string("PeakVirtualSize", ("Units", "bytes"), cimtype="uint64"),
    _string("PeakWorkingSetSize", ("Units", "kilobytes"),
            ("MappingStrings", ["Win32API|Process Status|PROCESS_MEMORY_COUNTERS|PeakWorkingSetSize"]),
            cimtype="uint32"),
    _string("Priority", ("Override", "Priority"),
            ("MappingStrings", ["Win32API|Scheduling Priorities"]), cimtype="uint32"),
    _string("PrivatePageCount", cimtype="uint64"),
    _string("ProcessId", ("MappingStrings", ["Win32API|Process and Thread Structures|PROCESS_INFORMATION|"
                                             "dwProcessId "]), cimtype="uint32"),
    _string("QuotaNonPagedPoolUsage", ("MappingStrings", ["Win32API|Process Status|PROCESS_MEMORY_COUNTERS|"
                                                          "QuotaNonPagedPoolUsage"]), cimtype="uint32"),
    _string("QuotaPagedPoolUsage", ("MappingStrings", ["Win32API|Process Status|PROCESS_MEMORY_COUNTERS|"
                                                       "QuotaPagedPoolUsage"]), cimtype="uint32"),
    _string("QuotaPeakNonPagedPoolUsage", ("MappingStrings", ["Win32API|Process Status|PROCESS_MEMORY_COUNTERS|"
                                                              "QuotaPeakNonPagedPoolUsage"]), cimtype="uint32"),
    _string("QuotaPeakPagedPoolUsage", ("MappingStrings", ["Win32API|Process Status|PROCESS_MEMORY_COUNTERS|"
                                                           "QuotaPeakPagedPoolUsage"]), cimtype="uint32"),
    _string("ReadOperationCount", ("MappingStrings", ["Win32API|Process and Thread Structures|IO_COUNTERS|"
                                                      "ReadOperationCount"]), cimtype="uint64"),
    _string("ReadTransferCount", ("Units", "bytes"), ("MappingStrings", ["Win32API|Process and Thread Structures|"
                                                                         "IO_COUNTERS|ReadTransferCount"]),
            cimtype="uint64"),
    _string("SessionId", cimtype="uint32"), _string("Status", ("MaxLen", 10)),
    _string("TerminationDate", cimtype="datetime"),
    _string("ThreadCount", ("MappingStrings", ["Win32API|Process Status|SYSTEM_PROCESS_INFORMATION|"
                                               "NumberOfThreads"]), cimtype="uint32"),
    _string("UserModeTime", ("Units", "100 nanoseconds"), ("Override", "UserModeTime"), cimtype="uint64"),
    _string("VirtualSize", ("Units", "bytes"), cimtype="uint64"), _string("WindowsVersion"),
    _string("WorkingSetSize", ("Units", "bytes"), ("Override", "WorkingSetSize"), cimtype="uint64"),
    _string("WriteOperationCount", ("MappingStrings", ["Win32API|Process and Thread Structures|IO_COUNTERS|"
                                                       "WriteOperationCount"]), cimtype="uint64"),
    _string("WriteTransferCount", ("Units", "bytes"), ("MappingStrings", ["Win32API|Process and Thread Structures|"
                                                                          "IO_COUNTERS|WriteTransferCount"]),
            cimtype="uint64"),
]
_PROCESS_QUALIFIERS = [("Locale", 1033), ("UUID", "{8502C4DC-5FBB-11D2-AAC1-006008C78BC7}"), ("dynamic", True),
                       ("provider", "CIMWin32"), ("SupportsCreate", True), ("CreateBy", "Create"),
                       ("SupportsDelete", True), ("DeleteBy", "DeleteInstance")]


# The DMTF mappings of the properties that CIM_Process and its parents define.
_DMTF_MAPPINGS = {name: f"MIF.DMTF|Process Information|001.{i}" for i, name in enumerate((
    "Caption", "CreationClassName", "CreationDate", "CSCreationClassName", "CSName", "Description",
    "ExecutionState", "KernelModeTime", "Name", "OSCreationClassName", "OSName", "PrivatePageCount",
    "TerminationDate", "UserModeTime"), 1)}


def full_win32_process_class(decoration=SAI_CIMV2, mapping_note: str = "") -> wmio.WmiClass:
    """Win32_Process with its whole property set; `mapping_note` is a last MappingStrings
    entry of Priority, there to bring the encoding to the size a trace reports."""
    props = []
    for name, t, d, quals in _PROCESS_PROPERTIES:
        if name in _DMTF_MAPPINGS:
            quals = [*quals, ("MappingStrings", [_DMTF_MAPPINGS[name]])]
        props.append((name, t, d, quals))
    if mapping_note:
        i = next(i for i, p in enumerate(props) if p[0] == "Priority")
        name, t, d, quals = props[i]
        quals = [q if q[0] != "MappingStrings" else (q[0], q[1] + [mapping_note]) for q in quals]
        props[i] = (name, t, d, quals)
    return wmio.new_class("Win32_Process", "CIM_Process", properties=props, qualifiers=_PROCESS_QUALIFIERS,
                          decoration=decoration)


def calc_process(handle: int, parent: int, created: str, size: int) -> wmio.WmiInstance:
    """The calc.exe of 4.2.3.1 / 4.3.3.1 as one WBEMOBJECT_INSTANCE whose ObjectArray is `size`
    bytes: the BuffSize the trace prints for it (the class is sized with full_win32_process_class)."""
    values = {
        "Caption": "calc.exe", "CommandLine": '"C:\\Windows\\system32\\calc.exe" ',
        "CreationClassName": "Win32_Process", "CreationDate": created,
        "CSCreationClassName": "Win32_ComputerSystem", "CSName": SAI_SERVER.name, "Description": "calc.exe",
        "ExecutablePath": "C:\\Windows\\system32\\calc.exe", "Handle": str(handle), "HandleCount": 71,
        "KernelModeTime": 1250000, "MaximumWorkingSetSize": 1380, "MinimumWorkingSetSize": 200, "Name": "calc.exe",
        "OSCreationClassName": "Win32_OperatingSystem",
        "OSName": "Microsoft Windows Server 2008 R2 Enterprise |C:\\Windows|\\Device\\Harddisk0\\Partition2",
        "OtherOperationCount": 289, "OtherTransferCount": 3626, "PageFaults": 2118, "PageFileUsage": 3864,
        "ParentProcessId": parent, "PeakPageFileUsage": 3864, "PeakVirtualSize": 79089664,
        "PeakWorkingSetSize": 8420, "Priority": 8, "PrivatePageCount": 3956736, "ProcessId": handle,
        "QuotaNonPagedPoolUsage": 6, "QuotaPagedPoolUsage": 121, "QuotaPeakNonPagedPoolUsage": 6,
        "QuotaPeakPagedPoolUsage": 121, "ReadOperationCount": 1, "ReadTransferCount": 60, "SessionId": 1,
        "ThreadCount": 3, "UserModeTime": 468750, "VirtualSize": 79089664, "WindowsVersion": "6.1.7600",
        "WorkingSetSize": 8622080, "WriteOperationCount": 0, "WriteTransferCount": 0}
    cls = full_win32_process_class()
    base = len(object_array([wmio.new_instance(cls, values, decoration=SAI_CIMV2)], [PROCESS_CLASS_ID]))
    # one more MappingStrings element costs its HeapRef, the string's flag octet and its NUL
    need = size - base - 6
    if need < 0:
        raise ValueError(f"Win32_Process already takes {base} bytes, more than {size}")
    cls = full_win32_process_class(mapping_note=(_PRIORITY_MAPPING * (need // len(_PRIORITY_MAPPING) + 1))[:need])
    return wmio.new_instance(cls, values, decoration=SAI_CIMV2)


_PRIORITY_MAPPING = ("Win32API|Process and Thread Functions|GetPriorityClass|SetPriorityClass|"
                     "Win32API|Process and Thread Functions|SetThreadPriority|GetThreadPriority|")


PROCESS_CLASS_ID = "3b8a3c8e-5d0a-4c6b-9f0e-2a1d7c4e6b10"
TESTWMI_CLASS_ID = "a5f1e2d3-6b7c-4d8e-9f10-1a2b3c4d5e6f"


def terminate_params(decoration=SAI_CIMV2) -> tuple[wmio.WmiInstance, wmio.WmiInstance]:
    """Win32_Process::Terminate's in- and out-parameters as WMI marshals them (MS-WMI 2.3.3):
    abstract __PARAMETERS classes, lower-case in / out qualifiers; the in-parameters made
    by the client (Reason left NULL, as wbemtest does), the out-parameters decorated by the server."""
    ins = wmio.new_class("__PARAMETERS", properties=[("Reason", "uint32", None, [("in", True), ("ID", 0)])],
                         qualifiers=[("abstract", True)])
    outs = wmio.new_class("__PARAMETERS", properties=[("ReturnValue", "uint32", None, [("out", True)])],
                          qualifiers=[("abstract", True)])
    return wmio.new_instance(ins), wmio.new_instance(outs, {"ReturnValue": 0}, decoration=decoration)


def _in_out_params(method: wmio.Method, ins: dict, outs: dict):
    return wmio.new_instance(method.in_params, ins), wmio.new_instance(method.out_params, outs)


# 2009-04-20, the days of the traces' Windows 7 / Server 2008 R2 builds
SPEC_EPOCH = 1_240_238_100.0


def _spec_session(pcap, clock, cid: str, *, pid: int = 0x06C4, login_ipid: str | None = None,
                  namespace: str = "root\\cimv2") -> tuple[DcomSession, str]:
    s = DcomSession(pcap, clock, SAI_CLIENT, SAI_SERVER, cid, pid=pid, login_ipid=login_ipid)
    s.activate()
    services = s.login_sequence(SAI_CLIENT.name, 6420, f"\\\\{SAI_SERVER.name.lower()}\\{namespace}")
    return s, services


def _enumerate(s: DcomSession, services: str, method: str, request: dict, enum_ipid: str, proxy: str,
               timeout: int, objects: list, class_id: str) -> None:
    """A synchronous or semisynchronous enumeration the optimized way (4.2.2.3): the call,
    IWbemFetchSmartEnum by RemQueryInterface, GetSmartEnum, one IWbemWCOSmartEnum::Next."""
    s.call("IWbemServices", method, services, {**request, "pCtx": None},
           {"ppEnum": s.objref(IENUM_WBEM_CLASS_OBJECT, enum_ipid)})
    smart = s.smart_enum(enum_ipid)
    buf = object_array(objects, [class_id]) if objects else None
    s.call("IWbemWCOSmartEnum", "Next", smart, {"proxyGUID": proxy, "lTimeout": timeout, "uCount": 10},
           {"puReturned": len(objects), "pdwBuffSize": len(buf or b""), "pBuffer": buf}, WBEM_S_FALSE)


CALC_QUERY = "select * from win32_process where Name='calc.exe'"


def spec_initialization(path: Path) -> None:
    """MS-WMI 4.1.1: wbemtest on SAI-NAV009 connects to root\\cimv2 on SAI-NAV009-2."""
    clock = synth.Clock(now=SPEC_EPOCH)
    with synth.PcapWriter(path) as pcap:
        s, _ = _spec_session(pcap, clock, "8e2416fe-0a3f-42be-a9b0-f30624c94619",
                             login_ipid="0001a407-06c4-0000-a6e3-c870b6019c76")
        s.close()


def spec_sync_query_method(path: Path) -> None:
    """MS-WMI 4.2.3.1: ExecQuery for calc.exe, the smart enumerator's Next (an ObjectArray of
    9101 bytes, in two fragments), ExecMethod Terminate, and the same query again, empty."""
    clock = synth.Clock(now=SPEC_EPOCH + 3600)
    with synth.PcapWriter(path) as pcap:
        s, services = _spec_session(pcap, clock, "8e2416fe-0a3f-42be-a9b0-f30624c94619")
        query = {"strQueryLanguage": "WQL", "strQuery": CALC_QUERY, "lFlags": WBEM_FLAG_FORWARD_ONLY}
        calc = calc_process(724, 2548, "20090420151205.312500-420", 9101)
        _enumerate(s, services, "ExecQuery", query, "0002e41c-06c4-0000-1f17-07bcf2eeb3f8",
                   "7f666eb6-fa61-48e8-8464-224c8e909d22", WBEM_NO_WAIT, [calc], PROCESS_CLASS_ID)
        ins, outs = terminate_params()
        s.call("IWbemServices", "ExecMethod", services,
               {"strObjectPath": f"\\\\{SAI_SERVER.name}\\root\\cimv2:Win32_Process.Handle=\"724\"",
                "strMethodName": "Terminate", "lFlags": 0, "pCtx": None, "pInParams": ins,
                "ppOutParams": None, "ppCallResult": None},
               {"ppOutParams": outs, "ppCallResult": None}, think=0.2)
        _enumerate(s, services, "ExecQuery", query, "0001f82e-06c4-0000-829f-784637ef2774",
                   "09efdda0-3e1e-40e2-b87a-f73895beaaca", WBEM_NO_WAIT, [], PROCESS_CLASS_ID)
        s.close()


MYTEST_PATH = f"\\\\{SAI_SERVER.name}\\ROOT\\cimv2\\MyTest:TestWMI.x=10"


def spec_sync_put_delete_enum(path: Path) -> None:
    """MS-WMI 4.2.3.2: PutInstance TestWMI (x=10, y=15), CreateInstanceEnum (two instances,
    410 bytes), PutInstance (x=10, y=20), DeleteInstance x=10, CreateInstanceEnum (307 bytes)."""
    clock = synth.Clock(now=SPEC_EPOCH + 7200)
    with synth.PcapWriter(path) as pcap:
        s, services = _spec_session(pcap, clock, "bd28b839-5d20-4435-9852-1fe794070a9c",
                                    namespace="root\\cimv2\\MyTest")
        cls = testwmi_class()
        put = {"lFlags": 0, "pCtx": None, "ppCallResult": None}
        s.call("IWbemServices", "PutInstance", services, {"pInst": testwmi(cls, 10, 15), **put},
               {"ppCallResult": None})
        enum = {"strSuperClass": "TestWMI", "lFlags": WBEM_FLAG_FORWARD_ONLY | WBEM_FLAG_SHALLOW}
        _enumerate(s, services, "CreateInstanceEnum", enum, "00026021-06c4-0000-9260-c0bcd4c240b3",
                   "dcfe7b7e-853f-494d-9ead-fb96164158c1", WBEM_NO_WAIT,
                   [testwmi(cls, 3, 5), testwmi(cls, 10, 15)], TESTWMI_CLASS_ID)
        s.call("IWbemServices", "PutInstance", services, {"pInst": testwmi(cls, 10, 20), **put},
               {"ppCallResult": None})
        s.call("IWbemServices", "DeleteInstance", services, {"strObjectPath": MYTEST_PATH, **put},
               {"ppCallResult": None})
        _enumerate(s, services, "CreateInstanceEnum", enum, "00004007-06c4-0000-99c1-96ec7361199b",
                   "45ce1c5b-9841-4d4e-964d-bd5e03695b47", WBEM_NO_WAIT, [testwmi(cls, 3, 5)], TESTWMI_CLASS_ID)
        s.close()


def _call_result(s: DcomSession, ipid: str, timeout: int = 5000) -> None:
    s.call("IWbemCallResult", "GetCallStatus", ipid, {"lTimeout": timeout}, {"plStatus": 0})


def spec_semisync_query_method(path: Path) -> None:
    """MS-WMI 4.3.3.1: the queries of 4.2.3.1 with WBEM_FLAG_RETURN_IMMEDIATELY, ExecMethod
    Terminate returning an IWbemCallResult, GetCallStatus and GetResultObject on it."""
    clock = synth.Clock(now=SPEC_EPOCH + 10800)
    with synth.PcapWriter(path) as pcap:
        s, services = _spec_session(pcap, clock, "ef414e15-6acf-408a-bb6e-ecb20da968d8")
        query = {"strQueryLanguage": "WQL", "strQuery": CALC_QUERY,
                 "lFlags": WBEM_FLAG_RETURN_IMMEDIATELY | WBEM_FLAG_FORWARD_ONLY}
        calc = calc_process(2680, 2548, "20090420172233.171875-420", 9104)
        _enumerate(s, services, "ExecQuery", query, "0001b004-06c4-0000-712f-83b56a62fa75",
                   "90b8134c-f980-415c-92e3-511819bc3bc5", 5000, [calc], PROCESS_CLASS_ID)
        ins, outs = terminate_params()
        result = s.new_ipid("callresult")
        s.call("IWbemServices", "ExecMethod", services,
               {"strObjectPath": f"\\\\{SAI_SERVER.name}\\root\\cimv2:Win32_Process.Handle=\"2680\"",
                "strMethodName": "Terminate", "lFlags": WBEM_FLAG_RETURN_IMMEDIATELY, "pCtx": None,
                "pInParams": ins, "ppOutParams": None, "ppCallResult": wmi.REF_TO_NULL},
               {"ppOutParams": None, "ppCallResult": s.objref(IWBEM_CALL_RESULT, result)})
        _call_result(s, result)
        s.call("IWbemCallResult", "GetResultObject", result, {"lTimeout": 5000}, {"ppResultObject": outs})
        _enumerate(s, services, "ExecQuery", query, "0001942e-06c4-0000-e48b-1633b50e272e",
                   "4382c990-ec38-4c41-8a88-a1b14e7de10b", 5000, [], PROCESS_CLASS_ID)
        s.close()


def spec_semisync_put_delete_enum(path: Path) -> None:
    """MS-WMI 4.3.3.2: PutInstance and DeleteInstance with WBEM_FLAG_RETURN_IMMEDIATELY (each an
    IWbemCallResult and its GetCallStatus; a RemRelease), CreateInstanceEnum of tESTWMI / TESTWMI."""
    clock = synth.Clock(now=SPEC_EPOCH + 14400)
    with synth.PcapWriter(path) as pcap:
        s, services = _spec_session(pcap, clock, "84ee6c91-3df6-4b65-95f1-71e440fe05b7", pid=0x06EC,
                                    namespace="root\\cimv2\\MyTest")
        cls = testwmi_class()
        semi = {"lFlags": WBEM_FLAG_RETURN_IMMEDIATELY, "pCtx": None, "ppCallResult": wmi.REF_TO_NULL}
        result = s.new_ipid("putresult")
        s.call("IWbemServices", "PutInstance", services, {"pInst": testwmi(cls, 10, 15), **semi},
               {"ppCallResult": s.objref(IWBEM_CALL_RESULT, result)})
        _call_result(s, result)
        s.rem_release([result])
        flags = WBEM_FLAG_RETURN_IMMEDIATELY | WBEM_FLAG_FORWARD_ONLY | WBEM_FLAG_SHALLOW
        _enumerate(s, services, "CreateInstanceEnum", {"strSuperClass": "tESTWMI", "lFlags": flags},
                   "0003c027-06ec-0000-6584-686a50ea42dd", "0889a6fe-0430-433f-af18-708650793226", 5000,
                   [testwmi(cls, 3, 5), testwmi(cls, 10, 15)], TESTWMI_CLASS_ID)
        result = s.new_ipid("deleteresult")
        s.call("IWbemServices", "DeleteInstance", services, {"strObjectPath": MYTEST_PATH, **semi},
               {"ppCallResult": s.objref(IWBEM_CALL_RESULT, result)})
        _call_result(s, result)
        _enumerate(s, services, "CreateInstanceEnum", {"strSuperClass": "TESTWMI", "lFlags": flags},
                   "0001a01d-06ec-0000-2b72-904611092fbe", "89ac6869-f7cb-4e5a-973c-0c8e84961240", 5000,
                   [testwmi(cls, 3, 5)], TESTWMI_CLASS_ID)
        s.close()


# --- beyond the traces: asynchronous, semisynchronous, refresher, persistence ---------------

IOBJECT_EXPORTER = "99fcfec4-5260-101b-bbcb-00aa0021347a"


def _resolve_oxid2(pcap, clock, caller: Host, callee: Host, oxid: int, port: int, remunknown: str,
                   caller_port: int) -> None:
    """IObjectExporter::ResolveOxid2 on the callee's port 135 (MS-DCOM 3.1.2.5.1.1): where the
    exporter of an OXID met in an OBJREF listens."""
    req = NdrWriter()
    req.u64(oxid), req.u16(1), req.count(1), req.u16(NCACN_IP_TCP)
    bindings = callee.resolver(port)
    resp = NdrWriter()
    resp.referent(), resp.count(len(bindings) // 2 - 2), resp.raw(bindings)
    resp.guid(remunknown), resp.u32(4), resp.u16(5), resp.u16(7), resp.u32(0)
    a = Association(pcap, clock, (caller.ip, caller_port), (callee.ip, 135), IOBJECT_EXPORTER)
    a.call(IOBJECT_EXPORTER, 4, req.getvalue(), resp.getvalue())
    a.close()


def _process(cls: wmio.WmiClass, deco, pid: int, name: str, command: str | None, parent: int) -> wmio.WmiInstance:
    return wmio.new_instance(cls, {"Handle": str(pid), "ProcessId": pid, "Name": name, "Caption": name,
                                   "CommandLine": command, "ParentProcessId": parent}, decoration=deco)


WKS = Host("WKS-ANALYST07", "10.40.8.21")
DC = Host("SRV-DC02", "10.40.8.5")


def async_query_callbacks(path: Path) -> None:
    """ExecQueryAsync with an IWbemObjectSink (MS-WMI 4.4, 4.5): the server resolves the
    client's OXID on its port 135, connects back to the client's object exporter, calls
    Indicate with one object (the client answers WBEM_S_NEW_STYLE), then an optimized Indicate
    carrying the rest as an ObjectArray, then SetStatus."""
    clock = synth.Clock(now=1_700_100_000.0)
    with synth.PcapWriter(path) as pcap:
        s = DcomSession(pcap, clock, WKS, DC, "6b1f3c2a-94d0-4e57-8a1c-2d5e7f901b34", pid=0x0B2C, client_port=50211)
        s.activate()
        services = s.login_sequence(WKS.name, 5012, f"\\\\{DC.name}\\root\\cimv2")
        client_oxid, client_exporter = 0x1D2C3B4A59687706, 50301
        sink_ipid = _ipid(0x3004, 0x1394, "async sink")
        sink = build_objref(IWBEM_OBJECT_SINK, OBJREF_STANDARD, ipid=sink_ipid, oxid=client_oxid,
                            oid=0x2B3C4D5E00000011, resolver=WKS.resolver())
        s.call("IWbemServices", "ExecQueryAsync", services,
               {"strQueryLanguage": "WQL", "strQuery": "SELECT * FROM Win32_Process WHERE Name LIKE 'power%'",
                "lFlags": 0, "pCtx": None, "pResponseHandler": sink})
        _resolve_oxid2(pcap, clock, DC, WKS, client_oxid, client_exporter,
                       _ipid(0xC000, 0x1394, "client remunknown"), 49722)
        back = Association(pcap, clock, (DC.ip, 49723), (WKS.ip, client_exporter), IWBEM_OBJECT_SINK)
        cls = win32_process_class()
        deco = (DC.name, "root\\cimv2")
        procs = [_process(cls, deco, 3920 + 8 * i, "powershell.exe", cmd, 2760)
                 for i, cmd in enumerate(("powershell.exe -NoProfile", "powershell.exe -ExecutionPolicy Bypass",
                                          "powershell.exe -EncodedCommand ZwBlAHQALQBkAGEAdABlAA==", None))]
        server_cid = "c7d1a9e4-3b52-4f08-9e6a-51b2c3d4e5f6"
        sink_call = lambda method, values, hresult=0, req=None: back.call(          # noqa: E731
            IWBEM_OBJECT_SINK, {"Indicate": 3, "SetStatus": 4}[method],
            req or wmi.encode_request("IWbemObjectSink", method, values, cid=server_cid),
            wmi.encode_response("IWbemObjectSink", method, {}, hresult), ipid=sink_ipid)
        sink_call("Indicate", {"lObjectCount": 1, "apObjArray": procs[:1]}, WBEM_S_NEW_STYLE)
        # MS-WMI shows no NDR framing for the optimized Indicate: ours sends lObjectCount and the
        # ObjectArray as a conformant byte array in place of the array of interface pointers.
        packet = _indicate_packet(procs[1:], PROCESS_CLASS_ID)
        w = NdrWriter()
        write_orpcthis(w, server_cid)
        w.i32(len(procs) - 1), w.conformant_bytes(packet)
        sink_call("Indicate", {}, 0, w.getvalue())
        sink_call("SetStatus", {"lFlags": 0, "hResult": 0, "strParam": None, "pObjParam": None})
        back.close()
        s.close()


ADMIN = Host("ADMIN-PC", "172.20.4.31")
FILES = Host("FILESRV01", "172.20.4.10")


def semisync_execmethod(path: Path) -> None:
    """A semisynchronous ExecMethod (MS-WMI 4.3.1): Win32_Process.Create with
    WBEM_FLAG_RETURN_IMMEDIATELY returns an IWbemCallResult; GetCallStatus and
    GetResultObject (WBEM_INFINITE) on it, then RemRelease."""
    clock = synth.Clock(now=1_700_200_000.0)
    with synth.PcapWriter(path) as pcap:
        s = DcomSession(pcap, clock, ADMIN, FILES, "0f9e8d7c-6b5a-4938-8271-605f4e3d2c1b", pid=0x0A48,
                        client_port=51030, exporter=49668)
        s.activate()
        services = s.login_sequence(ADMIN.name, 7788, f"\\\\{FILES.name}\\root\\cimv2", "en-GB,en")
        create = win32_process_class().get_method("Create")
        ins, outs = _in_out_params(create, {"CommandLine": "notepad.exe C:\\Users\\Public\\readme.txt",
                                            "CurrentDirectory": "C:\\Users\\Public"},
                                   {"ProcessId": 6120, "ReturnValue": 0})
        result = s.new_ipid("create result")
        s.call("IWbemServices", "ExecMethod", services,
               {"strObjectPath": "Win32_Process", "strMethodName": "Create", "lFlags": WBEM_FLAG_RETURN_IMMEDIATELY,
                "pCtx": None, "pInParams": ins, "ppOutParams": None, "ppCallResult": wmi.REF_TO_NULL},
               {"ppOutParams": None, "ppCallResult": s.objref(IWBEM_CALL_RESULT, result)})
        _call_result(s, result, -1)
        s.call("IWbemCallResult", "GetResultObject", result, {"lTimeout": -1}, {"ppResultObject": outs}, think=0.05)
        s.rem_release([result])
        s.close()


def _perf_class(name: str, counters, deco) -> wmio.WmiClass:
    props = [("Name", "string", None, [("key", True)])] + [(c, t) for c, t in counters]
    return wmio.new_class(name, "Win32_PerfRawData", properties=props,
                          qualifiers=[("dynamic", True), ("provider", "Nt5_GenericPerfProvider_V1"),
                                      ("hiperf", True)], decoration=deco)


def refresher_session(path: Path) -> None:
    """A refresher (MS-WMI 4.6, 4.7): IWbemRefreshingServices by RemQueryInterface on
    IWbemServices, AddObjectToRefresher and AddEnumToRefresher (each returning an
    IWbemRemoteRefresher and a template), two RemoteRefresh calls with WBEM_INSTANCE_BLOBs,
    StopRefreshing."""
    clock = synth.Clock(now=1_700_300_000.0)
    with synth.PcapWriter(path) as pcap:
        s = DcomSession(pcap, clock, ADMIN, FILES, "3e4f5a6b-7c8d-4e9f-a0b1-c2d3e4f5a6b7", pid=0x0A48,
                        client_port=51110, exporter=49668)
        s.activate()
        services = s.login_sequence(ADMIN.name, 4412, f"\\\\{FILES.name}\\root\\cimv2", "en-GB,en")
        refreshing = s.rem_qi(services, IWBEM_REFRESHING_SERVICES)
        deco = (FILES.name, "root\\cimv2")
        cpu_cls = _perf_class("Win32_PerfRawData_PerfOS_Processor",
                              [("PercentProcessorTime", "uint64"), ("PercentUserTime", "uint64"),
                               ("InterruptsPersec", "uint32"), ("Timestamp_Sys100NS", "uint64")], deco)
        proc_cls = _perf_class("Win32_PerfRawData_PerfProc_Process",
                               [("IDProcess", "uint32"), ("WorkingSet", "uint64"), ("PercentProcessorTime", "uint64"),
                                ("HandleCount", "uint32")], deco)
        total = lambda t, u, n, ts: wmio.new_instance(                               # noqa: E731
            cpu_cls, {"Name": "_Total", "PercentProcessorTime": t, "PercentUserTime": u, "InterruptsPersec": n,
                      "Timestamp_Sys100NS": ts}, decoration=deco)
        proc = lambda name, pid, ws, t, h: wmio.new_instance(                        # noqa: E731
            proc_cls, {"Name": name, "IDProcess": pid, "WorkingSet": ws, "PercentProcessorTime": t,
                       "HandleCount": h}, decoration=deco)
        refresher_id = {"m_szMachineName": ADMIN.name, "m_dwProcessId": 4412,
                        "m_guidRefresherId": "5d6e7f80-91a2-4b3c-8d4e-5f6071829304"}
        remote = s.new_ipid("remote refresher")
        info = lambda template, cancel: {                                            # noqa: E731
            "m_lType": 3, "m_Info": {"m_Remote": {"m_pRefresher": s.objref(IWBEM_REMOTE_REFRESHER, remote),
                                                  "m_pTemplate": template,
                                                  "m_Guid": "6e7f8091-a2b3-4c4d-9e5f-60718293a4b5"}},
            "m_lCancelId": cancel}
        s.call("IWbemRefreshingServices", "AddObjectToRefresher", refreshing,
               {"pRefresherId": refresher_id, "wszPath": 'Win32_PerfRawData_PerfOS_Processor.Name="_Total"',
                "lFlags": 0, "pContext": None, "dwClientRefrVersion": 2},
               {"pInfo": info(total(0, 0, 0, 0), 1), "pdwSvrRefrVersion": 2})
        s.call("IWbemRefreshingServices", "AddEnumToRefresher", refreshing,
               {"pRefresherId": refresher_id, "wszClass": "Win32_PerfRawData_PerfProc_Process",
                "lFlags": 0, "pContext": None, "dwClientRefrVersion": 2},
               {"pInfo": info(proc("", 0, 0, 0, 0), 2), "pdwSvrRefrVersion": 2})
        for tick, (busy, user, irq) in enumerate(((812345600, 301234500, 1834), (833456700, 309876500, 1911))):
            s.call("IWbemRemoteRefresher", "RemoteRefresh", remote, {"lFlags": 0}, {
                "plNumObjects": 2, "paObjects": [
                    RefreshedObject.of(1, total(busy, user, irq, 133448000000000000 + tick * 10_000_000)),
                    RefreshedObject.of(2, [proc("svchost", 812, 24_117_248 + tick * 4096, 1_562_500 * tick, 611),
                                           proc("lsass", 644, 18_206_720, 312_500 * tick, 1342)])]}, think=0.01)
            clock.tick(1.0)
        s.call("IWbemRemoteRefresher", "StopRefreshing", remote, {"lNumIds": 2, "aplIds": [1, 2], "lFlags": 0})
        s.close()


HELPDESK = Host("HELPDESK-07", "10.8.0.77")
DC01 = Host("DC01", "10.8.0.2")


def persistence_session(path: Path) -> None:
    """WMI persistence as an intruder sets it up, in root\\subscription: an __EventFilter, a
    CommandLineEventConsumer and their __FilterToConsumerBinding, each class fetched with
    GetObject and the instance written with PutInstance."""
    clock = synth.Clock(now=1_700_400_000.0)
    with synth.PcapWriter(path) as pcap:
        s = DcomSession(pcap, clock, HELPDESK, DC01, "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d", pid=0x03F4,
                        client_port=52020, exporter=49670)
        s.activate()
        services = s.login_sequence(HELPDESK.name, 2960, f"\\\\{DC01.name}\\root\\subscription")
        deco = (DC01.name, "ROOT\\subscription")
        sid = ("CreatorSID", "uint8[]", None, [("read", True)])
        key = [("key", True)]
        filter_cls = wmio.new_class("__EventFilter", "__IndicationRelated", decoration=deco, properties=[
            sid, ("EventAccess", "string"), ("EventNamespace", "string"), ("Name", "string", None, key),
            ("Query", "string"), ("QueryLanguage", "string")])
        consumer_cls = wmio.new_class("CommandLineEventConsumer", "__EventConsumer", decoration=deco, properties=[
            ("CommandLineTemplate", "string"), ("CreateNewConsole", "boolean"), sid,
            ("ExecutablePath", "string"), ("KillTimeout", "uint32"), ("MachineName", "string"),
            ("Name", "string", None, key), ("RunInteractively", "boolean"), ("ShowWindowCommand", "uint32"),
            ("WorkingDirectory", "string")], qualifiers=[("provider", "CommandLineEventConsumer")])
        binding_cls = wmio.new_class("__FilterToConsumerBinding", "__IndicationRelated", decoration=deco, properties=[
            ("Consumer", "ref:__EventConsumer", None, key), sid, ("DeliverSynchronously", "boolean"),
            ("Filter", "ref:__EventFilter", None, key), ("MaintainSecurityContext", "boolean")])
        creator = [1, 5, 0, 0, 0, 0, 0, 5, 21, 0, 0, 0, 0x5A, 0x3C, 0x1F, 0x2E, 0x8B, 0x44, 0x19, 0x6D,
                   0xE2, 0x31, 0x70, 0x0B, 0xF4, 0x01, 0x00, 0x00]
        instances = [
            wmio.new_instance(filter_cls, {
                "Name": "SysUpdateFilter", "EventNamespace": "root\\cimv2", "QueryLanguage": "WQL",
                "Query": "SELECT * FROM __InstanceModificationEvent WITHIN 60 WHERE TargetInstance ISA "
                         "'Win32_PerfFormattedData_PerfOS_System' AND TargetInstance.SystemUpTime >= 240",
                "CreatorSID": creator}, decoration=deco),
            wmio.new_instance(consumer_cls, {
                "Name": "SysUpdateConsumer", "RunInteractively": False,
                "CommandLineTemplate": "cmd.exe /c echo wmi-persistence-test > C:\\Windows\\Temp\\sysupdate.log",
                "CreatorSID": creator}, decoration=deco),
            wmio.new_instance(binding_cls, {
                "Filter": '__EventFilter.Name="SysUpdateFilter"',
                "Consumer": 'CommandLineEventConsumer.Name="SysUpdateConsumer"',
                "DeliverSynchronously": False, "CreatorSID": creator}, decoration=deco),
        ]
        for cls, inst in zip((filter_cls, consumer_cls, binding_cls), instances):
            s.call("IWbemServices", "GetObject", services,
                   {"strObjectPath": cls.name, "lFlags": 0, "pCtx": None, "ppObject": wmi.REF_TO_NULL,
                    "ppCallResult": None}, {"ppObject": cls, "ppCallResult": None})
            s.call("IWbemServices", "PutInstance", services,
                   {"pInst": inst, "lFlags": 0, "pCtx": None, "ppCallResult": None}, {"ppCallResult": None})
        s.close()


SAMPLES = {
    "wmi-process-create.pcap": process_create,
    "spec-4.1.1-initialization.pcap": spec_initialization,
    "spec-4.2.3.1-sync-execquery-execmethod.pcap": spec_sync_query_method,
    "spec-4.2.3.2-sync-put-delete-enum.pcap": spec_sync_put_delete_enum,
    "spec-4.3.3.1-semisync-execquery-execmethod.pcap": spec_semisync_query_method,
    "spec-4.3.3.2-semisync-put-delete-enum.pcap": spec_semisync_put_delete_enum,
    "wmi-async-query-callbacks.pcap": async_query_callbacks,
    "wmi-semisync-execmethod.pcap": semisync_execmethod,
    "wmi-refresher.pcap": refresher_session,
    "wmi-persistence-subscription.pcap": persistence_session,
    "wmi-process-create-ntlm-sealed.pcap": process_create_ntlm_sealed,
    "wmi-process-create-kerberos-sealed.pcap": process_create_kerberos_sealed,
}

# Written only on request (--secrets DIR), never into pcaps/: keys for the sealed samples.
SECRETS = {
    "wmi-process-create-kerberos.keytab": sample_keytab,
    "wmi-sealed-samples.credentials": sample_credentials,
}


def write_secrets(directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    for name, make in SECRETS.items():
        make(directory / name)
    return {name: directory / name for name in SECRETS}


def main(argv: list[str]) -> int:
    if len(argv) > 2 and argv[1] == "--secrets":
        for path in write_secrets(Path(argv[2])).values():
            print(path)
        return 0
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    for name, make in SAMPLES.items():
        make(out / name)
        print(out / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
