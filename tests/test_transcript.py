"""The transcript (dissectors/transcript.py, `wmiscope transcript`) on real captures and our samples."""

from __future__ import annotations

import io
import re
import struct
from contextlib import redirect_stdout
from functools import lru_cache

import pytest

from tshark_util import CAPTURES, PCAPS
from wmiscope.cli import main
from wmiscope.dissectors.dcom import DcomDecoder
from wmiscope.dissectors.ipid_registry import IpidRegistry
from wmiscope.dissectors.pipeline import Analysis, analyse
from wmiscope.dissectors.records import Call
from wmiscope.dissectors.transcript import TranscriptRenderer, display_name, render_call
from wmiscope.dissectors.wmi import WmiDecoder

LM = CAPTURES / "LM_WMI_ProcessCallCreate.pcapng"
WMIEXEC = CAPTURES / "impacket_wmiexec.pcapng"


@lru_cache(maxsize=None)
def text(path, **options) -> str:
    analysis = Analysis(want_pdus=options.get("all", False))
    return "\n".join(TranscriptRenderer(**options).render(analysis.run(path)))


def blocks(transcript: str, summary: str) -> list[list[str]]:
    """The lines of each message whose summary line starts with `summary`."""
    lines = transcript.splitlines()
    out = []
    for i, line in enumerate(lines):
        if line[:2] in ("- ", "  ") and line[2:].startswith(summary):
            j = next((k for k in range(i + 1, len(lines)) if not lines[k].strip()), len(lines))
            out.append(lines[i:j])
    return out


def block(transcript: str, summary: str) -> list[str]:
    return blocks(transcript, summary)[0]


# ---------------------------------------------------------------------------------------
# names by rule

@pytest.mark.parametrize("idl, shown", [
    ("wszClientMachine", "ClientMachine"), ("lClientProcId", "ClientProcId"), ("lReserved", "Reserved"),
    ("reserved1", "Reserved1"), ("LocaleVersion", "LocaleVersion"), ("wszNetworkResource", "NetworkResource"),
    ("lFlags", "Flags"), ("pCtx", "Ctx"), ("ppNamespace", "Namespace"), ("strQueryLanguage", "StrQueryLanguage"),
    ("ppEnum", "Enum"), ("ppSmartEnum", "SmartEnum"), ("lTimeout", "Timeout"), ("uCount", "UCount"),
    ("puReturned", "PuReturned"), ("pdwBuffSize", "BuffSize"), ("pInParams", "InParams"),
    ("ppOutParams", "OutParams"), ("ppCallResult", "CallResult"), ("pInst", "Inst"), ("plStatus", "Status"),
    ("ppResultObject", "ResultObject"),
    # the three the traces spell otherwise
    ("proxyGUID", "proxyGUID"), ("strSuperClass", "StrFilter"), ("pBuffer", "BufferPtrSize"),
])
def test_field_names_follow_the_traces(idl, shown):
    assert display_name(idl) == shown


# ---------------------------------------------------------------------------------------
# real captures

def test_lm_capture_login_in_clear():
    t = text(LM, frames=True)
    assert block(t, "WMI: IWbemLoginClientID:SetClientInfo Request") == [
        "- WMI: IWbemLoginClientID:SetClientInfo Request, ClientMachine=02694W-WIN10 ClientProcId=3836 Reserved=0"
        " [op-1 Login] [frame 39]",
        "+ ClientMachine: 02694W-WIN10", "+ Pad: 2 Bytes", "  ClientProcId: 3836 (0xEFC)", "  Reserved: 0 (0x0)"]
    login = block(t, "WMI: IWbemLevel1Login:NTLMLogin Request")
    assert login[0].startswith("- WMI: IWbemLevel1Login:NTLMLogin Request, NetworkResource=\\\\172.16.66.36\\ROOT"
                               "\\CIMV2 PreferredLocale=ms_409,en-US,en Flags=0")
    assert login[0].endswith("[frame 45]")
    assert "+ NetworkResource: \\\\172.16.66.36\\ROOT\\CIMV2" in login and "+ Ctx: NULL" in login
    reply = block(t, "WMI: IWbemLevel1Login:NTLMLogin Response")
    assert reply[1] == "+ Namespace: OBJREFSTANDARD - {9556DC99-828C-11CF-A37E-00AA003240C7}"
    assert "Bindings: ncacn_ip_tcp:01566s-win16-ir, ncacn_ip_tcp:172.16.66.36" in reply[3]


def test_lm_capture_sealed_calls_are_named_and_marked_encrypted():
    t = text(LM, frames=True)
    get = block(t, "WMI: IWbemServices:GetObject Request")
    assert get == ["- WMI: IWbemServices:GetObject Request [op-2 GetObject] [frame 52]",
                   "  (encrypted: 148 bytes of stub sealed with NTLMSSP/privacy)"]
    reply = block(t, "WMI: IWbemServices:GetObject Response")
    assert reply[0].endswith("[frames 54-120]") and "79068 bytes" in reply[1]
    assert block(t, "WMI: IWbemServices:ExecMethod Request")[1] == \
        "  (encrypted: 5360 bytes of stub sealed with NTLMSSP/privacy)"
    assert "! " not in t


def test_wmiexec_class_under_getobject_and_the_command_line():
    t = text(WMIEXEC)
    reply = block(t, "WMI: IWbemServices:GetObject Response")
    assert reply[1] == "+ Object: OBJREFCUSTOM - {DC12A681-737F-11CF-884D-00AA004B2E24}"
    assert reply[2:5] == ["    Class Win32_Process : CIM_Process", "    Path: \\\\WIN-KCBVCO95HFV\\ROOT\\CIMV2:Win32_Process",
                          "    Keys: Handle"]
    assert any(l.startswith("    Methods: Create(CommandLine, CurrentDirectory, ProcessStartupInformation)")
               for l in reply)
    create = next(b for b in blocks(t, "WMI: IWbemServices:ExecMethod Request") if any("whoami" in l for l in b))
    commands = [l for l in t.splitlines() if l.startswith("    CommandLine = ")]
    assert "    CommandLine = cmd.exe /Q /c whoami 1> \\\\127.0.0.1\\ADMIN$\\__1683291962.56 2>&1" in commands
    assert "  Flags: Unknown" in create and "+ StrMethodName: Create\\x00" in create   # impacket sends the NUL


def test_mof_prints_the_whole_class():
    t = text(WMIEXEC, mof=True)
    reply = block(t, "WMI: IWbemServices:GetObject Response")
    body = "\n".join(reply)
    assert "    class Win32_Process : CIM_Process" in body
    assert re.search(r"^\s+\[Constructor, Static.*\] uint32 Create\(\[in.*\] string CommandLine, ", body, re.M)
    assert len(reply) > 50          # every property of the class on its own line


def test_unknown_interfaces_and_gaps_do_not_stop_it():
    t = text(CAPTURES / "dcom_mmc20_application.pcapng")
    assert "! tcp: segment(s) not captured" in t
    # no bind seen: the call is named by what it shows, its context id and IPID, and its opnum
    assert re.search(r"^- DCOM: unknown interface \(context \d+, IPID \{[0-9A-F-]{36}\}\):Opnum \d+ Request, "
                     r"DCOM Version=5\.7", t, re.M)
    assert "WMI:" not in t


# ---------------------------------------------------------------------------------------
# malformed stubs: located error lines, the transcript goes on

def _calls(path) -> list[Call]:
    return [r for r in analyse(path)[0] if type(r) is Call]


def test_malformed_stub_gives_a_located_error_and_the_next_call_renders():
    calls = _calls(PCAPS / "spec-4.2.3.1-sync-execquery-execmethod.pcap")
    query = next(c for c in calls if c.method == "ExecQuery")
    stub = bytearray(query.req_stub)
    at = stub.index("select".encode("utf-16-le")) - 12      # the BSTR's maximum count
    struct.pack_into("<I", stub, at, 0x7FFFFFF0)
    bad = Call(conn=query.conn, call_id=query.call_id, client=query.client, server=query.server,
               ctx_id=query.ctx_id, interface_uuid=query.interface_uuid, opnum=query.opnum, ipid=query.ipid,
               req_frames=query.req_frames, req_stub=bytes(stub), req_stub_len=len(stub),
               resp_frames=query.resp_frames, resp_stub=query.resp_stub, resp_stub_len=query.resp_stub_len)
    registry = IpidRegistry()
    for c in calls[:calls.index(query)]:
        DcomDecoder(registry).decode_call(c)
    DcomDecoder(registry).decode_call(bad)
    WmiDecoder().decode_call(bad)
    lines = list(TranscriptRenderer().render([bad, calls[calls.index(query) + 1]]))
    errors = [l for l in lines if l.startswith("! wmi: ")]
    assert errors and re.search(r" at offset \d+$", errors[0])
    # the parameters after the damaged BSTR are not decoded, and say so
    assert lines[0].startswith("- WMI: IWbemServices:ExecQuery Request")
    assert any(l.startswith("+ Flags: (not decoded: ") for l in lines)
    assert "+ StrQueryLanguage: WQL" in lines                   # what came before the damage is shown
    assert any(l.startswith("- WMI: IWbemServices:ExecQuery Response") for l in lines)
    assert any(l.startswith("- DCOM: IRemUnknown2:RemQueryInterface Request") for l in lines)


def test_malformed_capture_through_the_command(tmp_path):
    data = bytearray((PCAPS / "spec-4.2.3.1-sync-execquery-execmethod.pcap").read_bytes())
    at = data.index("select".encode("utf-16-le")) - 4         # the first query's actual count
    struct.pack_into("<I", data, at, 0x00FFFFFF)
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(bytes(data))
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["transcript", str(bad), "--frames"]) == 0
    t = out.getvalue()
    assert re.search(r"^! wmi: .+ at offset \d+$", t, re.M)
    # the calls after the damaged one are all there
    assert t.count("- WMI: IWbemServices:ExecQuery Request") == 2
    assert "- WMI: IWbemServices:ExecMethod Response, ReturnValue=WBEM_S_NO_ERROR" in t
    assert t.rstrip().splitlines()[-1].startswith("14 calls (decoded 13, encrypted 0, unknown_interface 0, malformed 1)")


# ---------------------------------------------------------------------------------------
# our samples beyond the traces

def test_async_callbacks_on_the_reverse_connection():
    t = text(PCAPS / "wmi-async-query-callbacks.pcap")
    assert "- WMI: IWbemServices:ExecQueryAsync Request, Flags=0 [op-2 ExecQueryAsync]" in t
    first = block(t, "WMI: IWbemObjectSink:Indicate Request, ObjectCount=1")
    assert first[0].endswith("[op-2 ExecQueryAsync]")
    assert "        CommandLine = powershell.exe -NoProfile" in first
    assert "ReturnValue=WBEM_S_NEW_STYLE" in block(t, "WMI: IWbemObjectSink:Indicate Response")[0]
    optimized = block(t, "WMI: IWbemObjectSink:Indicate Request, ObjectCount=3")
    assert "+ ObjArray: ObjectArray" in optimized and "    INDICATE: 3 object(s)" in optimized
    assert "      CommandLine = powershell.exe -EncodedCommand ZwBlAHQALQBkAGEAdABlAA==" in optimized
    status = block(t, "WMI: IWbemObjectSink:SetStatus Request")
    assert "  Flags: WBEM_STATUS_COMPLETE - Indicates the end of the asynchronous operation." in status


def test_refresher_blobs_against_their_templates():
    t = text(PCAPS / "wmi-refresher.pcap")
    info = block(t, "WMI: IWbemRefreshingServices:AddObjectToRefresher Response")
    assert "      Type: WBEM_REFRESH_TYPE_REMOTE - m_Info contains a _WBEM_REFRESH_INFO_REMOTE structure." in info
    assert "            + Refresher: OBJREFSTANDARD - {F1E9C5B2-F59B-11D2-B362-00105A1F8177}" in info
    refresh = block(t, "WMI: IWbemRemoteRefresher:RemoteRefresh Response")
    assert "+ Objects: Pointer To 0x00020000, 2 Elements" in refresh
    assert "        PercentProcessorTime = 812345600" in refresh
    assert "          Path: \\\\FILESRV01\\root\\cimv2:Win32_PerfRawData_PerfProc_Process.Name=\"lsass\"" in refresh


def test_persistence_instances_under_putinstance():
    t = text(PCAPS / "wmi-persistence-subscription.pcap")
    puts = [l for l in t.splitlines() if l.startswith("    Path: \\\\DC01\\ROOT\\subscription:")]
    assert puts[-1] == ('    Path: \\\\DC01\\ROOT\\subscription:__FilterToConsumerBinding.Consumer='
                        '"CommandLineEventConsumer.Name=\\"SysUpdateConsumer\\"",'
                        'Filter="__EventFilter.Name=\\"SysUpdateFilter\\""')
    assert "    CommandLineTemplate = cmd.exe /c echo wmi-persistence-test > C:\\Windows\\Temp\\sysupdate.log" in t


def test_semisynchronous_execmethod():
    t = text(PCAPS / "wmi-semisync-execmethod.pcap")
    assert block(t, "WMI: IWbemCallResult:GetCallStatus Request")[1] == \
        "  Timeout: WBEM_INFINITE(Call blocks until objects are available.)"
    result = block(t, "WMI: IWbemCallResult:GetResultObject Response")
    assert "    ProcessId = 6120" in result and result[0].endswith("[op-2 ExecMethod]")


def test_all_shows_binds_and_the_dcom_layer():
    t = text(PCAPS / "spec-4.1.1-initialization.pcap", all=True, frames=True)
    assert "  MSRPC: bind, call 1, ctx 0 IRemoteSCMActivator [frame 4]" in t
    assert "  MSRPC: alter_context, call 3, ctx 1 IWbemLoginClientID [frame 18]" in t
    assert "+ DCOM: WMI protocol Request, DCOM Version=5.7 Causality Id={8E2416FE-0A3F-42BE-A9B0-F30624C94619}" in t


def test_render_call_alone():
    call = next(c for c in _calls(PCAPS / "spec-4.1.1-initialization.pcap") if c.method == "EstablishPosition")
    assert render_call(call, operations=False) == [
        "- WMI: IWbemLevel1Login:EstablishPosition Request, Reserved1=NULL Reserved2=0",
        "+ Reserved1: NULL", "  Pad: 0 Bytes", "  Reserved2: 0 (0x0)", "",
        "- WMI: IWbemLevel1Login:EstablishPosition Response, LocaleVersion=1 ReturnValue=WBEM_S_NO_ERROR",
        "  LocaleVersion: 1 (0x1)",
        "  ReturnValue: 0x00000000 - WBEM_S_NO_ERROR - Indicates a successful completion to the method call.", ""]
