"""The DCOM layer on real Windows traffic, cross-checked with tshark's own DCOM dissectors,
plus built stubs for the calls the captures lack and hostile input."""

from __future__ import annotations

import functools
import json
import random
import struct
import subprocess

import pytest

import tshark_util
from work_meter import linear_in, metered
from wmiscope.dissectors.activation import build_activation_properties
from wmiscope.dissectors.dcom import DcomDecoder
from wmiscope.dissectors.ipid_registry import IpidRegistry
from wmiscope.dissectors.orpc import write_orpcthat, write_orpcthis
from wmiscope.formats import objref
from wmiscope.formats.objref import build_dualstringarray, build_objref, parse_dualstringarray, parse_objref, scan_objrefs
from wmiscope.dissectors.ndr import DecodeError, NdrWriter
from wmiscope.dissectors.records import Call, as_dict

LM = "LM_WMI_ProcessCallCreate.pcapng"
WMIEXEC = "impacket_wmiexec.pcapng"
DCOMEXEC = "impacket_dcomexec.pcapng"
COVENANT = "covenant_sharpwmi_dcerpc_wmi_execquery_execmethod.cap"
WMIMPLANT = "wmimplant.pcap"
INVOKE = "invoke-wmiexec.pcap"
WMIEXECPRO = "wmiexecpro-create-start-service.pcap"
MMC20 = "dcom_mmc20_application.pcapng"

IID_IWBEMSERVICES = "9556dc99-828c-11cf-a37e-00aa003240c7"
IID_IWBEMLEVEL1LOGIN = "f309ad18-d86a-11d0-a075-00c04fb68820"
IID_IWBEMLOGINCLIENTID = "d4781cd6-e5d3-44df-ad94-930efe48a887"
IID_IDISPATCH = "00020400-0000-0000-c000-000000000046"
CLSID_WBEMLEVEL1LOGIN = "8bc3f05e-d86b-11d0-a075-00c04fb68820"

# tshark dissects these itself; switched off, it hands over their stub bytes like any other
_TSHARK_DCOM = ("dcom", "isystemactivator", "remunk", "remunk2", "oxid", "dispatch", "remact", "typeinfo",
                "provideclassinfo")


def _tshark(name: str, *args: str) -> str:
    # exit status 2 means "file cut short" (the covenant capture is): the output is still whole
    p = subprocess.run(["tshark", "-r", str(tshark_util.capture(name)), *args], capture_output=True, text=True)
    assert p.returncode in (0, 2), p.stderr
    return p.stdout


_PDU_FIELDS = ("frame.number", "tcp.stream", "dcerpc.pkt_type", "dcerpc.cn_call_id", "dcerpc.cn_ctx_id",
               "dcerpc.opnum", "dcerpc.obj_id", "dcerpc.auth_level", "dcerpc.cn_bind_to_uuid", "ip.src",
               "tcp.srcport", "ip.dst", "tcp.dstport", "dcerpc.cn_flags", "dcerpc.stub_data")


@functools.lru_cache(maxsize=None)
def _pdus(name: str) -> list[list[str]]:
    """One row per frame carrying DCE/RPC, with the reassembled clear stub; tshark's DCOM
    dissectors are off so that every stub is handed over as bytes."""
    args = ["-2", "-Y", "dcerpc", "-T", "fields", "-E", "occurrence=a", "-E", "aggregator=,"]
    for p in _TSHARK_DCOM:
        args += ["--disable-protocol", p]
    for f in _PDU_FIELDS:
        args += ["-e", f]
    return [line.split("\t") for line in _tshark(name, *args).splitlines()]


@functools.lru_cache(maxsize=None)
def raw_stubs(name: str) -> dict[int, bytes]:
    """frame -> reassembled clear stub (the first PDU's of the frame)."""
    return {int(row[0]): bytes.fromhex(row[-1].split(",")[0].replace(":", "")) for row in _pdus(name) if row[-1]}


_CHECK_FIELDS = ("dcerpc.obj_id", "dcom.ipid", "dcom.oxid", "dcom.hresult", "dcom.dualstringarray.network_addr",
                 "isystemactivator.customhdr.clsid", "isystemactivator.properties.instninfo.clsid",
                 "isystemactivator.properties.instninfo.iid", "isystemactivator.properties.si.ci.name",
                 "isystemactivator.properties.sri.protseq", "isystemactivator.properties.scmresp.oxid",
                 "isystemactivator.properties.scmresp.rmtunknid", "isystemactivator.properties.scmresp.authhint",
                 "isystemactivator.properties.retval")


@functools.lru_cache(maxsize=None)
def _checks(name: str) -> dict[int, dict[str, list[str]]]:
    args = ["-2", "-Y", "dcerpc", "-T", "fields", "-e", "frame.number", "-E", "occurrence=a", "-E", "aggregator=|"]
    for f in _CHECK_FIELDS:
        args += ["-e", f]
    out = {}
    for line in _tshark(name, *args).splitlines():
        cols = line.split("\t")
        out[int(cols[0])] = {f: (c.split("|") if c else []) for f, c in zip(_CHECK_FIELDS, cols[1:])}
    return out


def tshark_fields(name: str, frame: int, field: str) -> list[str]:
    """The values tshark (its DCOM dissectors on) shows for `field` in `frame`."""
    return _checks(name)[frame][field]


def build_calls(name: str) -> list[Call]:
    """Completed calls in capture order, as the DCE/RPC layer hands them to the DCOM layer
    (built here from tshark's view, so that these tests do not depend on our own DCE/RPC layer)."""
    stubs = raw_stubs(name)
    contexts, pending, done = {}, {}, []
    for frame, stream, ptypes, call_ids, ctx_ids, opnums, obj, level, binds, src, sport, dst, dport, flags, _ in _pdus(name):
        frame = int(frame)
        for i, ptype in enumerate(int(p) for p in ptypes.split(",")):
            if ptype in (11, 14):                          # bind, alter_context
                for c, u in zip(ctx_ids.split(","), binds.split(",")):
                    contexts[(stream, int(c))] = u
                continue
            if ptype not in (0, 2, 3):
                continue
            key = (stream, int(call_ids.split(",")[i]))
            sealed = level.split(",")[0] == "6"
            if ptype == 0:
                c = pending.get(key)
                if c is None:
                    ctx = int(ctx_ids.split(",")[i])
                    c = pending[key] = Call(conn=int(stream), call_id=key[1], client=(src, int(sport)),
                                            server=(dst, int(dport)), ctx_id=ctx,
                                            interface_uuid=contexts.get((stream, ctx)),
                                            opnum=int(opnums.split(",")[i]), ipid=obj.split(",")[i] if obj else None,
                                            req_frames=(frame, frame))
                c.req_frames = (c.req_frames[0], frame)
                c.req_encrypted = sealed
                c.req_stub = None if sealed else stubs.get(frame, c.req_stub)
            else:
                c = pending.get(key)
                if c is None:
                    continue
                c.resp_frames = (c.resp_frames[0] if c.resp_frames else frame, frame)
                c.resp_encrypted = sealed
                c.resp_stub = None if sealed else stubs.get(frame, c.resp_stub)
                if ptype == 3:
                    c.fault = 0x1C010003
                if int(flags.split(",")[i], 16) & 0x02:    # last fragment
                    done.append(pending.pop(key))
    return done


@functools.lru_cache(maxsize=None)
def decoded(name: str) -> tuple[dict[int, Call], IpidRegistry]:
    """Every call of a capture through one DcomDecoder, by first request frame."""
    registry = IpidRegistry()
    dec = DcomDecoder(registry)
    calls = build_calls(name)
    for c in calls:
        dec.decode_call(c)
    return {c.req_frames[0]: c for c in calls}, registry


ALL = (LM, WMIEXEC, DCOMEXEC, COVENANT, WMIMPLANT, INVOKE, WMIEXECPRO, MMC20)


def param(side: dict, name: str) -> dict:
    """A DCOM parameter as the table interpreter decoded it, by its IDL name."""
    (p,) = [p for p in side["params"] if p["name"] == name]
    return p


def value(side: dict, name: str):
    return param(side, name)["value"]


def act(side: dict) -> dict:
    """The activation facts the activation hook lifted out of (pp)ActProperties."""
    return param(side, "pActProperties" if "pActProperties" in [p["name"] for p in side["params"]]
                 else "ppActProperties")["activation"]


# ---------------------------------------------------------------------------------------------
# LM_WMI_ProcessCallCreate: the whole DCOM story of a WMI session

def test_remote_create_instance_request_lm():
    c = decoded(LM)[0][24]
    assert (c.interface, c.method, c.interface_source) == ("IRemoteSCMActivator", "RemoteCreateInstance", "context")
    side = c.decoded["request"]
    assert side["orpcthis"] == {"version": "5.7", "flags": 1, "cid": "fd7ed21b-dac9-49d2-aadd-65b0c706fc49"}
    assert value(side, "pUnkOuter") is None and param(side, "pUnkOuter")["referent"] == 0
    req = act(side)
    assert req["clsid"] == CLSID_WBEMLEVEL1LOGIN and req["class_name"] == "WbemLevel1Login"
    assert req["requested_interfaces"] == ["IWbemLevel1Login"]
    assert req["server_name"] == "172.16.66.36"
    assert req["requested_protseqs"] == [7]
    assert [p["name"] for p in req["properties"]] == [
        "SpecialPropertiesData", "InstantiationInfoData", "ActivationContextInfoData", "SecurityInfoData",
        "LocationInfoData", "ScmRequestInfoData"]
    ctx = req["properties"][2]["client_context"]
    assert (ctx["kind"], ctx["clsid_name"], ctx["interface"]) == ("custom", "ContextMarshaler", "IContext")
    assert not c.errors


def test_remote_create_instance_response_lm():
    calls, reg = decoded(LM)
    side = calls[24].decoded["response"]
    assert side["return"]["value"] == 0
    resp = act(side)
    assert resp["oxid"] == "0x053773507f213667"
    assert resp["ipid_remunknown"] == "0000c000-0530-0000-7d85-2faeeac5c880"
    assert (resp["authn_hint"], resp["server_version"]) == (4, "5.7")
    assert "ncacn_ip_tcp:172.16.66.36[49670]" in resp["oxid_bindings_text"]
    (login,) = resp["interfaces"]
    assert (login["interface"], login["hresult"], login["ipid"]) == (
        "IWbemLevel1Login", 0, "00014006-0530-0000-0333-997691ea98ab")
    # the exporter port the client then connects to
    ports = {b.port for b in reg.oxid(0x053773507F213667).bindings.string_bindings if b.protseq == "ncacn_ip_tcp"}
    assert ports == {49670}
    assert calls[35].server[1] == 49670


def test_every_clear_activation_matches_tshark():
    """Each clear RemoteCreateInstance of every capture, field by field against tshark's ISystemActivator."""
    checked = 0
    for name in (LM, WMIMPLANT, INVOKE, COVENANT):
        for c in decoded(name)[0].values():
            if c.method != "RemoteCreateInstance" or c.req_encrypted:
                continue
            req, resp = act(c.decoded["request"]), act(c.decoded["response"])
            t_req, t_resp = _checks(name)[c.req_frames[1]], _checks(name)[c.resp_frames[1]]
            assert [p["clsid"] for p in req["properties"]] == t_req["isystemactivator.customhdr.clsid"]
            assert [req["clsid"]] == t_req["isystemactivator.properties.instninfo.clsid"]
            assert req["requested_iids"] == t_req["isystemactivator.properties.instninfo.iid"]
            assert [req["server_name"]] == t_req["isystemactivator.properties.si.ci.name"]
            assert [str(p) for p in req["requested_protseqs"]] == t_req["isystemactivator.properties.sri.protseq"]
            assert [p["clsid"] for p in resp["properties"]] == t_resp["isystemactivator.customhdr.clsid"]
            assert [resp["oxid"]] == t_resp["isystemactivator.properties.scmresp.oxid"]
            assert [resp["ipid_remunknown"]] == t_resp["isystemactivator.properties.scmresp.rmtunknid"]
            assert [str(resp["authn_hint"])] == t_resp["isystemactivator.properties.scmresp.authhint"]
            assert [i["ipid"] for i in resp["interfaces"]] == t_resp["dcom.ipid"]
            objref_addrs = [b["network_addr"] for b in resp["interfaces"][0]["objref"]["resolver"]["string_bindings"]]
            oxid_addrs = [b["network_addr"] for b in resp["oxid_bindings"]["string_bindings"]]
            assert objref_addrs + oxid_addrs == t_resp["dcom.dualstringarray.network_addr"]
            assert [str(i["hresult"]) for i in resp["interfaces"]] == t_resp["isystemactivator.properties.retval"]
            checked += 1
    assert checked == 9   # LM 1, wmimplant 6, invoke-wmiexec 1, covenant 1


def test_rem_query_interface_teaches_login_client_id_lm():
    calls, reg = decoded(LM)
    qi = calls[35]
    assert (qi.interface, qi.method, qi.interface_source) == ("IRemUnknown2", "RemQueryInterface", "ipid")
    req, resp = qi.decoded["request"], qi.decoded["response"]
    ripid = param(req, "ripid")
    assert ripid["value"] == "00014006-0530-0000-0333-997691ea98ab" and ripid["interface"] == "IWbemLevel1Login"
    assert (value(req, "cRefs"), value(req, "cIids"), param(req, "iids")["interfaces"]) == (
        5, 1, ["IWbemLoginClientID"])
    (res,) = value(resp, "ppQIResults")
    assert param(resp, "ppQIResults")["referent"] == 0x00020000
    assert res["std"]["ipid"] == tshark_fields(LM, 36, "dcom.ipid")[1] == "00013416-0530-0000-d756-78286df5d5d9"
    assert [f"0x{res['std']['oxid']:016x}"] == tshark_fields(LM, 36, "dcom.oxid")
    assert (res["hResult"]["value"], res["interface"], resp["return"]["value"]) == (0, "IWbemLoginClientID", 0)
    # the IPID learned here names the next call although its bind context came later
    set_client = calls[39]
    assert set_client.ipid == res["std"]["ipid"]
    assert (set_client.interface, set_client.method, set_client.interface_source) == (
        "IWbemLoginClientID", "SetClientInfo", "ipid")
    assert reg.lookup(res["std"]["ipid"]).frame == 36


def test_ntlmlogin_reply_carries_iwbemservices_objref_lm():
    calls, reg = decoded(LM)
    stub = tshark_util.stub(LM, 46)
    assert stub == raw_stubs(LM)[46]                # the two ways of asking tshark agree
    (found,) = scan_objrefs(stub)
    off, o = found
    assert (off, o.kind, o.iid, o.interface, o.framed) == (20, "standard", IID_IWBEMSERVICES, "IWbemServices", True)
    assert [b.host for b in o.resolver.string_bindings] == ["01566s-win16-ir", "172.16.66.36"]
    assert o.std.public_refs == 5 and o.std.oxid == 0x053773507F213667
    assert tshark_fields(LM, 52, "dcerpc.obj_id") == tshark_fields(LM, 126, "dcerpc.obj_id") == [o.std.ipid]
    # so the sealed calls that follow are named, and marked encrypted, not malformed
    for frame, method in ((52, "GetObject"), (126, "ExecMethod")):
        c = calls[frame]
        assert (c.interface, c.method, c.interface_source) == ("IWbemServices", method, "ipid")
        assert c.req_encrypted and c.req_stub is None and not c.errors
    # the IWbemServices OBJREF is reached through the exporter learned at activation
    assert "ncacn_ip_tcp:172.16.66.36[49670]" in reg.bindings_for(o.std.ipid)
    login = calls[45]
    assert login.decoded["request"] == {"orpcthis": {"version": "5.7", "flags": 0,
                                                     "cid": "fd7ed21b-dac9-49d2-aadd-65b0c706fc49"},
                                        "params_offset": 32}
    assert login.decoded["response"]["params_offset"] == 8
    assert login.decoded["response"]["objrefs"][0]["std"]["ipid"] == o.std.ipid


def test_rem_release_lm():
    calls, _ = decoded(LM)
    rel = calls[47]
    assert (rel.interface, rel.method) == ("IRemUnknown2", "RemRelease")
    refs = value(rel.decoded["request"], "InterfaceRefs")
    assert value(rel.decoded["request"], "cInterfaceRefs") == 2
    assert [r["ipid"] for r in refs] == tshark_fields(LM, 47, "dcom.ipid")[1:]
    assert [r["interface"] for r in refs] == ["IWbemLoginClientID", "IWbemLevel1Login"]
    assert [(r["cPublicRefs"], r["cPrivateRefs"]) for r in refs] == [(5, 0), (5, 0)]
    assert rel.decoded["response"]["return"]["value"] == 0
    assert value(calls[129].decoded["request"], "InterfaceRefs")[0]["interface"] == "IWbemServices"


def test_every_call_of_lm_is_named():
    calls, _ = decoded(LM)
    assert [(c.interface, c.method) for c in calls.values()] == [
        ("IRemoteSCMActivator", "RemoteCreateInstance"), ("IRemUnknown2", "RemQueryInterface"),
        ("IWbemLoginClientID", "SetClientInfo"), ("IWbemLevel1Login", "EstablishPosition"),
        ("IWbemLevel1Login", "NTLMLogin"), ("IRemUnknown2", "RemRelease"), ("IWbemServices", "GetObject"),
        ("IWbemServices", "ExecMethod"), ("IRemUnknown2", "RemRelease")]


# ---------------------------------------------------------------------------------------------
# the other captures

def test_impacket_wmiexec_ntlmlogin_reply_and_sealed_activation():
    calls, reg = decoded(WMIEXEC)
    (found,) = scan_objrefs(raw_stubs(WMIEXEC)[33])
    o = found[1]
    assert o.interface == "IWbemServices"
    assert [b.network_addr for b in o.resolver.string_bindings] == ["WIN-KCBVCO95HFV", "10.1.1.5"]
    assert calls[22].method == "RemoteCreateInstance" and calls[22].req_encrypted and not calls[22].errors
    # the activation is sealed: IWbemLevel1Login's IPID is unknown and said so, the bind context names it
    login = calls[32]
    assert (login.interface, login.method, login.interface_source) == ("IWbemLevel1Login", "NTLMLogin", "context")
    assert "was not seen in any OBJREF" in login.decoded["notes"][0]
    assert calls[44].interface_source == "ipid" and calls[44].ipid == o.std.ipid
    assert [c.method for c in calls.values()] == ["RemoteCreateInstance", "NTLMLogin", "RemRelease", "GetObject",
                                                  "ExecMethod", "ExecMethod", "ExecMethod"]


def test_impacket_dcomexec_is_named_and_not_wmi():
    calls, reg = decoded(DCOMEXEC)
    act = calls[8]
    assert (act.interface, act.method, act.req_encrypted, act.errors) == (
        "IRemoteSCMActivator", "RemoteCreateInstance", True, [])
    others = [c for f, c in calls.items() if f != 8]
    assert {c.interface for c in others} == {"IDispatch"}
    assert [c.method for c in others] == ["GetIDsOfNames", "Invoke"] * 4 + ["Invoke"]
    assert all(not c.errors for c in calls.values())
    assert not any(e.iid and e.interface and e.interface.startswith("IWbem") for e in reg.ipids.values())
    # each Invoke reply hands out an IDispatch pointer (VT_DISPATCH): tshark agrees on IPID, OXID and address
    for frame in (20, 24, 28):
        (o,) = calls[frame].decoded["response"]["objrefs"]
        t = _checks(DCOMEXEC)[calls[frame].resp_frames[1]]
        assert (o["iid"], o["std"]["ipid"], [o["std"]["oxid"]]) == (IID_IDISPATCH, t["dcom.ipid"][1], t["dcom.oxid"])
        assert o["bindings"] == ["ncacn_ip_tcp:" + a for a in t["dcom.dualstringarray.network_addr"]]
    assert calls[22].interface_source == "ipid"      # the IPID learned from frame 21's reply


def test_covenant_login_ex_and_server_alive2():
    calls, reg = decoded(COVENANT)
    alive = calls[49]
    assert (alive.interface, alive.method) == ("IObjectExporter", "ServerAlive2")
    resp = alive.decoded["response"]
    ts = tshark_fields(COVENANT, 50, "dcom.dualstringarray.network_addr")
    assert [b["network_addr"] for b in value(resp, "ppdsaOrBindings")["string_bindings"]] == ts == [
        "WORKSTATION6", "172.18.39.6"]
    assert (value(resp, "pComVersion"), resp["return"]["value"]) == ({"MajorVersion": 5, "MinorVersion": 7}, 0)
    ex = calls[85]
    assert (ex.interface, ex.method, ex.interface_source) == ("IWbemLoginClientIDEx", "SetClientInfoEx", "ipid")
    assert reg.lookup(ex.ipid).source == "remqi"
    assert ex.decoded["request"]["params_offset"] == 32
    named = [c for c in calls.values() if c.method]
    assert len(named) == len(calls) == 24
    assert sum(c.req_encrypted for c in calls.values()) == 9


def test_wmimplant_and_others_every_dcom_call_named_no_errors():
    # EPM, Netlogon and DRSUAPI calls are named from the table's "rpc" group; in
    # the bind-less mmc20 capture only the ITypeInfo context (4 calls) is known.
    expect_unnamed = {WMIMPLANT: 0, INVOKE: 0, WMIEXECPRO: 0, MMC20: 27}
    for name, unnamed in expect_unnamed.items():
        calls, reg = decoded(name)
        assert sum(c.interface is None for c in calls.values()) == unnamed, name
        for c in calls.values():
            assert not c.errors, (name, c.req_frames, c.errors)
            json.dumps(as_dict(c))                  # everything a call carries is JSON-able
    ping = decoded(WMIMPLANT)[0][387]
    assert (ping.method, value(ping.decoded["request"], "pSetId"), ping.decoded["response"]["return"]["value"]) \
        == ("SimplePing", 0x00000005CB5467E6, 0)


def test_mmc20_unknown_ipids_are_reported_not_guessed():
    calls, _ = decoded(MMC20)
    first = calls[3]
    assert (first.interface, first.interface_source, first.method) == (None, None, None)
    assert "was not seen in any OBJREF" in first.decoded["notes"][0]
    assert first.decoded["request"]["orpcthis"]["version"] == "5.7"   # an object UUID means ORPC all the same
    assert calls[41].interface == "IDispatch" and calls[41].interface_source == "ipid"


# ---------------------------------------------------------------------------------------------
# built stubs: the structures and calls the captures do not show

def _resolver(*hosts):
    return build_dualstringarray([(7, h) for h in hosts], [(0x0A, 0xFFFF, ""), (0x10, 0xFFFF, "host/x")])


@pytest.mark.parametrize("flags", [1, 2, 4, 8])
def test_objref_flavors_round_trip(flags):
    raw = build_objref(IID_IWBEMSERVICES, flags, ipid="0001800f-0a80-0000-0d85-63b84cad7fb8", oxid=0x1122,
                       oid=0x3344, resolver=_resolver("srv", "10.0.0.1[135]"),
                       clsid="4590f812-1d3a-11d0-891f-00aa004b2e24", payload=b"\x78\x56\x34\x12" + bytes(12),
                       elements=[("0000031c-0000-0000-c000-000000000046", b"abc")])
    o = parse_objref(raw, 0)
    assert (o.flags, o.iid, o.length) == (flags, IID_IWBEMSERVICES, len(raw))
    if flags == 4:
        assert (o.clsid, o.payload_offset, o.payload_length, o.size) == (
            "4590f812-1d3a-11d0-891f-00aa004b2e24", 48, 16, 16)
        return
    assert (o.std.ipid, o.std.oxid, o.std.oid) == ("0001800f-0a80-0000-0d85-63b84cad7fb8", 0x1122, 0x3344)
    assert o.resolver.bindings_text() == ["ncacn_ip_tcp:srv", "ncacn_ip_tcp:10.0.0.1[135]"]
    assert o.resolver.string_bindings[1].port == 135
    assert [s.princ_name for s in o.resolver.security_bindings] == ["", "host/x"]
    if flags == 2:
        assert o.clsid == "4590f812-1d3a-11d0-891f-00aa004b2e24"
    if flags == 8:
        assert o.elements == [{"data_id": "0000031c-0000-0000-c000-000000000046", "size": 3,
                               "offset": len(raw) - 8}]


def test_scan_steps_over_wmi_objects_but_not_other_custom_payloads():
    fake = build_objref(IID_IWBEMSERVICES, ipid="11111111-2222-3333-4444-555555555555")
    framed_fake = struct.pack("<II", len(fake), len(fake)) + fake

    def mip(objref):
        return struct.pack("<II", len(objref), len(objref)) + objref

    wmi_object = mip(build_objref("dc12a681-737f-11cf-884d-00aa004b2e24", 4,
                                  clsid="4590f812-1d3a-11d0-891f-00aa004b2e24", payload=framed_fake))
    other = mip(build_objref("000001a3-0000-0000-c000-000000000046", 4,
                             clsid="00000339-0000-0000-c000-000000000046", payload=framed_fake))
    found = scan_objrefs(b"\x00" * 4 + wmi_object)
    assert [o.kind for _, o in found] == ["custom"]         # nothing inside a WMI object poses as a pointer
    found = scan_objrefs(b"\x00" * 4 + other)
    assert [o.kind for _, o in found] == ["custom", "standard"]
    assert found[1][1].framed and found[1][1].std.ipid == "11111111-2222-3333-4444-555555555555"
    # an unframed OBJREF is reported but does not teach the registry
    dec = DcomDecoder()
    call = Call(conn=0, call_id=1, client=("a", 1), server=("b", 2), ipid=None, req_stub=b"\xff" * 8 + fake)
    dec.decode_call(call)
    assert call.decoded["request"]["objrefs"][0]["std"]["ipid"] == "11111111-2222-3333-4444-555555555555"
    assert len(dec.registry) == 0
    assert scan_objrefs(b"MEOW" + b"\x03\x00\x00\x00" + bytes(40)) == []   # flags 3: not an OBJREF


def test_orpc_extensions():
    w = NdrWriter()
    w.u16(5), w.u16(7), w.u32(0), w.u32(0), w.guid("fd7ed21b-dac9-49d2-aadd-65b0c706fc49")
    w.referent()                       # extensions
    w.u32(1), w.u32(0)
    w.referent()                       # extent array
    w.count(2)
    w.referent(), w.referent(False)
    w.count(8), w.guid("0000031c-0000-0000-c000-000000000046"), w.u32(5), w.raw(b"hello\0\0\0")
    w.u32(0x1234)                      # the interface's first parameter
    call = Call(conn=0, call_id=1, client=("a", 1), server=("b", 2), interface_uuid=IID_IWBEMSERVICES, opnum=6,
                req_stub=w.getvalue())
    DcomDecoder().decode_call(call)
    req = call.decoded["request"]
    assert req["orpcthis"]["extensions"] == [{"id": "0000031c-0000-0000-c000-000000000046",
                                              "name": "ERROR_EXTENSION", "size": 5, "offset": 80}]
    assert struct.unpack_from("<I", call.req_stub, req["params_offset"])[0] == 0x1234


def _call(iid, opnum, req=b"", resp=None, ipid=None):
    return Call(conn=1, call_id=1, client=("10.0.0.1", 50000), server=("10.0.0.2", 135), interface_uuid=iid,
                opnum=opnum, ipid=ipid, req_stub=req, resp_stub=resp, req_frames=(10, 10), resp_frames=(11, 11))


def test_resolve_oxid2_teaches_bindings():
    w = NdrWriter()
    w.u64(0xABCDEF), w.u16(1), w.count(1), w.u16(7)
    r = NdrWriter()
    dsa = build_dualstringarray([(7, "srv[49700]")])
    r.referent(), r.count(len(dsa) // 2 - 2), r.raw(dsa)
    r.guid("0000c000-0530-0000-7d85-2faeeac5c880"), r.u32(4), r.u16(5), r.u16(7), r.u32(0)
    reg = IpidRegistry()
    call = _call("99fcfec4-5260-101b-bbcb-00aa0021347a", 4, w.getvalue(), r.getvalue())
    DcomDecoder(reg).decode_call(call)
    assert call.method == "ResolveOxid2" and not call.errors
    assert value(call.decoded["request"], "pOxid") == 0xABCDEF
    assert value(call.decoded["response"], "ppdsaOxidBindings")["bindings"] == ["ncacn_ip_tcp:srv[49700]"]
    assert reg.oxid(0xABCDEF).bindings.string_bindings[0].port == 49700
    assert reg.lookup("0000c000-0530-0000-7d85-2faeeac5c880").source == "resolver"


def test_complex_ping():
    w = NdrWriter()
    w.u64(9), w.u16(1), w.u16(2), w.u16(0)
    w.referent(), w.count(2), w.u64_array([0x10, 0x20]), w.referent(False)
    r = NdrWriter()
    r.u64(9), r.u16(2), r.u32(0)
    call = _call("99fcfec4-5260-101b-bbcb-00aa0021347a", 2, w.getvalue(), r.getvalue())
    DcomDecoder().decode_call(call)
    assert value(call.decoded["request"], "AddToSet") == [0x10, 0x20]
    assert value(call.decoded["request"], "DelFromSet") is None
    assert value(call.decoded["response"], "pPingBackoffFactor") == 2


def test_rem_query_interface2_and_add_ref():
    ipid = "00013416-0530-0000-d756-78286df5d5d9"
    objref = build_objref(IID_IWBEMLOGINCLIENTID, ipid="00020000-aaaa-bbbb-cccc-000000000001", oxid=7, oid=8)
    w = NdrWriter()
    write_orpcthis(w, "fd7ed21b-dac9-49d2-aadd-65b0c706fc49")
    w.guid(ipid), w.u16(1), w.conformant_guids([IID_IWBEMLOGINCLIENTID])
    r = NdrWriter()
    write_orpcthat(r)
    r.conformant_u32s([0]), r.count(1), r.referent()
    r.interface_pointer_data(objref)
    r.u32(0)
    reg = IpidRegistry()
    dec = DcomDecoder(reg)
    call = _call("00000143-0000-0000-c000-000000000046", 6, w.getvalue(), r.getvalue(), ipid=ipid)
    dec.decode_call(call)
    assert call.method == "RemQueryInterface2" and not call.errors
    assert reg.lookup("00020000-aaaa-bbbb-cccc-000000000001").interface == "IWbemLoginClientID"
    w = NdrWriter()
    write_orpcthis(w, "fd7ed21b-dac9-49d2-aadd-65b0c706fc49")
    w.u16(1), w.count(1), w.guid("00020000-aaaa-bbbb-cccc-000000000001"), w.u32(2), w.u32(0)
    r = NdrWriter()
    write_orpcthat(r)
    r.conformant_u32s([0]), r.u32(0)
    call = _call("00000131-0000-0000-c000-000000000046", 4, w.getvalue(), r.getvalue(), ipid=ipid)
    dec.decode_call(call)
    assert value(call.decoded["request"], "InterfaceRefs")[0]["interface"] == "IWbemLoginClientID"
    resp = call.decoded["response"]
    assert resp["orpcthat"] == {"flags": 0} and resp["return"]["value"] == 0
    assert [h["value"] for h in value(resp, "pResults")] == [0]


def test_remote_activation():
    login = build_objref(IID_IWBEMLEVEL1LOGIN, ipid="00030000-aaaa-bbbb-cccc-000000000002", oxid=0x77, oid=1)
    w = NdrWriter()
    write_orpcthis(w, "fd7ed21b-dac9-49d2-aadd-65b0c706fc49", version=(5, 2))
    w.guid(CLSID_WBEMLEVEL1LOGIN), w.referent(False), w.referent(False), w.u32(2), w.u32(0), w.u32(1)
    w.referent(), w.conformant_guids([IID_IWBEMLEVEL1LOGIN]), w.u16(1), w.count(1), w.u16(7)
    r = NdrWriter()
    write_orpcthat(r)
    dsa = build_dualstringarray([(7, "10.0.0.2[1025]")])
    r.u64(0x77), r.referent(), r.count(len(dsa) // 2 - 2), r.raw(dsa)
    r.guid("0000c000-0000-0000-0000-000000000003"), r.u32(4), r.u16(5), r.u16(2), r.u32(0)
    r.count(1), r.referent(), r.interface_pointer_data(login), r.conformant_u32s([0]), r.u32(0)
    reg = IpidRegistry()
    call = _call("4d9f4ab8-7d1c-11cf-861e-0020af6e7c57", 0, w.getvalue(), r.getvalue())
    DcomDecoder(reg).decode_call(call)
    assert not call.errors
    assert value(call.decoded["request"], "Clsid") == CLSID_WBEMLEVEL1LOGIN
    assert param(call.decoded["request"], "pIIDs")["interfaces"] == ["IWbemLevel1Login"]
    resp = call.decoded["response"]
    assert value(resp, "ppInterfaceData")[0]["ipid"] == "00030000-aaaa-bbbb-cccc-000000000002"
    assert value(resp, "pOxid") == 0x77 and resp["return"]["value"] == 0
    assert reg.bindings_for("00030000-aaaa-bbbb-cccc-000000000002") == ["ncacn_ip_tcp:10.0.0.2[1025]"]


def test_built_activation_blob_decodes_like_a_real_one():
    inst = NdrWriter()
    inst.guid(CLSID_WBEMLEVEL1LOGIN), inst.u32(0x14), inst.u32(0), inst.i32(0), inst.u32(1), inst.u32(0)
    inst.referent(), inst.u32(88), inst.u16(5), inst.u16(7), inst.conformant_guids([IID_IWBEMLEVEL1LOGIN])
    blob = build_activation_properties([("000001ab-0000-0000-c000-000000000046", inst.getvalue())])
    objref = build_objref("000001a2-0000-0000-c000-000000000046", 4,
                          clsid="00000338-0000-0000-c000-000000000046", payload=blob)
    w = NdrWriter()
    write_orpcthis(w, "fd7ed21b-dac9-49d2-aadd-65b0c706fc49")
    w.referent(False)
    w.interface_pointer(objref)
    call = _call("000001a0-0000-0000-c000-000000000046", 4, w.getvalue())
    DcomDecoder().decode_call(call)
    assert not call.errors
    assert act(call.decoded["request"])["requested_interfaces"] == ["IWbemLevel1Login"]


def test_naming_rules():
    reg = IpidRegistry()
    reg.learn_ipid("0000c000-0530-0000-7d85-2faeeac5c880", "00000131-0000-0000-c000-000000000046")
    dec = DcomDecoder(reg)
    # the IPID is IRemUnknown's; a bind to IRemUnknown2 names the more derived interface
    c = _call("00000143-0000-0000-c000-000000000046", 6, None, ipid="0000C000-0530-0000-7D85-2FAEEAC5C880")
    dec.decode_call(c)
    assert (c.interface, c.method, c.interface_source) == ("IRemUnknown2", "RemQueryInterface2", "ipid")
    # an IPID that contradicts the bind: the IPID wins, and the mismatch is noted
    c = _call(IID_IWBEMSERVICES, 5, None, ipid="0000c000-0530-0000-7d85-2faeeac5c880")
    dec.decode_call(c)
    assert (c.interface, c.method) == ("IRemUnknown", "RemRelease") and "bind context" in c.decoded["notes"][0]
    # nothing known at all
    c = _call(None, 3, None, ipid="99999999-0530-0000-7d85-2faeeac5c880")
    dec.decode_call(c)
    assert (c.interface, c.interface_source, c.method, c.interface_uuid) == (None, None, None, None)
    assert c.decoded["notes"]
    # WMI interfaces inherit IUnknown's opnums 0-2
    c = _call(IID_IWBEMSERVICES, 1, None)
    dec.decode_call(c)
    assert c.method == "AddRef"


def test_fault_response_is_not_decoded():
    c = _call("00000143-0000-0000-c000-000000000046", 5, None, resp=b"\x05\x00\x00\x1c")
    c.fault = 0x1C010003
    DcomDecoder().decode_call(c)
    assert not c.errors and (c.decoded is None or "response" not in c.decoded)


# ---------------------------------------------------------------------------------------------
# hostile input: ErrorRecords only, bounded time

def test_absurd_counts_in_objref_and_dualstringarray():
    good = build_objref(IID_IWBEMSERVICES, ipid="00014006-0530-0000-0333-997691ea98ab", resolver=_resolver("h"))
    dsa_at = 24 + 40
    for n, sec in ((0xFFFF, 0), (10, 0xFFFF), (3, 2)):
        bad = good[:dsa_at] + struct.pack("<HH", n, sec) + good[dsa_at + 4:]
        with pytest.raises(DecodeError) as e:
            parse_objref(bad, 0)
        assert e.value.structure.startswith("OBJREF.saResAddr")
    # a string binding with no terminating NUL before wSecurityOffset
    with pytest.raises(DecodeError):
        parse_dualstringarray(struct.pack("<HHHH", 2, 2, 7, 0x41), 0)
    ext = build_objref(IID_IWBEMSERVICES, 8)
    with pytest.raises(DecodeError, match="nElms"):
        parse_objref(ext[:-32] + struct.pack("<II", 0x10000000, 0x4E535956) + ext[-24:], 0)


def test_scan_of_hostile_stubs_is_linear():
    """Thousands of overlapping candidates, each claiming a 64K-entry DUALSTRINGARRAY."""
    head = b"MEOW\x01\x00\x00\x00" + b"\x11" * 16 + b"\x22" * 40 + struct.pack("<HH", 0xFFFF, 0x8000)
    for unit, n in ((head, 12000), (struct.pack("<II", 800000, 800000) + head, 10000)):
        stub = unit * n
        errors: list = []
        with linear_in(len(stub)) as work:
            assert scan_objrefs(stub, errors) == []
        assert len(errors) >= 10000
        # and twice the candidates cost twice the work (a quadratic scan costs four times)
        with metered() as half:
            scan_objrefs(unit * (n // 2), [])
        assert work.calls <= 2.2 * half.calls, (work.calls, half.calls)
    w = NdrWriter()
    write_orpcthis(w, "fd7ed21b-dac9-49d2-aadd-65b0c706fc49")
    c = _call(IID_IWBEMSERVICES, 6, w.getvalue() + head * 100)
    DcomDecoder().decode_call(c)
    assert len(c.errors) == objref.MAX_SCAN_ERRORS + 1 and c.errors[-1].reason.startswith("92 more")


def _activation_call(req=None, resp=None):
    s = raw_stubs(LM)
    return _call("000001a0-0000-0000-c000-000000000046", 4, s[24] if req is None else req,
                 s[25] if resp is None else resp)


@pytest.mark.parametrize("where, value, expect", [
    (0x60, 0xFFFFFFF0, "dwSize"),           # dwSize of the ActivationPropertiesIn blob
    (0x88, 0xFFFF, "cIfs"),                  # CustomHeader.cIfs
    (0xA8, 0x40000000, "count"),             # CustomHeader.pclsid conformance
])
def test_absurd_counts_in_activation_blob(where, value, expect):
    stub = bytearray(raw_stubs(LM)[24])
    struct.pack_into("<I", stub, where, value)
    c = _activation_call(req=bytes(stub))
    DcomDecoder().decode_call(c)
    assert len(c.errors) == 1 and expect in c.errors[0].reason
    e = c.errors[0]
    assert (e.stage, e.frame, e.conn) == ("dcom", 10, 1) and e.structure and e.offset is not None


def test_props_out_count_without_arrays():
    """PropsOutInfo claiming 2**32-1 interfaces with NULL arrays: one error, at once."""
    body = NdrWriter()
    body.u32(0xFFFFFFFF), body.referent(False), body.referent(False), body.referent(False)
    blob = build_activation_properties([("00000339-0000-0000-c000-000000000046", body.getvalue())])
    objref = build_objref("000001a3-0000-0000-c000-000000000046", 4,
                          clsid="00000339-0000-0000-c000-000000000046", payload=blob)
    w = NdrWriter()
    write_orpcthat(w)
    w.interface_pointer(objref)
    w.u32(0)
    c = _activation_call(resp=w.getvalue())
    with linear_in(len(w.getvalue())):   # refused before looping or allocating
        DcomDecoder().decode_call(c)
    assert [(e.structure, "cIfs" in e.reason) for e in c.errors] == [("PropsOutInfo", True)]


def _real_dcom_stubs():
    """(interface, opnum, request stub, response stub) of clear DCOM calls from the captures."""
    out = []
    for name in (LM, COVENANT, WMIMPLANT):
        for c in decoded(name)[0].values():
            if c.req_stub is not None and c.resp_stub is not None:
                out.append((c.interface_uuid, c.opnum, c.req_stub, c.resp_stub, c.ipid))
    return out


def _never_raises(iid, opnum, req, resp, ipid, registry):
    c = _call(iid, opnum, req, resp, ipid=ipid)
    DcomDecoder(registry).decode_call(c)
    for e in c.errors:
        assert e.stage == "dcom" and "internal error" not in e.reason, e
    json.dumps(c.decoded)
    return c


def test_truncations_of_real_stubs():
    s = raw_stubs(LM)
    registry = IpidRegistry()
    errors = 0
    for req, resp, iid, opnum in ((s[24], s[25], "000001a0-0000-0000-c000-000000000046", 4),
                                  (s[35], s[36], "00000143-0000-0000-c000-000000000046", 3),
                                  (s[47], s[48], "00000143-0000-0000-c000-000000000046", 5),
                                  (s[45], s[46], IID_IWBEMLEVEL1LOGIN, 6)):
        # first-use costs (lazy imports) are no truncation's work; a registry of its own
        # leaves the test's as it was
        _never_raises(iid, opnum, req, resp, None, IpidRegistry())
        for n in range(0, len(req), 3):
            with linear_in(n + len(resp)):
                errors += bool(_never_raises(iid, opnum, req[:n], resp, None, registry).errors)
        for n in range(0, len(resp), 3):
            with linear_in(len(req) + n):
                errors += bool(_never_raises(iid, opnum, req, resp[:n], None, registry).errors)
    assert errors > 500


def test_mutations_of_real_stubs():
    rng = random.Random(20240601)
    cases = _real_dcom_stubs()
    registry = IpidRegistry()
    for iid, opnum, req, resp, ipid in cases:   # first-use costs are no mutation's work
        _never_raises(iid, opnum, req, resp, ipid, IpidRegistry())
    for _ in range(400):
        iid, opnum, req, resp, ipid = rng.choice(cases)
        which = rng.randrange(2)
        data = bytearray((req, resp)[which])
        for _ in range(rng.randint(1, 6)):
            kind = rng.randrange(3)
            pos = rng.randrange(len(data)) if data else 0
            if kind == 0 and data:
                data[pos] = rng.randrange(256)
            elif kind == 1 and len(data) >= pos + 4:
                data[pos:pos + 4] = rng.choice((b"\xff\xff\xff\xff", b"\x00\x00\x00\x80", b"\xff\xff\x00\x00"))
            else:
                del data[pos:pos + rng.randint(1, 16)]
        req2, resp2 = (bytes(data), resp) if which == 0 else (req, bytes(data))
        with linear_in(len(req2) + len(resp2)):
            _never_raises(iid, opnum, req2, resp2, ipid, registry)
