"""Our transcript of the spec-trace samples against the traces printed in MS-WMI section 4.

pcaps/generate.py writes, for each of the sections 4.1.1, 4.2.3.1, 4.2.3.2, 4.3.3.1 and
4.3.3.2, a capture with the calls and values its trace shows (hosts, causality ids, IPIDs,
proxy GUIDs, queries, flags, object sizes). Here the expected messages are cut out of
/work/shared/spec/MS-WMI.txt itself, section by section: the code blocks of the section are
joined, the spec's line wrapping undone, whitespace normalized, the stream split into
messages at summary lines. Every message the spec prints must appear in our transcript, in
the same order, with the same lines (fields, values, order); our transcript may hold more
messages (calls the spec leaves out) and more lines beneath a field (what Network Monitor
keeps collapsed: objects, IPIDs), which are indented further and not compared.

Where the spec is evidently wrong, the expected text is corrected below, each time with a
comment saying what and why.
"""

from __future__ import annotations

import re
from functools import lru_cache

import pytest

from tshark_util import PCAPS, ROOT
from wmiscope.dissectors.pipeline import Analysis
from wmiscope.dissectors.transcript import TranscriptRenderer

SPEC = ROOT.parent / "shared" / "spec" / "MS-WMI.txt"

SECTIONS = {
    "4.1.1": "spec-4.1.1-initialization.pcap",
    "4.2.3.1": "spec-4.2.3.1-sync-execquery-execmethod.pcap",
    "4.2.3.2": "spec-4.2.3.2-sync-put-delete-enum.pcap",
    "4.3.3.1": "spec-4.3.3.1-semisync-execquery-execmethod.pcap",
    "4.3.3.2": "spec-4.3.3.2-semisync-put-delete-enum.pcap",
}

_HEADING = re.compile(r"^(\d+(?:\.\d+)+) \S")
_FIELD = re.compile(r"^\s*(?:[+-]\s+)?[A-Za-z][A-Za-z0-9_ ]*:(?:\s|$)")
_SUMMARY = re.compile(r"^(?:[+-] )?(?:WMI|DCOM):")

RETURN_S_FALSE = ("ReturnValue: 0x00000001 - WBEM_S_FALSE - Either no more CIM objects are available, the number "
                  "of returned CIM objects is less than the number requested, or this is the end of an enumeration.")
RETURN_OK = "ReturnValue: 0x00000000 - WBEM_S_NO_ERROR - Indicates a successful completion to the method call."


def _section_text(number: str) -> list[str]:
    lines = SPEC.read_text(encoding="utf-8").splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith(number + " "))
    end = next(i for i in range(start + 1, len(lines)) if _HEADING.match(lines[i])
               and not lines[i].startswith(number + "."))
    return lines[start + 1:end]


def _code_lines(section: list[str]) -> list[str]:
    """The lines of the section's code blocks, in order."""
    out, inside = [], False
    for line in section:
        if line.strip().startswith("```"):
            inside = not inside
            continue
        if inside and line.strip():
            out.append(line)
    return out


def _unwrap(lines: list[str]) -> list[str]:
    """Undo the spec's line wrapping: a line that is no field and no summary continues the one
    before it (without a space after a GUID cut at a hyphen)."""
    out: list[str] = []
    for line in lines:
        if out and not _FIELD.match(line):
            prev = out[-1]
            glue = "" if prev.endswith("-") and not prev.endswith(" -") else " "
            out[-1] = prev + glue + line.strip()
        else:
            out.append(line)
    return out


def normalize(line: str) -> str:
    return " ".join(line.split())


def messages(lines: list[str]) -> list[list[str]]:
    """Lines grouped by message: a summary line (with the DCOM layer line before it, if any) and its fields."""
    out: list[list[str]] = []
    layer = None
    for line in (normalize(l) for l in lines):
        if not line:
            continue
        if line.startswith("+ DCOM: WMI protocol"):
            layer = line
            continue
        if _SUMMARY.match(line):
            out.append([layer, line] if layer else [line])
            layer = None
        elif out:
            out[-1].append(line)
    return out


def expected(number: str) -> list[list[str]]:
    """The messages of a section's trace, corrected (below)."""
    ms = [fix(m) for m in messages(_unwrap(_code_lines(_section_text(number))))]
    return _PER_SECTION[number](ms)


# ---------------------------------------------------------------------------------------
# corrections of the spec's evident mistakes

_TYPOS = [
    # MS-WMI spells the REMQIRESULT pointer both "RemqiresultPtr" and "RemqresultPtr"; the
    # structure is REMQIRESULT, and our transcript names it so everywhere.
    ("RemqresultPtr", "RemqiresultPtr"),
    # lower-case "pad" in two places, "Pad" everywhere else
    ("+ pad:", "+ Pad:"),
    # status names misspelled in a summary and a field
    ("ReturnValue=WbemS_NO_ERROR", "ReturnValue=WBEM_S_NO_ERROR"),
    ("Wbem_S_FALSE", "WBEM_S_FALSE"),
    # interface names in lower-case
    ("IwbemServices", "IWbemServices"),
    # a stray parenthesis after "method call."
    ("method call.)", "method call."),
    # missing spaces
    ("ms(0x1388)", "ms (0x1388)"),
    ("synchronously.If", "synchronously. If"),
    # the last Next response of 4.2.3.2 says BufferSize where every other one says BuffSize
    ("BufferSize", "BuffSize"),
]


def fix(message: list[str]) -> list[str]:
    out = []
    for line in message:
        for wrong, right in _TYPOS:
            line = line.replace(wrong, right)
        out.append(line)
    return out


def _continued_response(m: list[str], pad: int) -> list[str]:
    """A Next response that Network Monitor could not follow past its first fragment (its own
    last line says "c/o Continued Response ... error"): the HRESULT and the pad it shows are
    bytes of the ObjectArray. Ours carries WBEM_S_FALSE (one object of the ten asked for) and
    the pad its BuffSize needs."""
    assert m[-1].startswith("+ msrpc: c/o Continued Response")
    m = m[:-1]
    m[0] = m[0].replace("ReturnValue=0x00000300 - Unknown Value", "ReturnValue=WBEM_S_FALSE")
    m[-2] = f"{'+ ' if pad else ''}Pad: {pad} Bytes"
    m[-1] = RETURN_S_FALSE
    return m


def _fix_4_1_1(ms: list[list[str]]) -> list[list[str]]:
    for m in ms:
        # the trace is cut after the ActivationProperties of the reply: the HRESULT follows them
        if m[0].startswith("- DCOM: RemoteCreateInstance Response"):
            m.append("+ ReturnValue: Success")
    return ms


def _fix_4_2_3_1(ms: list[list[str]]) -> list[list[str]]:
    for i, m in enumerate(ms):
        if m[0].startswith("- WMI: IWbemWCOSmartEnum:Next Response, PuReturned=1"):
            ms[i] = _continued_response(m, pad=3)            # 9101 bytes after a 24-byte header
    return ms


def _fix_4_2_3_2(ms: list[list[str]]) -> list[list[str]]:
    nexts = [m for m in ms if m[0].startswith("- WMI: IWbemWCOSmartEnum:Next")]
    # the first Next response is cut after its Pad: its summary says WBEM_S_FALSE
    assert nexts[1][-1] == "+ Pad: 2 Bytes"
    nexts[1].append(RETURN_S_FALSE)
    # the last Next request is cut before its uCount, which its summary gives
    assert nexts[2][0].endswith("UCount=10") and not nexts[2][-1].startswith("UCount")
    nexts[2].append("UCount: 10 (0xA)")
    return ms


def _fix_4_3_3_1(ms: list[list[str]]) -> list[list[str]]:
    out = []
    for m in ms:
        if m[0].startswith("- WMI: IWbemWCOSmartEnum:Next Response, PuReturned=1"):
            m = _continued_response(m, pad=0)                # 9104 bytes after a 24-byte header
        if m[0].startswith("- WMI: IWbemCallResult:GetCallStatus Response") and out and \
                out[-1][0].startswith("- WMI: IWbemCallResult:GetCallStatus Response"):
            # the block said to be the GetResultObject request repeats the GetCallStatus
            # response before it; the request the client sends is this one
            m = ["- WMI: IWbemCallResult:GetResultObject Request, Timeout=5000", "Timeout: 5000 ms (0x1388)"]
        if m[0].startswith("- WMI: IWbemServices:ExecQuery Response") and m[-1] == "+ Pad: 2 Bytes":
            # the second ExecQuery response's ReturnValue line fell out of its code block
            m.append(RETURN_OK)
        out.append(m)
    return out


def _fix_4_3_3_2(ms: list[list[str]]) -> list[list[str]]:
    # The block said to be the PutInstance request repeats a Next response of 4.3.3.1; the
    # request is the one of 4.2.3.2 with WBEM_FLAG_RETURN_IMMEDIATELY (its response, next,
    # returns an IWbemCallResult).
    assert ms[0][0].startswith("- WMI: IWbemWCOSmartEnum:Next Response, PuReturned=0")
    ms[0] = ["- WMI: IWbemServices:PutInstance Request, Flags=16",
             "+ Inst: OBJREFCUSTOM - {DC12A681-737F-11CF-884D-00AA004B2E24}", "Pad: 0 Bytes",
             "+ Flags: 16 (0x10)", "+ Ctx: NULL", "+ CallResult: NULL"]
    return ms


_PER_SECTION = {"4.1.1": _fix_4_1_1, "4.2.3.1": _fix_4_2_3_1, "4.2.3.2": _fix_4_2_3_2,
                "4.3.3.1": _fix_4_3_3_1, "4.3.3.2": _fix_4_3_3_2}


# ---------------------------------------------------------------------------------------
# our side

@lru_cache(maxsize=None)
def transcript(name: str) -> tuple[str, ...]:
    analysis = Analysis(want_pdus=True)
    renderer = TranscriptRenderer(all=True, operations=False)
    return tuple(renderer.render(analysis.run(PCAPS / name)))


def ours(name: str) -> list[list[str]]:
    """Our messages with what the traces collapse left out: deeper lines, the MSRPC PDU lines."""
    kept = [l for l in transcript(name) if not l.startswith("    ") and not l.startswith("  MSRPC:")]
    return messages(kept)


def _bare(m: list[str]) -> list[str]:
    """A message without the DCOM layer line (the traces print it once)."""
    return m[1:] if m and m[0].startswith("+ DCOM: WMI protocol") else m


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_transcript_reads_like_the_spec_trace(section):
    want = expected(section)
    got = ours(SECTIONS[section])
    assert len(want) >= 6
    pos = 0
    for m in want:
        head = _bare(m)[0]
        j = next((k for k in range(pos, len(got)) if _bare(got[k])[0] == head), None)
        assert j is not None, f"{section}: no message {head!r} after message {pos} of ours"
        mine = got[j] if m[0].startswith("+ DCOM: WMI protocol") else _bare(got[j])
        assert mine == m, f"{section}: message {head!r}"
        pos = j + 1


def test_the_expected_text_comes_from_the_spec():
    """The extraction sees what the spec prints: 4.1.1's eight messages, the SetClientInfo
    request field by field, the spec's line wrapping undone."""
    ms = expected("4.1.1")
    heads = [m[0].split(",")[0] for m in ms]
    assert heads == ["- DCOM: RemoteCreateInstance Request", "- DCOM: RemoteCreateInstance Response",
                     "- DCOM: IRemUnknown2:RemQueryInterface Request",
                     "- DCOM: IRemUnknown2:RemQueryInterface Response",
                     "- WMI: IWbemLoginClientID:SetClientInfo Request",
                     "- WMI: IWbemLoginClientID:SetClientInfo Response",
                     "- WMI: IWbemLevel1Login:EstablishPosition Request",
                     "- WMI: IWbemLevel1Login:EstablishPosition Response",
                     "- WMI: IWbemLevel1Login:NTLMLogin Request", "- WMI: IWbemLevel1Login:NTLMLogin Response"]
    assert ms[4] == ["- WMI: IWbemLoginClientID:SetClientInfo Request, ClientMachine=SAI-NAV009 "
                     "ClientProcId=6420 Reserved=0", "+ ClientMachine: SAI-NAV009", "+ Pad: 2 Bytes",
                     "ClientProcId: 6420 (0x1914)", "Reserved: 0 (0x0)"]
    assert ms[7][0] == "- WMI: IWbemLevel1Login:EstablishPosition Response, LocaleVersion=1 " \
                       "ReturnValue=WBEM_S_NO_ERROR"


def test_how_many_messages_each_trace_shows():
    """Counts: how many messages of each section's trace our transcripts reproduce."""
    counts = {s: len(expected(s)) for s in SECTIONS}
    assert counts == {"4.1.1": 10, "4.2.3.1": 18, "4.2.3.2": 22, "4.3.3.1": 22, "4.3.3.2": 26}


# ---------------------------------------------------------------------------------------
# every stub the generator writes, against impacket's NDR classes (an independent reading of the IDL)

OWN_SAMPLES = sorted(SECTIONS.values()) + ["wmi-async-query-callbacks.pcap", "wmi-semisync-execmethod.pcap",
                                           "wmi-refresher.pcap", "wmi-persistence-subscription.pcap"]

# Where impacket's classes depart from the MS-WMI IDL, so that Windows' stubs do not parse either.
IMPACKET_DEPARTS = {
    ("IWbemWCOSmartEnum", "Next", "request"):
        "proxyGUID is a REFGUID, a [ref] pointer: the GUID itself is on the wire; impacket reads a referent first",
    ("IWbemWCOSmartEnum", "Next", "response"):
        "pBuffer is byte** with size_is(,*pdwBuffSize): a unique pointer to the array; impacket reads a bare array",
    ("IWbemRefreshingServices", "AddObjectToRefresher", "request"):
        "wszPath is [in, string] const wchar_t*, a [ref] pointer; impacket reads a unique one",
    ("IWbemRefreshingServices", "AddEnumToRefresher", "request"):
        "wszClass is [in, string] const wchar_t*, a [ref] pointer; impacket reads a unique one",
    ("IWbemRemoteRefresher", "RemoteRefresh", "response"):
        "impacket declares plNumObjects as an array of _WBEM_RECONNECT_RESULTS",
}
# Checked against Windows' own stubs below: impacket fails on them the same way.
WINDOWS_ALSO_FAILS = {("IWbemWCOSmartEnum", "Next"), ("IWbemServices", "GetObject"), ("IWbemServices", "PutInstance")}


def _impacket_class(call, response: bool):
    from impacket.dcerpc.v5 import dcomrt
    from impacket.dcerpc.v5.dcom import wmi as iwmi
    suffix = "Response" if response else ""
    return getattr(iwmi, f"{call.interface}_{call.method}{suffix}", None) or \
        getattr(dcomrt, f"{call.method}{suffix}", None)


def _ref_to_null(call) -> bool:
    """A request passing a non-NULL pointer to a NULL interface pointer for an [in, out, unique]
    IFoo** (to get the object or an IWbemCallResult back): impacket reads those parameters as one
    pointer to an MInterfacePointer."""
    for p in (call.decoded or {}).get("request", {}).get("params") or ():
        t, off = p.get("type", ""), p.get("offset")
        if t.startswith("unique<I") and t.endswith("*>") and p.get("value") is None and off is not None \
                and call.req_stub[off:off + 4] != b"\0\0\0\0":
            return True
    return False


def _impacket_reads(cls, stub: bytes) -> bool:
    """impacket parses the stub, consumes all of it, and writes it back the same, but for its
    fillers: marker bytes where we align with zeros, 0xAB for a conformance it does not model
    (RemQueryInterface's ppQIResults is a pointer to one REMQIRESULT for impacket; Windows' own
    reply reads back so too)."""
    back = cls(stub).getData()
    return len(back) == len(stub) and all(a == b or a == 0 or b == 0xAB for a, b in zip(stub, back))


@lru_cache(maxsize=None)
def _sample_calls(name: str):
    from wmiscope.dissectors.pipeline import analyse
    from wmiscope.dissectors.records import Call
    return [r for r in analyse(PCAPS / name)[0] if type(r) is Call]


def test_impacket_parses_every_stub_the_generator_writes():
    checked, departs = 0, 0
    for name in OWN_SAMPLES:
        for call in _sample_calls(name):
            for response, stub in ((False, call.req_stub), (True, call.resp_stub)):
                cls = _impacket_class(call, response)
                if cls is None or stub is None:
                    continue
                key = (call.interface, call.method, "response" if response else "request")
                optimized_indicate = call.method == "Indicate" and not response and b"WBEMDATA" in stub
                if key in IMPACKET_DEPARTS or (not response and _ref_to_null(call)) or optimized_indicate:
                    departs += 1        # (the optimized Indicate's framing is not in the IDL at all)
                    continue
                assert _impacket_reads(cls, stub), f"{name}: {key} frame {call.req_frames}"
                checked += 1
    assert checked >= 150 and departs < checked // 4


def test_impacket_reads_our_values():
    from impacket.dcerpc.v5.dcom import wmi as iwmi
    calls = {(c.interface, c.method): c for c in _sample_calls(SECTIONS["4.2.3.1"])}
    c = calls[("IWbemLoginClientID", "SetClientInfo")]
    req = iwmi.IWbemLoginClientID_SetClientInfo(c.req_stub)
    assert (req["wszClientMachine"], req["lClientProcId"]) == ("SAI-NAV009\x00", 6420)
    assert str(req["ORPCthis"]["cid"]) != "" and req["ORPCthis"]["version"]["MinorVersion"] == 7
    req = iwmi.IWbemServices_ExecQuery(calls[("IWbemServices", "ExecQuery")].req_stub)
    assert req["strQuery"]["asData"] == CALC_QUERY and req["lFlags"] == 32
    resp = iwmi.IWbemServices_ExecMethodResponse(calls[("IWbemServices", "ExecMethod")].resp_stub)
    assert resp["ErrorCode"] == 0 and b"MEOW" in b"".join(resp["ppOutParams"]["abData"])


CALC_QUERY = "select * from win32_process where Name='calc.exe'"


@pytest.mark.parametrize("key", sorted(WINDOWS_ALSO_FAILS))
def test_impacket_departs_from_windows_too(key):
    """The departures above are impacket's: Windows' own stubs (wmimplant.pcap) fail the same way."""
    from wmiscope.dissectors.pipeline import analyse
    from wmiscope.dissectors.records import Call
    from tshark_util import CAPTURES
    interface, method = key
    calls = [r for r in analyse(CAPTURES / "wmimplant.pcap")[0]
             if type(r) is Call and (r.interface, r.method) == key and r.req_stub is not None]
    assert calls
    call = calls[0]
    if method == "GetObject":
        assert _ref_to_null(call)       # Windows asks for the object with a pointer to NULL, like our samples
    with pytest.raises(Exception):
        _impacket_class(call, False)(call.req_stub)
