"""Operations: WMI calls grouped into what the analyst thinks of as one request.

Real captures for queries, smart enumerators, semisynchronous calls, logins and
namespaces (in clear and sealed); synthetic captures (wmiscope.synth TCP sessions,
DCE/RPC PDUs, stubs written with the NDR writer and the DCOM OBJREF builder) for
what the real ones lack: asynchronous calls with sink callbacks on a reverse
connection, unsecured-apartment stubs, cancellation, OpenNamespace, refreshers;
and the project's own sample captures (pcaps/).
"""

from __future__ import annotations

import dataclasses
import struct
import uuid
from collections import Counter

import pytest

import tshark_util
from wmiscope import synth
from wmiscope.dissectors.jsonl import call_dict
from wmiscope.dissectors.orpc import write_orpcthat, write_orpcthis
from wmiscope.formats.objref import OBJREF_CUSTOM, build_dualstringarray, build_objref
from wmiscope.dissectors.ndr import NdrWriter, guid_bytes
from wmiscope.dissectors.operations import Operations
from wmiscope.dissectors.pipeline import Analysis, analyse
from wmiscope.dissectors.records import Call
from wmiscope.formats import wmio

WMIMPLANT = "wmimplant.pcap"
COVENANT = "covenant_sharpwmi_dcerpc_wmi_execquery_execmethod.cap"
LM = "LM_WMI_ProcessCallCreate.pcapng"


def _calls(path) -> list[Call]:
    records, _ = analyse(path)
    return [r for r in records if type(r) is Call]


def _by_frame(calls) -> dict[int, Call]:
    return {c.req_frames[1]: c for c in calls}


def _resp_frame(calls, frame) -> Call:
    return next(c for c in calls if c.resp_frames and c.resp_frames[1] == frame)


@pytest.fixture(scope="module")
def wmimplant(captures_dir):
    return _calls(captures_dir / WMIMPLANT)


@pytest.fixture(scope="module")
def covenant(captures_dir):
    return _calls(captures_dir / COVENANT)


@pytest.fixture(scope="module")
def lm(captures_dir):
    return _calls(captures_dir / LM)


# ---------------------------------------------------------------------------------------
# real captures

def test_wmimplant_query_smart_enum_is_one_operation(wmimplant):
    calls = _by_frame(wmimplant)
    query = calls[284]
    assert (query.method, query.operation["role"]) == ("ExecQuery", "origin")
    op = query.operation
    assert op["kind"] == "ExecQuery"
    assert op["namespace"] == "\\\\192.168.1.195\\root\\cimv2"
    assert op["origin"] == {"conn": query.conn, "call_id": query.call_id, "frame": 284, "method": "ExecQuery"}
    assert op["origin_call"] == f"{query.conn}:{query.call_id}"
    members = [c for c in wmimplant if c.operation and c.operation["id"] == op["id"]]
    # the RemQueryInterface to IWbemFetchSmartEnum, GetSmartEnum, Clone, Reset, the smart enum's Next
    seen = Counter((c.method, c.operation["role"]) for c in members)
    assert seen[("RemQueryInterface", "query-interface")] == 6
    assert seen[("GetSmartEnum", "smart-enum")] == 2
    assert seen[("Clone", "enumerator")] == 1
    assert seen[("Reset", "enumerator")] == 1
    assert seen[("Next", "smart-enum")] == 2
    assert seen[("RemRelease", "release")] == 4
    nxt = _resp_frame(wmimplant, 313)
    assert (nxt.interface, nxt.method) == ("IWbemWCOSmartEnum", "Next")
    assert nxt.operation["id"] == op["id"] and nxt.operation["namespace"] == op["namespace"]
    assert not any(c.operation.get("inferred") for c in members)       # all in clear
    # the DeleteInstance between the two Next calls is an operation of its own
    assert calls[315].operation["kind"] == "DeleteInstance" and calls[315].operation["id"] != op["id"]


def test_wmimplant_semisynchronous_put_instance(wmimplant):
    put = _by_frame(wmimplant)[203]
    assert put.method == "PutInstance"
    op = put.operation
    assert (op["kind"], op["role"], op["mode"]) == ("PutInstance", "origin", "semisynchronous")
    result_string = _resp_frame(wmimplant, 215)
    assert (result_string.interface, result_string.method) == ("IWbemCallResult", "GetResultString")
    status = next(c for c in wmimplant if c.method == "GetCallStatus")
    for c in (result_string, status):
        assert c.operation["id"] == op["id"]
        assert c.operation["role"] == "call-result"
        assert c.operation["origin"]["frame"] == 203
    # the RemRelease of the IWbemCallResult closes the group
    assert _by_frame(wmimplant)[216].operation == {**op, "role": "release"}


def test_wmimplant_logins_name_namespaces(wmimplant):
    logins = [c for c in wmimplant if c.method == "NTLMLogin"]
    assert len(logins) == 6
    assert [c.operation["namespace"] for c in logins] == (
        ["\\\\192.168.1.195\\root\\cimv2"] * 3 + ["\\\\192.168.1.195\\root\\default"] * 3)
    # SetClientInfo (on IWbemLoginClientID, from a RemQueryInterface on the login object),
    # EstablishPosition and NTLMLogin are one login operation per login object
    for login in logins:
        group = [c.method for c in wmimplant if c.operation and c.operation["id"] == login.operation["id"]]
        assert group == ["SetClientInfo", "EstablishPosition", "NTLMLogin", "RemRelease"]
    # every IWbemServices call carries the namespace of the IWbemServices it was made on
    services = [c for c in wmimplant if c.interface == "IWbemServices"]
    assert len(services) == 16
    assert Counter(c.operation["namespace"] for c in services) == {
        "\\\\192.168.1.195\\root\\cimv2": 7, "\\\\192.168.1.195\\root\\default": 9}
    stdreg = _by_frame(wmimplant)[375]
    assert (stdreg.method, stdreg.operation["namespace"]) == ("ExecMethod", "\\\\192.168.1.195\\root\\default")
    assert len({c.operation["id"] for c in services}) == 16


def test_covenant_sealed_calls_correlated_through_ipids(covenant):
    calls = _by_frame(covenant)
    query = calls[101]
    assert query.req_encrypted and query.resp_encrypted and query.method == "ExecQuery"
    op = query.operation
    assert (op["kind"], op["namespace"]) == ("ExecQuery", "\\\\WORKSTATION6\\root\\cimv2")
    members = [c for c in covenant if c.operation and c.operation["id"] == op["id"]]
    sealed = Counter(c.method for c in members if c.req_encrypted)
    assert sealed == {"ExecQuery": 1, "GetSmartEnum": 2, "Clone": 1, "Reset": 1, "Next": 2}
    # the enumerator's IPID came back sealed: its first sight (a RemQueryInterface in clear,
    # asking for IWbemFetchSmartEnum) is attributed to the waiting ExecQuery, and said so
    assert calls[103].operation["inferred"] is True and calls[103].operation["id"] == op["id"]
    assert all(c.operation.get("inferred") for c in members if c is not query)
    # GetObject and ExecMethod: sealed, their own operations, in the namespace NTLMLogin named
    for frame, kind in ((129, "GetObject"), (138, "ExecMethod")):
        o = calls[frame].operation
        assert (o["kind"], o["role"], o["namespace"]) == (kind, "origin", "\\\\WORKSTATION6\\root\\cimv2")
        assert "inferred" not in o
    assert calls[91].operation["kind"] == "Login"


def test_lm_sealed_calls_carry_namespace_from_ntlmlogin(lm):
    calls = _by_frame(lm)
    for frame, method in ((52, "GetObject"), (126, "ExecMethod")):
        c = calls[frame]
        assert c.req_encrypted and c.method == method
        assert c.operation["namespace"] == "\\\\172.16.66.36\\ROOT\\CIMV2"
        assert (c.operation["kind"], c.operation["role"]) == (method, "origin")
    assert calls[45].operation["namespace"] == "\\\\172.16.66.36\\ROOT\\CIMV2"
    assert call_dict(calls[126], "encrypted")["operation"]["namespace"] == "\\\\172.16.66.36\\ROOT\\CIMV2"


def test_smart_enum_class_cache_is_per_smart_enum(captures_dir):
    analysis = Analysis()
    calls = [r for r in analysis.run(captures_dir / WMIMPLANT) if type(r) is Call]
    ops = analysis.operations
    nexts = [c for c in calls if c.interface == "IWbemWCOSmartEnum"]
    assert len(nexts) == 2 and nexts[0].ipid == nexts[1].ipid
    cache = ops.class_cache(nexts[0])
    assert cache is ops.class_cache(nexts[1])
    # the Win32_Environment class the first Next carried stays cached for the enumeration
    assert uuid.UUID("12c1de05-1e0e-4a2f-8992-aa36d9bdec07") in cache
    assert cache.get(uuid.UUID("12c1de05-1e0e-4a2f-8992-aa36d9bdec07")).name == "Win32_Environment"
    query = next(c for c in calls if c.req_frames[1] == 284)
    assert ops.class_cache(query) is not cache


def test_sealed_async_call_waits_for_its_sink():
    """A sealed *Async request hides its sink: the first callback on an unknown
    IWbemObjectSink IPID between the same hosts is attributed to it, marked inferred."""
    ops = Operations()
    sealed = _bare_call(1, interface="IWbemServices", method="ExecQueryAsync", ipid=SVC, req_frames=(10, 10),
                        req_encrypted=True, resp_encrypted=True)
    ops.observe(sealed)
    other = _bare_call(2, interface="IWbemServices", method="GetObject", ipid=SVC, req_frames=(12, 12))
    ops.observe(other)
    callback = Call(conn=5, call_id=1, client=("10.0.0.2", 50500), server=("10.0.0.1", 50100),
                    interface="IWbemObjectSink", method="SetStatus", ipid=SINK1)
    ops.observe(callback)
    assert callback.operation["id"] == sealed.operation["id"]
    assert callback.operation["inferred"] is True and callback.operation["role"] == "sink-callback"
    # a callback between other hosts is not taken for it
    far = Call(conn=6, call_id=1, client=("10.9.0.2", 50500), server=("10.9.0.1", 50100),
               interface="IWbemObjectSink", method="Indicate", ipid=SINK2)
    ops.observe(far)
    assert far.operation["kind"] == "IWbemObjectSink" and far.operation["role"] == "sink-callback"


# ---------------------------------------------------------------------------------------
# synthetic sessions

CLIENT, SERVER = "10.7.0.10", "10.7.0.20"
CID = "5e1f0a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b"

IID = {
    "IWbemLevel1Login": "f309ad18-d86a-11d0-a075-00c04fb68820",
    "IWbemServices": "9556dc99-828c-11cf-a37e-00aa003240c7",
    "IWbemObjectSink": "7c857801-7381-11cf-884d-00aa004b2e24",
    "IEnumWbemClassObject": "027947e1-d731-11ce-a357-000000000001",
    "IWbemCallResult": "44aca675-e8fc-11d0-a07c-00c04fb68820",
    "IWbemRefreshingServices": "2c9273e0-1dc3-11d3-b364-00105a1f8177",
    "IWbemRemoteRefresher": "f1e9c5b2-f59b-11d2-b362-00105a1f8177",
    "IUnsecuredApartment": "1cfaba8c-1523-11d1-ad79-00c04fd8fdff",
    "IRemUnknown2": "00000143-0000-0000-c000-000000000046",
    "IUnknown": "00000000-0000-0000-c000-000000000046",
    "IWbemClassObject": "dc12a681-737f-11cf-884d-00aa004b2e24",
}
CLSID_WBEM_CLASS_OBJECT_UNMARSHALER = "4590f812-1d3a-11d0-891f-00aa004b2e24"


def _ipid(n: int) -> str:
    return f"0000{n:04x}-0a10-0000-1111-22223333{n:04x}"


LOGIN, SVC, SVC2, CALL_RESULT, ENUM = _ipid(1), _ipid(2), _ipid(3), _ipid(4), _ipid(5)
SINK1, STUB_UNK, STUB_SINK, SINK2, SINK3 = _ipid(0x11), _ipid(0x12), _ipid(0x13), _ipid(0x14), _ipid(0x15)
APARTMENT_REMUNK, REFRESHING, REMOTE_REFRESHER = _ipid(0x21), _ipid(0x22), _ipid(0x23)


def _objref(iface: str, ipid: str, host: str) -> bytes:
    return build_objref(IID[iface], ipid=ipid, oxid=0x1122334455667788, oid=int(ipid[-4:], 16) + 0x1000,
                        resolver=build_dualstringarray([(0x07, host)]))


def _instance_objref(cls_name: str, **values) -> bytes:
    cls = wmio.new_class(cls_name, properties=[(k, "string") for k in values])
    return build_objref(IID["IWbemClassObject"], OBJREF_CUSTOM, clsid=CLSID_WBEM_CLASS_OBJECT_UNMARSHALER,
                        payload=wmio.build_encoding_unit(wmio.new_instance(cls, values)))


def _request(*fns) -> bytes:
    w = NdrWriter()
    write_orpcthis(w, CID)
    for fn in fns:
        fn(w)
    return w.getvalue()


def _response(*fns, hresult: int = 0) -> bytes:
    w = NdrWriter()
    write_orpcthat(w)
    for fn in fns:
        fn(w)
    w.u32(hresult)
    return w.getvalue()


def _rem_qi(target: str, iface: str, result_ipid: str) -> tuple[bytes, bytes]:
    req = _request(lambda w: (w.guid(target), w.u32(5), w.u16(1), w.conformant_guids([IID[iface]])))

    def results(w):
        w.referent()
        w.count(1)
        w.align(8)
        w.u32(0)
        w.align(8)
        w.raw(struct.pack("<IIQQ", 0, 5, 0x1122334455667788, 0x2000) + guid_bytes(result_ipid))
    return req, _response(results)


class Wire:
    """A synthetic capture of several TCP connections, each carrying DCE/RPC calls."""

    def __init__(self, path):
        self.pcap = synth.PcapWriter(path)
        self.clock = synth.Clock()

    def connect(self, client, server, interfaces: list[str]) -> "Conn":
        return Conn(self, client, server, interfaces)

    def close(self):
        self.pcap.close()


class Conn:
    def __init__(self, wire: Wire, client, server, interfaces):
        self.wire = wire
        self.tcp = synth.TcpSession(wire.pcap, wire.clock, client, server)
        self.tcp.open()
        self.contexts = {name: i for i, name in enumerate(interfaces)}
        self.call_id = 1
        self._exchange([synth.bind(1, [(i, IID[n], (0, 0)) for n, i in self.contexts.items()])],
                       [synth.bind_ack(1, len(interfaces), sec_addr=str(server[1]))])

    def _exchange(self, req_pdus, resp_pdus) -> int:
        frames = [f for p in req_pdus for f in self.tcp.send(0, p)]
        self.wire.clock.tick(0.003)
        for p in resp_pdus:
            self.tcp.send(1, p)
        return frames[-1]

    def call(self, iface: str, opnum: int, req: bytes, resp: bytes, ipid: str | None) -> int:
        """One call; returns the frame of its request."""
        self.call_id += 1
        ctx = self.contexts[iface]
        return self._exchange(synth.request(self.call_id, ctx, opnum, req, object_uuid=ipid),
                              synth.response(self.call_id, ctx, resp))


@pytest.fixture(scope="module")
def async_session(tmp_path_factory):
    """NTLMLogin, a semisynchronous OpenNamespace, ExecQueryAsync through an unsecured-apartment
    stub, ExecNotificationQueryAsync with a sink of the client's, NextAsync, callbacks on
    connections from the server to the client, CancelAsyncCall."""
    path = tmp_path_factory.mktemp("ops") / "async.pcap"
    wire = Wire(path)
    f = {}
    wmi = wire.connect((CLIENT, 50001), (SERVER, 49700),
                       ["IWbemLevel1Login", "IWbemServices", "IWbemCallResult", "IEnumWbemClassObject"])
    f["login"] = wmi.call("IWbemLevel1Login", 6, _request(
        lambda w: (w.unique_wstring("\\\\SRV01\\root"), w.unique_wstring("en-US,en"), w.i32(0),
                   w.interface_pointer(None))),
        _response(lambda w: w.interface_pointer(_objref("IWbemServices", SVC, SERVER))), LOGIN)
    # OpenNamespace("cimv2", WBEM_FLAG_RETURN_IMMEDIATELY): no IWbemServices yet, an IWbemCallResult
    f["open"] = wmi.call("IWbemServices", 3, _request(
        lambda w: (w.bstr("cimv2"), w.i32(0x10), w.interface_pointer(None), w.referent(False),
                   w.referent() and w.referent(False))),
        _response(lambda w: (w.referent(False), w.referent() and w.interface_pointer(
            _objref("IWbemCallResult", CALL_RESULT, SERVER)))), SVC)
    f["services"] = wmi.call("IWbemCallResult", 5, _request(lambda w: w.i32(-1)),
                             _response(lambda w: w.interface_pointer(_objref("IWbemServices", SVC2, SERVER))),
                             CALL_RESULT)
    # the unsecured apartment (unsecapp.exe) on the client host: a stub for the client's sink
    apt = wire.connect((CLIENT, 50010), (CLIENT, 49800), ["IUnsecuredApartment", "IRemUnknown2"])
    f["stub"] = apt.call("IUnsecuredApartment", 3,
                         _request(lambda w: w.interface_pointer(_objref("IUnknown", SINK1, CLIENT))),
                         _response(lambda w: w.interface_pointer(_objref("IUnknown", STUB_UNK, CLIENT))), None)
    f["stub_qi"] = apt.call("IRemUnknown2", 3, *_rem_qi(STUB_UNK, "IWbemObjectSink", STUB_SINK), APARTMENT_REMUNK)
    query = lambda lang, text, sink: _request(  # noqa: E731
        lambda w: (w.bstr(lang), w.bstr(text), w.i32(0), w.interface_pointer(None),
                   w.interface_pointer(_objref("IWbemObjectSink", sink, CLIENT))))
    f["query"] = wmi.call("IWbemServices", 21, query("WQL", "SELECT * FROM Win32_Process", STUB_SINK),
                          _response(), SVC2)
    f["events"] = wmi.call("IWbemServices", 23, query(
        "WQL", "SELECT * FROM __InstanceCreationEvent WITHIN 5 WHERE TargetInstance ISA 'Win32_Process'", SINK2),
        _response(), SVC2)
    # a semisynchronous ExecQuery whose enumerator is read with NextAsync into SINK3
    f["enum_query"] = wmi.call("IWbemServices", 20, _request(
        lambda w: (w.bstr("WQL"), w.bstr("SELECT Name FROM Win32_Service"), w.i32(0x30), w.interface_pointer(None))),
        _response(lambda w: w.interface_pointer(_objref("IEnumWbemClassObject", ENUM, SERVER))), SVC2)
    f["next_async"] = wmi.call("IEnumWbemClassObject", 5, _request(
        lambda w: (w.u32(10), w.interface_pointer(_objref("IWbemObjectSink", SINK3, CLIENT)))), _response(), ENUM)

    # the server calls the sinks back on connections of its own
    back = wire.connect((SERVER, 50500), (CLIENT, 49800), ["IWbemObjectSink"])
    indicate = lambda *objs: _request(  # noqa: E731
        lambda w: (w.i32(len(objs)), w.count(len(objs)), [w.referent() for _ in objs],
                   [w.interface_pointer_data(o) for o in objs]))
    set_status = lambda flags, hr: _request(  # noqa: E731
        lambda w: (w.i32(flags), w.u32(hr), w.bstr(None), w.interface_pointer(None)))
    f["indicate1"] = back.call("IWbemObjectSink", 3, indicate(_instance_objref("Win32_Process", Name="lsass.exe")),
                               _response(hresult=0x400FF), STUB_SINK)
    f["status1"] = back.call("IWbemObjectSink", 4, set_status(0, 0), _response(), STUB_SINK)
    # unsecapp forwards to the client's own sink (both on the client host)
    fwd = wire.connect((CLIENT, 50011), (CLIENT, 50100), ["IWbemObjectSink"])
    f["forwarded"] = fwd.call("IWbemObjectSink", 4, set_status(0, 0), _response(), SINK1)
    back2 = wire.connect((SERVER, 50501), (CLIENT, 50100), ["IWbemObjectSink"])
    f["event"] = back2.call("IWbemObjectSink", 3, indicate(_instance_objref("__InstanceCreationEvent", X="1")),
                            _response(), SINK2)
    f["next_indicate"] = back2.call("IWbemObjectSink", 3, indicate(_instance_objref("Win32_Service", Name="W32Time")),
                                    _response(), SINK3)
    f["cancel"] = wmi.call("IWbemServices", 4, _request(
        lambda w: w.interface_pointer(_objref("IWbemObjectSink", SINK2, CLIENT))), _response(), SVC2)
    f["exec_method"] = wmi.call("IWbemServices", 24, _request(
        lambda w: (w.bstr("Win32_Process"), w.bstr("Create"), w.i32(0), w.interface_pointer(None),
                   w.interface_pointer(None), w.referent(False), w.referent(False))),
        _response(lambda w: (w.referent(False), w.referent(False))), SVC2)
    wire.close()
    analysis_calls = _calls(path)
    return analysis_calls, {k: _by_frame(analysis_calls)[v] for k, v in f.items()}


def test_async_session_is_read_back_as_built(async_session):
    calls, by = async_session
    assert [c.method for c in calls] == [
        "NTLMLogin", "OpenNamespace", "GetResultServices", "CreateObjectStub", "RemQueryInterface",
        "ExecQueryAsync", "ExecNotificationQueryAsync", "ExecQuery", "NextAsync", "Indicate", "SetStatus",
        "SetStatus", "Indicate", "Indicate", "CancelAsyncCall", "ExecMethod"]
    assert not [e for c in calls for e in c.errors]


def test_semisynchronous_open_namespace_names_the_new_services(async_session):
    _, by = async_session
    assert by["login"].operation["namespace"] == "\\\\SRV01\\root"
    open_ns = by["open"].operation
    assert (open_ns["kind"], open_ns["role"], open_ns["namespace"]) == ("OpenNamespace", "origin", "\\\\SRV01\\root")
    assert open_ns["mode"] == "semisynchronous"
    assert by["services"].operation["id"] == open_ns["id"]
    assert by["services"].operation["role"] == "call-result"
    # the IWbemServices GetResultServices returned is the opened namespace
    for key in ("query", "events", "enum_query", "exec_method"):
        assert by[key].operation["namespace"] == "\\\\SRV01\\root\\cimv2"


def test_sink_callbacks_on_reverse_connection_join_the_async_call(async_session):
    _, by = async_session
    query = by["query"].operation
    assert (query["kind"], query["role"], query["mode"]) == ("ExecQueryAsync", "origin", "asynchronous")
    for key in ("indicate1", "status1", "forwarded"):
        c = by[key]
        assert c.operation["id"] == query["id"], key
        assert c.operation["role"] == "sink-callback"
        assert c.conn != by["query"].conn
    # the callbacks travel from the server to the client: the reverse connection
    assert by["indicate1"].client[0] == SERVER and by["indicate1"].server == (CLIENT, 49800)
    assert by["forwarded"].client[0] == by["forwarded"].server[0] == CLIENT
    # the stub was made by its own call; its callbacks still reach the query
    assert by["stub"].operation["kind"] == "CreateObjectStub"
    events = by["events"].operation
    assert by["event"].operation["id"] == events["id"] and by["event"].operation["role"] == "sink-callback"
    assert (by["cancel"].operation["id"], by["cancel"].operation["role"]) == (events["id"], "cancel")
    enum = by["enum_query"].operation
    assert enum["mode"] == "semisynchronous"                   # lFlags 0x30 as the WMI layer decoded it
    assert by["exec_method"].operation["mode"] == "synchronous"
    assert by["next_async"].operation["id"] == enum["id"] and by["next_async"].operation["role"] == "enumerator"
    assert by["next_indicate"].operation["id"] == enum["id"]
    assert by["exec_method"].operation["kind"] == "ExecMethod"
    ids = {by[k].operation["id"] for k in ("query", "events", "enum_query", "exec_method", "open", "login")}
    assert len(ids) == 6


def test_sink_state_new_style_and_class_cache(async_session):
    _, by = async_session
    by = {k: dataclasses.replace(c, operation=None) for k, c in by.items()}
    ops = Operations()
    for c in sorted(by.values(), key=lambda c: c.req_frames[1]):
        ops.observe(c)
    assert ops.is_new_style(by["status1"])          # the first Indicate returned WBEM_S_NEW_STYLE
    assert not ops.is_new_style(by["event"])
    assert ops.class_cache(by["indicate1"]) is ops.class_cache(by["status1"])
    assert ops.class_cache(by["indicate1"]) is not ops.class_cache(by["event"])
    # login, OpenNamespace, CreateObjectStub, the three queries, ExecMethod
    assert ops.count == 7


# ---------------------------------------------------------------------------------------
# bounds and hostile input

def _bare_call(i: int, **kw) -> Call:
    c = Call(conn=0, call_id=i, client=("10.0.0.1", 50000), server=("10.0.0.2", 135), **kw)
    return c


def test_state_is_bounded():
    ops = Operations(max_objects=16, max_pairs=4, max_caches=8)
    for i in range(500):
        enum_ipid = _ipid(0x1000 + i)
        c = _bare_call(i, interface="IWbemServices", method="ExecQuery", ipid=SVC, req_frames=(i, i),
                       decoded={"request": {}, "response": {"objrefs": [
                           {"kind": "standard", "interface": "IEnumWbemClassObject", "std": {"ipid": enum_ipid}}]}})
        ops.observe(c)
        n = _bare_call(i, interface="IEnumWbemClassObject", method="Next", ipid=enum_ipid)
        ops.observe(n)
        assert n.operation["id"] == c.operation["id"]
        ops.class_cache(n)
    for i in range(20):
        ops.observe(Call(conn=1, call_id=i, client=(f"10.1.{i}.1", 1), server=("10.9.9.9", 2),
                         interface="IWbemServices", method="GetObject", ipid=SVC))
    assert len(ops._pairs) == 4
    assert all(len(st.objects) <= 16 and len(st.caches or ()) <= 8 for st in ops._pairs.values())


@pytest.mark.parametrize("decoded", [
    {"request": {"objrefs": [{"std": {}}, {"std": None}, {}]}, "response": {"objrefs": None}},
    {"request": {"params": [{"name": "lFlags", "value": "x"}, {}]}, "response": {"return": {"value": None}}},
    {"request": {"ipid": SVC, "interfaces": [None, 5]}, "response": {"results": [{"hresult": None}, {}]}},
    {"request": {"interface_refs": [{}]}, "response": {}},
    {"request": {"params_offset": 9999},
     "response": {"params": [{"name": "pInfo", "value": [1, {"m_lCancelId": "a"}], "object": {}}]}},
    {"request": {"params": [{"name": "aplIds", "value": [{}, None, "x", 7]},
                            {"name": "apReconnectInfo", "value": [{"m_pwcsPath": 3}]}]},
     "response": {"params": [{"name": "apReconnectResults", "value": {"m_lId": []}}]}},
])
@pytest.mark.parametrize("target", [
    ("IWbemServices", "ExecQueryAsync"), ("IRemUnknown2", "RemQueryInterface"), ("IRemUnknown", "RemRelease"),
    ("IWbemObjectSink", "SetStatus"), ("IWbemLevel1Login", "NTLMLogin"),
    ("IWbemRefreshingServices", "AddObjectToRefresher"), ("IWbemRefreshingServices", "ReconnectRemoteRefresher"),
    ("IWbemRemoteRefresher", "StopRefreshing"), ("IWbemUnsecuredApartment", "CreateSinkStub"),
    ("IWbemBackupRestore", "Backup"),
])
def test_odd_decoded_data_never_raises(decoded, target):
    ops = Operations()
    for ipid in (None, SVC, SVC):
        c = _bare_call(1, interface=target[0], method=target[1], ipid=ipid, decoded=decoded, req_stub=b"\x05" * 7)
        ops.observe(c)
        assert not c.errors
        assert c.operation is None or c.operation["id"].startswith("op-")
    assert ops.refresher_template(c, 1) is None
    assert len(ops.class_cache(c)) == 0


# ---------------------------------------------------------------------------------------
# refreshers (stubs written by the WMI layer's own encoder, from the interface table)

REFRESHER_ID = {"m_szMachineName": "WKS01", "m_dwProcessId": 4242,
                "m_guidRefresherId": "6b3c8f10-2a4d-4e6f-9a1b-2c3d4e5f6a7b"}
SINKQ = _ipid(0x31)


def _processor(name: str, busy: int) -> wmio.WmiInstance:
    cls = wmio.new_class("Win32_PerfRawData_PerfOS_Processor",
                         properties=[("Name", "string", None, [("key", True)]), ("PercentProcessorTime", "uint64")])
    return wmio.new_instance(cls, {"Name": name, "PercentProcessorTime": busy})


def _process(name: str, pid: int) -> wmio.WmiInstance:
    cls = wmio.new_class("Win32_PerfFormattedData_PerfProc_Process",
                         properties=[("Name", "string", None, [("key", True)]), ("IDProcess", "uint32")])
    return wmio.new_instance(cls, {"Name": name, "IDProcess": pid})


@pytest.fixture(scope="module")
def refresher_session(tmp_path_factory):
    """NTLMLogin, RemQueryInterface for IWbemRefreshingServices, AddObjectToRefresher,
    AddEnumToRefresher, GetRemoteRefresher, RemoteRefresh, StopRefreshing,
    ReconnectRemoteRefresher, RemoteRefresh again; QueryObjectSink and an Indicate to it."""
    from wmiscope.dissectors import wmi
    from wmiscope.spec import interfaces as table
    from wmiscope.formats.refresher import RefreshedObject

    path = tmp_path_factory.mktemp("ops") / "refresher.pcap"
    wire = Wire(path)
    c = wire.connect((CLIENT, 50020), (SERVER, 49700),
                     ["IWbemLevel1Login", "IWbemServices", "IRemUnknown2", "IWbemRefreshingServices",
                      "IWbemRemoteRefresher", "IWbemObjectSink"])
    f = {}

    def call(iface, method, values, out=None, ipid=None, hresult=0):
        opnum = next(m["opnum"] for m in table.methods_of(IID[iface]).values() if m["name"] == method)
        return c.call(iface, opnum, wmi.encode_request(iface, method, values, cid=CID),
                      wmi.encode_response(iface, method, out or {}, hresult), ipid)

    f["login"] = call("IWbemLevel1Login", "NTLMLogin",
                      {"wszNetworkResource": "\\\\SRV01\\root\\cimv2", "wszPreferredLocale": None, "lFlags": 0,
                       "pCtx": None}, {"ppNamespace": _objref("IWbemServices", SVC, SERVER)}, LOGIN)
    f["qi"] = c.call("IRemUnknown2", 3, *_rem_qi(SVC, "IWbemRefreshingServices", REFRESHING), _ipid(0x40))
    info = lambda cancel_id, template: {  # noqa: E731
        "m_lType": 3, "m_lCancelId": cancel_id,
        "m_Info": {"m_Remote": {"m_pRefresher": _objref("IWbemRemoteRefresher", REMOTE_REFRESHER, SERVER),
                                "m_pTemplate": template, "m_Guid": "0f0e0d0c-0b0a-0908-0706-050403020100"}}}
    total = 'Win32_PerfRawData_PerfOS_Processor.Name="_Total"'
    common = {"pRefresherId": REFRESHER_ID, "lFlags": 0, "pContext": None, "dwClientRefrVersion": 2}
    f["add_object"] = call("IWbemRefreshingServices", "AddObjectToRefresher", {**common, "wszPath": total},
                           {"pInfo": info(7, _processor("_Total", 0)), "pdwSvrRefrVersion": 1}, REFRESHING)
    f["add_enum"] = call("IWbemRefreshingServices", "AddEnumToRefresher",
                         {**common, "wszClass": "Win32_PerfFormattedData_PerfProc_Process"},
                         {"pInfo": info(8, _process("", 0)), "pdwSvrRefrVersion": 1}, REFRESHING)
    f["get_remote"] = call("IWbemRefreshingServices", "GetRemoteRefresher",
                           {"pRefresherId": REFRESHER_ID, "lFlags": 0, "dwClientRefrVersion": 2},
                           {"ppRemRefresher": _objref("IWbemRemoteRefresher", REMOTE_REFRESHER, SERVER),
                            "pGuid": "0f0e0d0c-0b0a-0908-0706-050403020100", "pdwSvrRefrVersion": 1}, REFRESHING)
    refreshed = [RefreshedObject.of(7, _processor("_Total", 81234567)),
                 RefreshedObject.of(8, [_process("lsass", 640), _process("svchost", 1012)])]
    f["refresh1"] = call("IWbemRemoteRefresher", "RemoteRefresh", {"lFlags": 0},
                         {"plNumObjects": 2, "paObjects": refreshed}, REMOTE_REFRESHER)
    f["stop"] = call("IWbemRemoteRefresher", "StopRefreshing", {"lNumIds": 1, "aplIds": [8], "lFlags": 0},
                     {}, REMOTE_REFRESHER)
    f["reconnect"] = call("IWbemRefreshingServices", "ReconnectRemoteRefresher",
                          {"pRefresherId": REFRESHER_ID, "lFlags": 0, "lNumObjects": 1, "dwClientRefrVersion": 2,
                           "apReconnectInfo": [{"m_lType": 0, "m_pwcsPath": total}],
                           "apReconnectResults": [{"m_lId": 0, "m_hr": 0}]},
                          {"apReconnectResults": [{"m_lId": 9, "m_hr": 0}], "pdwSvrRefrVersion": 1}, REFRESHING)
    refreshed2 = [RefreshedObject.of(9, _processor("_Total", 99000000)),
                  RefreshedObject.of(8, [_process("lsass", 640)])]
    f["refresh2"] = call("IWbemRemoteRefresher", "RemoteRefresh", {"lFlags": 0},
                         {"plNumObjects": 2, "paObjects": refreshed2}, REMOTE_REFRESHER)
    f["query_sink"] = call("IWbemServices", "QueryObjectSink", {"lFlags": 0},
                           {"ppResponseHandler": _objref("IWbemObjectSink", SINKQ, SERVER)}, SVC)
    f["push"] = call("IWbemObjectSink", "Indicate", {"lObjectCount": 1, "apObjArray": [_process("evil", 6666)]},
                     {}, SINKQ)
    wire.close()
    calls = _calls(path)
    return calls, {k: _by_frame(calls)[v] for k, v in f.items()}


def _refreshed(call) -> list:
    p = next(p for p in call.decoded["response"]["params"] if p["name"] == "paObjects")
    return p["object"]


def test_refresher_calls_are_one_operation(refresher_session):
    calls, by = refresher_session
    assert not [e for c in calls for e in c.errors]
    op = by["add_object"].operation
    assert (op["kind"], op["role"], op["namespace"]) == ("Refresher", "refresher", "\\\\SRV01\\root\\cimv2")
    for key in ("add_enum", "get_remote", "refresh1", "stop", "reconnect", "refresh2"):
        assert by[key].operation["id"] == op["id"], key
        assert by[key].operation["role"] == "refresher"
    assert by["refresh1"].interface == "IWbemRemoteRefresher"


def test_remote_refresh_decoded_against_templates_by_request_id(refresher_session):
    _, by = refresher_session
    total, processes = _refreshed(by["refresh1"])
    assert (total.class_name, total.get("Name"), total.get("PercentProcessorTime")) == (
        "Win32_PerfRawData_PerfOS_Processor", "_Total", 81234567)
    assert [(p.get("Name"), p.get("IDProcess")) for p in processes] == [("lsass", 640), ("svchost", 1012)]
    # after StopRefreshing(8) request id 8 has no template; ReconnectRemoteRefresher gave the
    # _Total processor the id 9, and its template follows it by path
    total2, gone = _refreshed(by["refresh2"])
    assert total2.get("PercentProcessorTime") == 99000000
    assert gone is None
    assert any("m_lRequestId 8" in n for n in by["refresh2"].decoded["notes"])


def test_query_object_sink_calls_join_it(refresher_session):
    _, by = refresher_session
    op = by["query_sink"].operation
    assert (op["kind"], op["role"]) == ("QueryObjectSink", "origin")
    assert (by["push"].operation["id"], by["push"].operation["role"]) == (op["id"], "sink-callback")


def test_refresher_template_lookup_directly(refresher_session):
    _, by = refresher_session
    ops = Operations()
    for key in ("login", "qi", "add_object", "add_enum", "get_remote"):
        ops.observe(dataclasses.replace(by[key], operation=None))
    assert ops.refresher_template(by["refresh1"], 7).get("Name") == "_Total"
    assert ops.refresher_template(by["refresh1"], 8).class_name == "Win32_PerfFormattedData_PerfProc_Process"
    assert ops.refresher_template(by["refresh1"], 99) is None
    # an IWbemRemoteRefresher never seen: the refresher between the same hosts that knows the id
    stranger = dataclasses.replace(by["refresh1"], ipid=_ipid(0x99))
    assert ops.refresher_template(stranger, 7).get("Name") == "_Total"


# ---------------------------------------------------------------------------------------
# the project's sample captures (pcaps/generate.py)

def _sample(name: str) -> tuple[Analysis, list[Call]]:
    path = tshark_util.PCAPS / name
    if not path.exists():
        pytest.skip(f"sample {name} not generated")
    analysis = Analysis()
    return analysis, [r for r in analysis.run(path) if type(r) is Call]


def _groups(calls) -> dict[str, list[Call]]:
    out: dict[str, list[Call]] = {}
    for c in calls:
        if c.operation:
            out.setdefault(c.operation["id"], []).append(c)
    return out


def test_sample_async_query_callbacks():
    analysis, calls = _sample("wmi-async-query-callbacks.pcap")
    query = next(c for c in calls if c.method == "ExecQueryAsync")
    group = _groups(calls)[query.operation["id"]]
    callbacks = [c for c in group if c.operation["role"] == "sink-callback"]
    assert [c.method for c in callbacks] == ["Indicate", "Indicate", "SetStatus"]
    # on the server's own connection to the client's object exporter
    assert all(c.conn != query.conn and c.client[0] == query.server[0] for c in callbacks)
    assert query.operation["namespace"] == "\\\\SRV-DC02\\root\\cimv2"
    # the first Indicate answered WBEM_S_NEW_STYLE: the second carries an ObjectArray whose
    # instances without class resolve through the sink's class cache
    assert analysis.operations.is_new_style(callbacks[1])
    array = next(p for p in callbacks[1].decoded["request"]["params"] if p["name"] == "apObjArray")
    objects = array["value"]["ObjectArray"]["objects"]
    assert objects[1]["bObjectType"] == "WBEMOBJECT_INSTANCE_NOCLASS" and objects[1]["class"] == "Win32_Process"
    assert len(analysis.operations.class_cache(callbacks[1])) == 1


def test_sample_refresher():
    analysis, calls = _sample("wmi-refresher.pcap")
    refresher = [c for c in calls if c.interface in ("IWbemRefreshingServices", "IWbemRemoteRefresher")]
    assert [c.method for c in refresher] == ["AddObjectToRefresher", "AddEnumToRefresher", "RemoteRefresh",
                                             "RemoteRefresh", "StopRefreshing"]
    assert len({c.operation["id"] for c in refresher}) == 1
    assert refresher[0].operation["namespace"] == "\\\\FILESRV01\\root\\cimv2"
    total, processes = _refreshed(refresher[3])
    assert (total.get("Name"), total.get("PercentProcessorTime")) == ("_Total", 833456700)
    assert {p.get("Name"): p.get("IDProcess") for p in processes} == {"svchost": 812, "lsass": 644}
    # StopRefreshing(1, 2) dropped both templates
    assert analysis.operations.refresher_template(refresher[3], 1) is None


def test_sample_semisynchronous_execmethod():
    _, calls = _sample("wmi-semisync-execmethod.pcap")
    method = next(c for c in calls if c.method == "ExecMethod")
    group = _groups(calls)[method.operation["id"]]
    assert [(c.method, c.operation["role"]) for c in group] == [
        ("ExecMethod", "origin"), ("GetCallStatus", "call-result"), ("GetResultObject", "call-result"),
        ("RemRelease", "release")]
    assert method.operation["mode"] == "semisynchronous"


@pytest.mark.parametrize("name, kinds", [
    ("spec-4.3.3.1-semisync-execquery-execmethod.pcap", ["Login", "ExecQuery", "ExecMethod", "ExecQuery"]),
    ("spec-4.3.3.2-semisync-put-delete-enum.pcap",
     ["Login", "PutInstance", "CreateInstanceEnum", "DeleteInstance", "CreateInstanceEnum"]),
])
def test_sample_spec_traces_group_like_the_spec(name, kinds):
    _, calls = _sample(name)
    groups = _groups(calls)
    assert [g[0].operation["kind"] for g in groups.values()] == kinds
    for g in groups.values():
        if g[0].operation["kind"] in ("ExecQuery", "CreateInstanceEnum"):
            assert [c.method for c in g][-3:] == ["RemQueryInterface", "GetSmartEnum", "Next"]
            assert g[0].operation["mode"] == "semisynchronous"


def test_what_the_bounds_give_up_is_counted():
    ops = Operations(max_objects=16, max_pairs=4)
    for i in range(20):
        ops.observe(Call(conn=1, call_id=i, client=(f"10.1.{i}.1", 1), server=("10.9.9.9", 2),
                         interface="IWbemServices", method="GetObject", ipid=SVC))
    assert len(ops._pairs) == 4 and ops.forgotten["pairs"] == 16
