"""The project's sample captures: which WMI session each one is, scenario by scenario.

    python -m wmiscope.synth                 # all samples, into pcaps/ of the source tree
    python -m wmiscope.synth OUTDIR
    python -m wmiscope.synth --secrets DIR   # the test-only keys of the sealed samples
    (pcaps/generate.py is the same entry point, kept where the samples are)

Each sample is a WMI session as Windows puts it on the wire, with stubs written by our
NDR writer and objects by our MS-WMIO builder. This module holds the scenarios, what each
session does; the builders they use are the package's other modules (wire: TCP and
DCE/RPC framing; dcom_session: activation, associations, the login sequence; sealing: NTLM
and Kerberos at packet privacy, with the TEST-ONLY sample credentials; wmi_objects: the
classes and instances). The package is left out of the wheel: it exists for the samples
and the tests, and its credentials must never ship. Tests check every sample against
independent implementations: tshark must read each PDU as we do, impacket must decode the
objects we encoded. Output is deterministic (fixed clock, fixed UUIDs, fixed "random" keys),
so a regenerated file is byte-identical and `git diff` shows real changes only.

The spec-*.pcap samples carry the calls and values of the MS-WMI section 4 traces (hosts,
causality ids, IPIDs, proxy GUIDs, flags, object sizes; tests/test_spec_traces.py compares our
transcript of them with the spec's text); wmi-async-query-callbacks, wmi-semisync-execmethod,
wmi-refresher and wmi-persistence-subscription show what the traces do not. Each of these
sessions starts with the DCOM activation on port 135 (see DcomSession). The *-sealed
samples are wmi-process-create at packet privacy (NTLMv2, Kerberos AES256).
"""

from __future__ import annotations

from pathlib import Path

from wmiscope import synth
from wmiscope.dissectors import wmi
from wmiscope.dissectors.orpc import write_orpcthis
from wmiscope.formats.objref import OBJREF_STANDARD, build_dualstringarray, build_objref
from wmiscope.dissectors.ndr import NdrWriter
from wmiscope.formats import wmio
from wmiscope.formats.object_array import PacketType
from wmiscope.formats.refresher import RefreshedObject
from wmiscope.spec.wbem import value_of
from wmiscope.synth.dcom_session import (IWBEM_LEVEL1_LOGIN, IWBEM_SERVICES, NCACN_IP_TCP, Association, DcomSession,
                                         Host, call_method, fixed_ipid, iid_of, resolve_oxid2)
from wmiscope.synth.sealing import SAMPLE_SERVER_NAME, KerberosSealer, NtlmSealer, NtlmSigner
from wmiscope.synth.wmi_objects import (PROCESS_CLASS_ID, TESTWMI_CLASS_ID, command_line_event_consumer_class,
                                        event_filter_class, filter_to_consumer_binding_class, method_params,
                                        object_array, perf_raw_data_class, process_instance, sized_win32_process,
                                        terminate_params, testwmi, testwmi_class, win32_process_class)

# The tests reach these through pcaps/generate.py (GEN.SAMPLE_PASSWORD, GEN.crypto_ntlm,
# GEN.write_secrets...); main() writes the secrets on request.
from wmiscope.dissectors import crypto_ntlm  # noqa: F401
from wmiscope.synth.sealing import (RPC_C_AUTHN_GSS_KERBEROS, RPC_C_AUTHN_GSS_NEGOTIATE,  # noqa: F401
                                    SAMPLE_PASSWORD, SAMPLE_SERVICE_PASSWORD, sample_service_key, write_secrets)

IENUM_WBEM_CLASS_OBJECT = iid_of("IEnumWbemClassObject")
IWBEM_CALL_RESULT = iid_of("IWbemCallResult")
IWBEM_OBJECT_SINK = iid_of("IWbemObjectSink")
IWBEM_REFRESHING_SERVICES = iid_of("IWbemRefreshingServices")
IWBEM_REMOTE_REFRESHER = iid_of("IWbemRemoteRefresher")

WBEM_S_FALSE = value_of("WBEM_S_FALSE")
WBEM_S_NEW_STYLE = value_of("WBEM_S_NEW_STYLE")
WBEM_FLAG_RETURN_IMMEDIATELY = value_of("WBEM_FLAG_RETURN_IMMEDIATELY")
WBEM_FLAG_FORWARD_ONLY = value_of("WBEM_FLAG_FORWARD_ONLY")
WBEM_FLAG_SHALLOW = 0x1
WBEM_NO_WAIT = 0


# --------------------------------------------------------------------------
# wmi-process-create, in clear and sealed: one connection straight to the exporter

CLIENT = ("10.20.30.40", 50111)
SERVER = ("10.20.30.50", 49669)
SERVER_NAME = SAMPLE_SERVER_NAME        # the lab server the sealed variants authenticate to
LOGIN_IPID = "00008c00-1a5c-0000-4b1d-7e0a3c2f1a01"
SERVICES_IPID = "00009401-1a5c-0000-7a6e-2b9f51c3d402"
CAUSALITY = "5a6f0c3e-2b1d-4e8a-9c7b-0d1e2f3a4b5c"


def process_create(path: Path, security=None) -> None:
    """NTLMLogin to root\\cimv2, GetObject Win32_Process (a fragmented reply), ExecMethod Create.

    security: a sealing variant (see wmiscope.synth.sealing) that authenticates the first
    bind and seals every call; the calls and their stubs stay the same.
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
                                resolver=build_dualstringarray([(NCACN_IP_TCP, SERVER_NAME),
                                                                (NCACN_IP_TCP, SERVER[0])]))
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

        in_params, out_params = method_params(
            cls.get_method("Create"), {"CommandLine": "cmd.exe /c whoami > C:\\Windows\\Temp\\o.txt"},
            {"ProcessId": 4242, "ReturnValue": 0})
        cid = next(call)
        req = wmi.encode_request("IWbemServices", "ExecMethod", {
            "strObjectPath": "Win32_Process", "strMethodName": "Create", "lFlags": 0, "pCtx": None,
            "pInParams": in_params, "ppOutParams": wmi.REF_TO_NULL, "ppCallResult": None}, cid=CAUSALITY)
        resp = wmi.encode_response("IWbemServices", "ExecMethod", {"ppOutParams": out_params, "ppCallResult": None})
        exchange(synth.request(cid, 1, 24, req, object_uuid=SERVICES_IPID), synth.response(cid, 1, resp))
        tcp.close()


def process_create_ntlm_sealed(path: Path) -> None:
    """wmi-process-create sealed with NTLMv2 (ESS, key exchange), user WMILAB\\analyst."""
    process_create(path, NtlmSealer())


def process_create_kerberos_sealed(path: Path) -> None:
    """wmi-process-create sealed with Kerberos AES256 through SPNEGO, acceptor subkey, header signing."""
    process_create(path, KerberosSealer())


def process_create_ntlm_signed(path: Path) -> None:
    """wmi-process-create at packet integrity (level 5, stubs in clear, signed) with NTLMv2, WMILAB\\analyst."""
    process_create(path, NtlmSigner())


# --------------------------------------------------------------------------
# the MS-WMI section 4 traces: wbemtest on SAI-NAV009 and the server SAI-NAV009-2

SAI_CLIENT = Host("SAI-NAV009", "192.168.1.23")
SAI_SERVER = Host("SAI-NAV009-2", "192.168.1.24")
SAI_CIMV2 = (SAI_SERVER.name, "root\\cimv2")
SAI_MYTEST = (SAI_SERVER.name, "ROOT\\cimv2\\MyTest")
MYTEST_PATH = f"\\\\{SAI_SERVER.name}\\ROOT\\cimv2\\MyTest:TestWMI.x=10"
CALC_QUERY = "select * from win32_process where Name='calc.exe'"
# 2009-04-20, the days of the traces' Windows 7 / Server 2008 R2 builds
SPEC_EPOCH = 1_240_238_100.0


def calc_process(handle: int, parent: int, created: str, size: int) -> wmio.WmiInstance:
    """The calc.exe of 4.2.3.1 / 4.3.3.1, its ObjectArray `size` bytes: the BuffSize the trace prints."""
    return sized_win32_process({
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
        "WorkingSetSize": 8622080, "WriteOperationCount": 0, "WriteTransferCount": 0}, SAI_CIMV2, size)


def _calc_path(handle: int) -> str:
    return f"\\\\{SAI_SERVER.name}\\root\\cimv2:Win32_Process.Handle=\"{handle}\""


def _spec_session(pcap, clock, cid: str, *, pid: int = 0x06C4, login_ipid: str | None = None,
                  namespace: str = "root\\cimv2") -> tuple[DcomSession, str]:
    s = DcomSession(pcap, clock, SAI_CLIENT, SAI_SERVER, cid, pid=pid, login_ipid=login_ipid)
    return s, s.connect(6420, namespace, server_name=SAI_SERVER.name.lower())


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


def _get_call_status(s: DcomSession, ipid: str, timeout: int = 5000) -> None:
    s.call("IWbemCallResult", "GetCallStatus", ipid, {"lTimeout": timeout}, {"plStatus": 0})


def _semisync_call(s: DcomSession, services: str, method: str, request: dict, response: dict | None = None, *,
                   tag: str, timeout: int = 5000) -> str:
    """An IWbemServices call made semisynchronous by WBEM_FLAG_RETURN_IMMEDIATELY (MS-WMI
    3.1.1.1.2): the reply hands over an IWbemCallResult at once, and the client asks it for
    the call's status. Returns the IWbemCallResult's IPID."""
    result = s.new_ipid(tag)
    s.call("IWbemServices", method, services,
           {**request, "lFlags": WBEM_FLAG_RETURN_IMMEDIATELY, "pCtx": None, "ppCallResult": wmi.REF_TO_NULL},
           {**(response or {}), "ppCallResult": s.objref(IWBEM_CALL_RESULT, result)})
    _get_call_status(s, result, timeout)
    return result


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
        ins, outs = terminate_params(SAI_CIMV2)
        s.call("IWbemServices", "ExecMethod", services,
               {"strObjectPath": _calc_path(724), "strMethodName": "Terminate", "lFlags": 0, "pCtx": None,
                "pInParams": ins, "ppOutParams": None, "ppCallResult": None},
               {"ppOutParams": outs, "ppCallResult": None}, think=0.2)
        _enumerate(s, services, "ExecQuery", query, "0001f82e-06c4-0000-829f-784637ef2774",
                   "09efdda0-3e1e-40e2-b87a-f73895beaaca", WBEM_NO_WAIT, [], PROCESS_CLASS_ID)
        s.close()


def spec_sync_put_delete_enum(path: Path) -> None:
    """MS-WMI 4.2.3.2: PutInstance TestWMI (x=10, y=15), CreateInstanceEnum (two instances,
    410 bytes), PutInstance (x=10, y=20), DeleteInstance x=10, CreateInstanceEnum (307 bytes)."""
    clock = synth.Clock(now=SPEC_EPOCH + 7200)
    with synth.PcapWriter(path) as pcap:
        s, services = _spec_session(pcap, clock, "bd28b839-5d20-4435-9852-1fe794070a9c",
                                    namespace="root\\cimv2\\MyTest")
        cls = testwmi_class(SAI_MYTEST)
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
        ins, outs = terminate_params(SAI_CIMV2)
        result = _semisync_call(s, services, "ExecMethod",
                                {"strObjectPath": _calc_path(2680), "strMethodName": "Terminate",
                                 "pInParams": ins, "ppOutParams": None}, {"ppOutParams": None}, tag="callresult")
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
        cls = testwmi_class(SAI_MYTEST)
        result = _semisync_call(s, services, "PutInstance", {"pInst": testwmi(cls, 10, 15)}, tag="putresult")
        s.rem_release([result])
        flags = WBEM_FLAG_RETURN_IMMEDIATELY | WBEM_FLAG_FORWARD_ONLY | WBEM_FLAG_SHALLOW
        _enumerate(s, services, "CreateInstanceEnum", {"strSuperClass": "tESTWMI", "lFlags": flags},
                   "0003c027-06ec-0000-6584-686a50ea42dd", "0889a6fe-0430-433f-af18-708650793226", 5000,
                   [testwmi(cls, 3, 5), testwmi(cls, 10, 15)], TESTWMI_CLASS_ID)
        _semisync_call(s, services, "DeleteInstance", {"strObjectPath": MYTEST_PATH}, tag="deleteresult")
        _enumerate(s, services, "CreateInstanceEnum", {"strSuperClass": "TESTWMI", "lFlags": flags},
                   "0001a01d-06ec-0000-2b72-904611092fbe", "89ac6869-f7cb-4e5a-973c-0c8e84961240", 5000,
                   [testwmi(cls, 3, 5)], TESTWMI_CLASS_ID)
        s.close()


# --------------------------------------------------------------------------
# beyond the traces: asynchronous, semisynchronous, refresher, persistence

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
        services = s.connect(5012, "root\\cimv2")
        client_oxid, client_exporter = 0x1D2C3B4A59687706, 50301
        sink_ipid = fixed_ipid(0x3004, 0x1394, "async sink")
        sink = build_objref(IWBEM_OBJECT_SINK, OBJREF_STANDARD, ipid=sink_ipid, oxid=client_oxid,
                            oid=0x2B3C4D5E00000011, resolver=WKS.resolver())
        s.call("IWbemServices", "ExecQueryAsync", services,
               {"strQueryLanguage": "WQL", "strQuery": "SELECT * FROM Win32_Process WHERE Name LIKE 'power%'",
                "lFlags": 0, "pCtx": None, "pResponseHandler": sink})
        resolve_oxid2(pcap, clock, DC, WKS, client_oxid, client_exporter,
                      fixed_ipid(0xC000, 0x1394, "client remunknown"), 49722)
        back = Association(pcap, clock, (DC.ip, 49723), (WKS.ip, client_exporter), IWBEM_OBJECT_SINK)
        cls = win32_process_class()
        deco = (DC.name, "root\\cimv2")
        procs = [process_instance(cls, deco, 3920 + 8 * i, "powershell.exe", cmd, 2760)
                 for i, cmd in enumerate(("powershell.exe -NoProfile", "powershell.exe -ExecutionPolicy Bypass",
                                          "powershell.exe -EncodedCommand ZwBlAHQALQBkAGEAdABlAA==", None))]
        server_cid = "c7d1a9e4-3b52-4f08-9e6a-51b2c3d4e5f6"

        def sink_call(method: str, request, hresult: int = 0) -> None:
            call_method(back, server_cid, "IWbemObjectSink", method, sink_ipid, request, {}, hresult)

        sink_call("Indicate", {"lObjectCount": 1, "apObjArray": procs[:1]}, WBEM_S_NEW_STYLE)
        # MS-WMI shows no NDR framing for the optimized Indicate: ours sends lObjectCount and the
        # ObjectArray as a conformant byte array in place of the array of interface pointers.
        packet = object_array(procs[1:], [PROCESS_CLASS_ID], PacketType.INDICATE)
        w = NdrWriter()
        write_orpcthis(w, server_cid)
        w.i32(len(procs) - 1), w.conformant_bytes(packet)
        sink_call("Indicate", w.getvalue())
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
        services = s.connect(7788, "root\\cimv2", "en-GB,en")
        ins, outs = method_params(win32_process_class().get_method("Create"),
                                  {"CommandLine": "notepad.exe C:\\Users\\Public\\readme.txt",
                                   "CurrentDirectory": "C:\\Users\\Public"},
                                  {"ProcessId": 6120, "ReturnValue": 0})
        result = _semisync_call(s, services, "ExecMethod",
                                {"strObjectPath": "Win32_Process", "strMethodName": "Create", "pInParams": ins,
                                 "ppOutParams": None}, {"ppOutParams": None}, tag="create result", timeout=-1)
        s.call("IWbemCallResult", "GetResultObject", result, {"lTimeout": -1}, {"ppResultObject": outs}, think=0.05)
        s.rem_release([result])
        s.close()


def refresher_session(path: Path) -> None:
    """A refresher (MS-WMI 4.6, 4.7): IWbemRefreshingServices by RemQueryInterface on
    IWbemServices, AddObjectToRefresher and AddEnumToRefresher (each returning an
    IWbemRemoteRefresher and a template), two RemoteRefresh calls with WBEM_INSTANCE_BLOBs,
    StopRefreshing."""
    clock = synth.Clock(now=1_700_300_000.0)
    with synth.PcapWriter(path) as pcap:
        s = DcomSession(pcap, clock, ADMIN, FILES, "3e4f5a6b-7c8d-4e9f-a0b1-c2d3e4f5a6b7", pid=0x0A48,
                        client_port=51110, exporter=49668)
        services = s.connect(4412, "root\\cimv2", "en-GB,en")
        refreshing = s.rem_qi(services, IWBEM_REFRESHING_SERVICES)
        deco = (FILES.name, "root\\cimv2")
        cpu_cls = perf_raw_data_class("Win32_PerfRawData_PerfOS_Processor",
                                      [("PercentProcessorTime", "uint64"), ("PercentUserTime", "uint64"),
                                       ("InterruptsPersec", "uint32"), ("Timestamp_Sys100NS", "uint64")], deco)
        proc_cls = perf_raw_data_class("Win32_PerfRawData_PerfProc_Process",
                                       [("IDProcess", "uint32"), ("WorkingSet", "uint64"),
                                        ("PercentProcessorTime", "uint64"), ("HandleCount", "uint32")], deco)

        def total(busy: int, user: int, interrupts: int, timestamp: int) -> wmio.WmiInstance:
            return wmio.new_instance(cpu_cls, {"Name": "_Total", "PercentProcessorTime": busy,
                                               "PercentUserTime": user, "InterruptsPersec": interrupts,
                                               "Timestamp_Sys100NS": timestamp}, decoration=deco)

        def proc(name: str, pid: int, working_set: int, busy: int, handles: int) -> wmio.WmiInstance:
            return wmio.new_instance(proc_cls, {"Name": name, "IDProcess": pid, "WorkingSet": working_set,
                                                "PercentProcessorTime": busy, "HandleCount": handles},
                                     decoration=deco)

        refresher_id = {"m_szMachineName": ADMIN.name, "m_dwProcessId": 4412,
                        "m_guidRefresherId": "5d6e7f80-91a2-4b3c-8d4e-5f6071829304"}
        remote = s.new_ipid("remote refresher")

        def info(template, cancel: int) -> dict:
            return {"m_lType": 3, "m_Info": {"m_Remote": {"m_pRefresher": s.objref(IWBEM_REMOTE_REFRESHER, remote),
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
        services = s.connect(2960, "root\\subscription")
        deco = (DC01.name, "ROOT\\subscription")
        creator = [1, 5, 0, 0, 0, 0, 0, 5, 21, 0, 0, 0, 0x5A, 0x3C, 0x1F, 0x2E, 0x8B, 0x44, 0x19, 0x6D,
                   0xE2, 0x31, 0x70, 0x0B, 0xF4, 0x01, 0x00, 0x00]
        subscription = [
            (event_filter_class(deco), {
                "Name": "SysUpdateFilter", "EventNamespace": "root\\cimv2", "QueryLanguage": "WQL",
                "Query": "SELECT * FROM __InstanceModificationEvent WITHIN 60 WHERE TargetInstance ISA "
                         "'Win32_PerfFormattedData_PerfOS_System' AND TargetInstance.SystemUpTime >= 240"}),
            (command_line_event_consumer_class(deco), {
                "Name": "SysUpdateConsumer", "RunInteractively": False,
                "CommandLineTemplate": "cmd.exe /c echo wmi-persistence-test > C:\\Windows\\Temp\\sysupdate.log"}),
            (filter_to_consumer_binding_class(deco), {
                "Filter": '__EventFilter.Name="SysUpdateFilter"',
                "Consumer": 'CommandLineEventConsumer.Name="SysUpdateConsumer"', "DeliverSynchronously": False}),
        ]
        for cls, values in subscription:
            inst = wmio.new_instance(cls, {**values, "CreatorSID": creator}, decoration=deco)
            s.call("IWbemServices", "GetObject", services,
                   {"strObjectPath": cls.name, "lFlags": 0, "pCtx": None, "ppObject": wmi.REF_TO_NULL,
                    "ppCallResult": None}, {"ppObject": cls, "ppCallResult": None})
            s.call("IWbemServices", "PutInstance", services,
                   {"pInst": inst, "lFlags": 0, "pCtx": None, "ppCallResult": None}, {"ppCallResult": None})
        s.close()


def process_create_vxlan_fragments(path: Path) -> None:
    """wmi-process-create.pcap as an AWS VPC Traffic Mirroring sensor delivers it: the
    packets fragmented (576-octet MTU, fragments in reverse order, one repeated) inside
    VXLAN (VNI 4242) from 192.0.2.10 to 192.0.2.20."""
    from wmiscope.synth import sensor

    plain = path.with_suffix(".tmp")
    process_create(plain)
    try:
        sensor.transform_capture(plain, path, sensor.fragment(576, order="reverse", duplicate=True),
                                 sensor.vxlan(4242))
    finally:
        plain.unlink()


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
    "wmi-process-create-ntlm-signed.pcap": process_create_ntlm_signed,
    "wmi-process-create-vxlan-fragments.pcap": process_create_vxlan_fragments,
}


# pcaps/ of the source tree: where the samples are kept
PCAPS = Path(__file__).resolve().parents[2] / "pcaps"


def main(argv: list[str]) -> int:
    if len(argv) > 2 and argv[1] == "--secrets":
        for path in write_secrets(Path(argv[2])).values():
            print(path)
        return 0
    out = Path(argv[1]) if len(argv) > 1 else PCAPS
    out.mkdir(parents=True, exist_ok=True)
    for name, make in SAMPLES.items():
        make(out / name)
        print(out / name)
    return 0
