"""The WMI parameter interpreter on built stubs.

Every method of every WMI interface encodes and decodes back to the values it was given
(hypothesis, both directions, little- and big-endian); impacket's NDR classes, written
independently from the same IDL, read the stubs we encode and find the same values (where
they disagree with the IDL the reason is recorded below); flags and statuses come out by
name; hostile stubs give located errors with bounded work.
"""

from __future__ import annotations

import random
import re
import struct
import uuid
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from work_meter import linear_in
from wmiscope.spec import interfaces as I
from wmiscope.spec import wbem as wc
from wmiscope.dissectors import interpreter, wmi
from wmiscope.dissectors.dcom import DcomDecoder
from wmiscope.dissectors.orpc import write_orpcthis
from wmiscope.formats.objref import build_dualstringarray, build_objref
from wmiscope.dissectors.ndr import NdrWriter
from wmiscope.dissectors.records import Call
from wmiscope.formats import context as fctx
from wmiscope.formats import object_array as oa
from wmiscope.formats import refresher, wmio

SPEC = Path(__file__).resolve().parents[2] / "shared" / "spec" / "MS-WMI.txt"

# ---------------------------------------------------------------------------------------
# objects the generated values draw from

CLASS = wmio.new_class(
    "Win32_Sample", properties=[("Name", "string", None, {"key": True}), ("Count", "uint32", 5),
                                ("Tags", "string[]", ["a", "b"])],
    methods=[("Run", [("CommandLine", "string")], [("ReturnValue", "uint32")])],
    qualifiers={"dynamic": True})
INSTANCE = wmio.new_instance(CLASS, {"Name": "first", "Count": 7})
PARAMS = wmio.new_instance(wmio.new_class("__PARAMETERS", properties=[("CommandLine", "string")]),
                           {"CommandLine": "cmd.exe /c whoami"})
CONTEXT = fctx.WbemContext(properties=[fctx.ContextProperty("__ProviderArchitecture", fctx.VarType.VT_I4, 64)])
OBJECTS = [CLASS, INSTANCE, PARAMS]
OBJECT_ARRAYS = [oa.build_object_array([INSTANCE, wmio.new_instance(CLASS, {"Name": "second"})]),
                 oa.build_object_array([CLASS])]
RESOLVER = build_dualstringarray([(7, "SERVER[49670]"), (7, "10.0.0.5[49670]")])


def _objref(interface: str) -> bytes:
    info = I.interface_by_name(interface)
    iid = info["uuid"] if info else "00000000-0000-0000-c000-000000000046"
    return build_objref(iid, ipid="0001a407-06c4-0000-a6e3-c870b6019c76", oxid=0x1122334455667788,
                        oid=0x99AABBCCDDEEFF00, resolver=RESOLVER)


def _methods():
    """(interface, method) of every WMI method sent on the wire (IUnknown's 0-2 are local)."""
    out = []
    for i in I.INTERFACES:
        if i["group"] != "wmi" or i["local"]:
            continue
        for opnum, m in sorted(I.methods_of(i["uuid"]).items()):
            if opnum >= 3:
                out.append((i["name"], m["name"]))
    return out


METHODS = _methods()
DIRECTIONS = [(i, m, d) for i, m in METHODS for d in ("request", "response")]

# ---------------------------------------------------------------------------------------
# values from the table's type strings, through a chooser (hypothesis or a seeded Random)

_INTS = {"byte": (0, 255), "ushort": (0, 0xFFFF), "short": (-0x8000, 0x7FFF), "ulong": (0, 0xFFFFFFFF),
         "long": (-0x80000000, 0x7FFFFFFF), "uhyper": (0, 2**64 - 1), "hyper": (-2**63, 2**63 - 1),
         "HRESULT": (0, 0xFFFFFFFF), "error_status_t": (0, 0xFFFFFFFF), "FILETIME": (0, 2**64 - 1)}
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_LATIN = st.text(st.characters(max_codepoint=255), max_size=12)


class HypoChooser:
    def __init__(self, draw):
        self.draw = draw

    def integer(self, lo, hi):
        return self.draw(st.integers(lo, hi))

    def null(self):
        return self.draw(st.booleans())

    def pick(self, seq):
        return self.draw(st.sampled_from(seq))

    def text(self, latin=False):
        return self.draw(_LATIN if latin else _TEXT)

    def binary(self, n):
        return self.draw(st.binary(min_size=n, max_size=n))

    def guid(self):
        return str(self.draw(st.uuids()))


class RandChooser:
    """Rich values: pointers never NULL, arrays of two."""

    def __init__(self, seed: int):
        self.r = random.Random(seed)

    def integer(self, lo, hi):
        return self.r.randint(max(lo, 0), min(hi, 0x7FFFFFFF))

    def null(self):
        return False

    def pick(self, seq):
        return self.r.choice(list(seq))

    def text(self, latin=False):
        return "".join(self.r.choice("abcXYZ019\\ _é") for _ in range(self.r.randint(1, 12)))

    def binary(self, n):
        return bytes(self.r.randrange(256) for _ in range(n))

    def guid(self):
        return "%08x-%04x-%04x-%04x-%012x" % (self.r.getrandbits(32), self.r.getrandbits(16),
                                              self.r.getrandbits(16), self.r.getrandbits(16), self.r.getrandbits(48))


def _args(inner: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in inner:
        depth += (ch == "<") - (ch == ">")
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return out + [cur.strip()]


def _pointee(ch, interface: str):
    if interface == "IWbemClassObject":
        return ch.pick(OBJECTS)
    if interface == "IWbemContext":
        return CONTEXT
    return _objref(interface)


def _value(ch, t: str, lengths: dict):
    if t in _INTS:
        return ch.integer(*_INTS[t])
    if t == "GUID":
        return ch.guid()
    if t == "wstring":
        return ch.text()
    if t == "string":
        return ch.text(latin=True)
    if t == "BSTR":
        return None if ch.null() else ch.text()
    if t == "MInterfacePointer":
        return _objref("IUnknown")
    if t.endswith("*"):
        return None if ch.null() else _pointee(ch, t[:-1])
    m = re.fullmatch(r"(unique|array|varray)<(.*)>", t)
    if m:
        args = _args(m.group(2))
        if m.group(1) == "unique":
            if ch.null():
                return None
            if args[0].endswith("*") and ch.null():
                return wmi.REF_TO_NULL
            return _value(ch, args[0], lengths)
        size = args[1]
        n = int(size) if size.isdigit() else lengths.setdefault(size, ch.integer(0, 2) if ch.null() else 2)
        if args[0] == "byte":
            return ch.binary(n)
        return [_value(ch, args[0], lengths) for _ in range(n)]
    spec = I.STRUCTS[t]
    local: dict = {}
    out = {}
    for f, ft in spec["fields"]:
        u = I.STRUCTS.get(ft, {}).get("union")
        if u:
            disc, arm, at = ch.pick(u["arms"])
            out[f] = {arm: _value(ch, at, {})}
            local[u["switch_is"]] = disc
        else:
            out[f] = _value(ch, ft, local)
    for f, _ in spec["fields"]:
        if f in local:
            out[f] = local[f]
    return out


def direction_values(ch, interface: str, method: str, response: bool) -> dict:
    plan = wmi.method_plan(interface, method)
    lengths: dict = {}
    values = {pp.name: _value(ch, pp.type, lengths) for pp in (plan.response if response else plan.request)}
    for name, n in lengths.items():           # a count parameter equals its array's length
        if name in values:
            values[name] = n
    if response and interface == "IWbemWCOSmartEnum":
        values["pBuffer"] = None if ch.null() else ch.pick(OBJECT_ARRAYS)
        values["pdwBuffSize"] = len(values["pBuffer"] or b"")
    if interface == "IWbemRemoteRefresher" and "paObjects" in values:
        for item in values["paObjects"] or ():
            item["m_lBlobType"] = refresher.WbemInstanceBlobType.WBEM_BLOB_TYPE_ERROR
    return values


def _round_trip(interface, method, direction, values, little=True):
    response = direction == "response"
    if response:
        stub = wmi.encode_response(interface, method, values, 0x80041002, little_endian=little)
    else:
        stub = wmi.encode_request(interface, method, values, cid="8e2416fe-0a3f-42be-a9b0-f30624c94619",
                                  little_endian=little)
    out = wmi.decode_stub(interface, method, stub, response=response, little_endian=little)
    assert out.errors == [], out.errors
    assert out.values == values
    if response:
        assert out.ret["name"] == "WBEM_E_NOT_FOUND"
    assert [p["name"] for p in out.params] == list(values)
    return stub, out


@pytest.mark.parametrize("interface,method,direction", DIRECTIONS)
@settings(max_examples=5, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_round_trip_every_method(interface, method, direction, data):
    ch = HypoChooser(data.draw)
    values = direction_values(ch, interface, method, direction == "response")
    _round_trip(interface, method, direction, values, little=data.draw(st.booleans()))


@pytest.mark.parametrize("interface,method,direction", DIRECTIONS)
def test_round_trip_rich_values(interface, method, direction):
    values = direction_values(RandChooser(zlib.crc32(f"{interface}::{method}".encode())), interface, method,
                              direction == "response")
    stub, out = _round_trip(interface, method, direction, values)   # asserts decode(encode(x)) == x
    assert len(stub) >= (8 if direction == "response" else 32)        # ORPCTHAT / ORPCTHIS at least


def test_every_wmi_method_has_a_plan():
    assert len(METHODS) >= 60
    for interface, method in METHODS:
        plan = wmi.method_plan(interface, method)
        assert plan is not None and plan.error is None, (interface, method)


# ---------------------------------------------------------------------------------------
# impacket's NDRCALL classes as an independent reader

iw = pytest.importorskip("impacket.dcerpc.v5.dcom.wmi")

# Where impacket's classes and the IDL of MS-WMI section 6 part ways, what impacket lacks.
# (WBEMLogin's reserved5 is IWbemServices**, which impacket declares as a varying byte array:
# the bytes still come out the same, so it is not listed.)
IMPACKET_DIFFERS = {
    ("IWbemServices", "OpenNamespace", "request"): "[in,out,unique] IFoo** read as a single pointer",
    ("IWbemServices", "GetObject", "request"): "[in,out,unique] IFoo** read as a single pointer",
    ("IWbemServices", "PutClass", "request"): "impacket adds a pResponseHandler the IDL does not have",
    ("IWbemServices", "DeleteClass", "request"): "[in,out,unique] IWbemCallResult** read as a single pointer",
    ("IWbemServices", "PutInstance", "request"): "[in,out,unique] IWbemCallResult** read as a single pointer",
    ("IWbemServices", "DeleteInstance", "request"): "[in,out,unique] IWbemCallResult** read as a single pointer",
    ("IWbemWCOSmartEnum", "Next", "request"): "REFGUID proxyGUID read as a pointer (a [ref] has no referent ID)",
    ("IWbemWCOSmartEnum", "Next", "response"): "pBuffer (byte**, size_is) is a unique pointer to the array; impacket "
                                               "reads the array without the referent ID Windows sends "
                                               "(wmimplant.pcap frame 313)",
    ("IWbemLoginHelper", "SetEvent", "request"): "[in] LPCSTR is a [ref] string; impacket reads a unique pointer",
    ("IWbemBackupRestore", "Backup", "request"): "[in, string] LPCWSTR read as a unique pointer",
    ("IWbemBackupRestore", "Restore", "request"): "[in, string] LPCWSTR read as a unique pointer",
    ("IWbemBackupRestoreEx", "Backup", "request"): "[in, string] LPCWSTR read as a unique pointer",
    ("IWbemBackupRestoreEx", "Restore", "request"): "[in, string] LPCWSTR read as a unique pointer",
    ("IWbemRefreshingServices", "AddObjectToRefresher", "request"): "[in, string] wszPath read as a unique pointer",
    ("IWbemRefreshingServices", "AddEnumToRefresher", "request"): "[in, string] wszClass read as a unique pointer",
    ("IWbemRefreshingServices", "ReconnectRemoteRefresher", "request"):
        "_WBEM_RECONNECT_INFO.m_lType declared LPCSTR; apReconnectResults missing",
    ("IWbemRefreshingServices", "ReconnectRemoteRefresher", "response"):
        "apReconnectResults declared as an array of _WBEM_RECONNECT_INFO",
    ("IWbemRemoteRefresher", "RemoteRefresh", "response"): "plNumObjects declared as an array",
    ("IWbemRemoteRefresher", "StopRefreshing", "request"): "aplIds read as a pointer to an array",
}
# Methods impacket has no class for (either direction).
IMPACKET_LACKS = {("IWbemLoginClientIDEx", "SetClientInfoEx"), ("IWbemRemoteRefresher", "Opnum5NotUsedOnWire")}
# Same wire, other names.
_IMPACKET_NAMES = {("IWbemServices", "CancelAsyncCall", "pSink"): "IWbemObjectSink",
                   ("IEnumWbemClassObject", "NextAsync", "uCount"): "lTimeout",
                   ("IEnumWbemClassObject", "Skip", "nCount"): "uCount",
                   ("IWbemServices", "CreateClassEnum", "strSuperclass"): "strSuperClass",
                   ("IWbemServices", "CreateClassEnumAsync", "strSuperclass"): "strSuperClass",
                   ("IWbemShutdown", "Shutdown", "Reserved3"): "reserved3"}


def _defining(interface: str, method: str) -> str:
    info = I.interface_by_name(interface)
    while info is not None:
        if any(m["name"] == method for m in info["methods"]):
            return info["name"]
        info = I.interface_by_name(info["base"]) if info["base"] else None
    return interface


def _imp(v):
    """impacket's parsed value -> what ours reads."""
    if isinstance(v, bytes) and v == b"":
        return None                                     # a NULL pointer
    if isinstance(v, list) and v and all(isinstance(x, bytes) and len(x) == 1 for x in v):
        return b"".join(v)                              # a byte array, element by element
    if isinstance(v, str):
        return v[:-1] if v.endswith("\x00") else v
    if hasattr(v, "fields"):
        f = v.fields
        if "abData" in f:
            return b"".join(v["abData"])
        if "asData" in f:
            return v["asData"]
        if "Data" in f:
            return [_imp(x) for x in v["Data"]] if isinstance(v["Data"], list) else _imp(v["Data"])
        return {k: _imp(v[k]) for k in f if k not in ("tag",)}
    if isinstance(v, list):
        return [_imp(x) for x in v]
    return v


def _ours(v):
    if v is None or v is wmi.REF_TO_NULL:
        return None
    if isinstance(v, (wmio.WmiClass, wmio.WmiInstance, fctx.WbemContext)):
        return interpreter._objref_bytes(v)
    if isinstance(v, list):
        return [_ours(x) for x in v]
    if isinstance(v, dict):
        return {k: _ours(x) for k, x in v.items()}
    if isinstance(v, bytes):
        return v
    return v


_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _same(got, want) -> bool:
    if isinstance(want, dict):
        return isinstance(got, dict) and all(_same(got.get(k), x) for k, x in want.items())
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(_same, got, want))
    if isinstance(want, str) and _GUID.fullmatch(want):
        raw = got.encode("utf-16-le") if isinstance(got, str) else got     # impacket GUIDs: bytes
        return isinstance(raw, bytes) and len(raw) == 16 and str(uuid.UUID(bytes_le=raw)) == want
    if isinstance(want, str) and isinstance(got, bytes):
        return got.decode("utf-16-le") == want
    return got == want


def _impacket_agrees(interface, method, direction) -> bool:
    defining = _defining(interface, method)
    cls = getattr(iw, f"{defining}_{method}" + ("Response" if direction == "response" else ""), None)
    if cls is None:
        return False
    values = direction_values(RandChooser(7), interface, method, direction == "response")
    if direction == "response":
        stub = wmi.encode_response(interface, method, values, 0x80041003)
    else:
        stub = wmi.encode_request(interface, method, values, cid="8e2416fe-0a3f-42be-a9b0-f30624c94619")
    try:
        parsed = cls(stub)
    except Exception:
        return False
    for name, v in values.items():
        field = _IMPACKET_NAMES.get((interface, method, name), name)
        if field not in parsed.fields or not _same(_imp(parsed[field]), _ours(v)):
            return False
    if direction == "response" and parsed["ErrorCode"] != 0x80041003:
        return False
    return parsed["ORPCthat" if direction == "response" else "ORPCthis"]["flags"] == 0


@pytest.mark.parametrize("interface,method,direction", DIRECTIONS)
def test_impacket_reads_what_we_encode(interface, method, direction):
    agrees = _impacket_agrees(interface, method, direction)
    if (interface, method) in IMPACKET_LACKS:
        assert not hasattr(iw, f"{interface}_{method}")
    elif (interface, method, direction) in IMPACKET_DIFFERS:
        assert not agrees, "impacket now agrees: drop the recorded difference"
    else:
        assert agrees


def test_impacket_sees_the_execquery_we_encode():
    stub = wmi.encode_request("IWbemServices", "ExecQuery", {
        "strQueryLanguage": "WQL", "strQuery": "SELECT * FROM Win32_Process", "lFlags": 0x30, "pCtx": CONTEXT})
    parsed = iw.IWbemServices_ExecQuery(stub)
    assert parsed["strQuery"]["asData"] == "SELECT * FROM Win32_Process"
    assert parsed["lFlags"] == 0x30
    assert fctx.parse_context_objref(b"".join(parsed["pCtx"]["abData"])).get("__ProviderArchitecture") == 64


# ---------------------------------------------------------------------------------------
# names of flags and statuses

def test_statuses_by_name():
    assert wc.hresult(0) == {"value": 0, "name": "WBEM_S_NO_ERROR",
                             "text": "Indicates a successful completion to the method call."}
    assert wc.hresult(1)["name"] == "WBEM_S_FALSE"
    assert wc.hresult(0x400FF)["name"] == "WBEM_S_NEW_STYLE"
    assert wc.hresult(0x80041003)["text"].startswith("The permission required")
    assert wc.hresult(-2147217406)["name"] == "WBEM_E_NOT_FOUND"      # signed form of 0x80041002
    assert wc.hresult(0x80070005)["name"] == "E_ACCESSDENIED"
    assert wc.hresult(0x80010108)["name"] == "RPC_E_DISCONNECTED"
    assert wc.hresult(0x80004002)["name"] == "E_NOINTERFACE"
    assert wc.hresult(0x80080005)["name"] == "CO_E_SERVER_EXEC_FAILURE"
    assert wc.hresult(0x80041011)["name"] == "WBEM_E_PROVIDER_NOT_FOUND"
    assert wc.hresult(0x8004101A)["name"] == "WBEM_E_OVERRIDE_NOT_ALLOWED"   # Appendix C
    assert wc.hresult(0x300) == {"value": 0x300, "name": None,
                                 "text": "Unknown Value (success, facility 0, code 0x0300)"}
    assert len({v for _, v, _ in wc.WBEMSTATUS}) == len(wc.WBEMSTATUS)


def test_wbemstatus_matches_the_idl():
    """Every WBEMSTATUS constant of the IDL (MS-WMI section 6) is named, with its value."""
    text = SPEC.read_text(encoding="utf-8")
    idl = text[text.index("6 Appendix A: Full IDL"):]
    body = idl[idl.index("enum tag_WBEMSTATUS"):idl.index("WBEMSTATUS;")]
    pairs = re.findall(r"(\w+)\s*=\s*(0x[0-9A-Fa-f]+)", body)
    assert len(pairs) > 60
    ours = {n: v for n, v, _ in wc.WBEMSTATUS}
    assert {n: int(v, 16) for n, v in pairs} == {n: ours[n] for n, _ in pairs}
    assert set(ours) <= {n for n, _ in pairs} | {"WBEM_E_PROVIDER_TIMED_OUT"}


@pytest.mark.parametrize("interface,method,param,value,names", [
    ("IWbemServices", "ExecQuery", "lFlags", 0x30, ["WBEM_FLAG_RETURN_IMMEDIATELY", "WBEM_FLAG_FORWARD_ONLY"]),
    ("IWbemServices", "CreateInstanceEnum", "lFlags", 33, ["WBEM_FLAG_FORWARD_ONLY", "WBEM_FLAG_SHALLOW"]),
    ("IWbemServices", "ExecQuery", "lFlags", 0x12, ["WBEM_FLAG_RETURN_IMMEDIATELY", "WBEM_FLAG_PROTOTYPE"]),
    ("IWbemServices", "PutInstance", "lFlags", 0x12, ["WBEM_FLAG_CREATE_ONLY", "WBEM_FLAG_RETURN_IMMEDIATELY"]),
    ("IWbemServices", "PutClass", "lFlags", 0x20, ["WBEM_FLAG_UPDATE_SAFE_MODE"]),
    ("IWbemServices", "GetObject", "lFlags", 0x20020, ["WBEM_FLAG_FORWARD_ONLY",
                                                     "WBEM_FLAG_USE_AMENDED_QUALIFIERS"]),
    ("IWbemServices", "GetObject", "lFlags", 0x3000, ["WBEM_MASK_RESERVED_FLAGS"]),
    ("IWbemServices", "GetObject", "lFlags", 0x40000000, ["0x40000000"]),
    ("IWbemLevel1Login", "NTLMLogin", "lFlags", 0x40, ["WBEM_FLAG_CONNECT_REPOSITORY_ONLY"]),
    ("IWbemBackupRestoreEx", "Backup", "lFlags", 1, ["WBEM_FLAG_BACKUP_RESTORE_FORCE_SHUTDOWN"]),
])
def test_flags_by_name_per_method(interface, method, param, value, names):
    stub = wmi.encode_request(interface, method, {param: value})
    p = next(p for p in wmi.decode_stub(interface, method, stub).params if p["name"] == param)
    assert p["value"] == {"flags": value, "names": names}


@pytest.mark.parametrize("interface,method,param,value,name", [
    ("IEnumWbemClassObject", "Next", "lTimeout", -1, "WBEM_INFINITE"),
    ("IWbemWCOSmartEnum", "Next", "lTimeout", 0, "WBEM_NO_WAIT"),
    ("IWbemCallResult", "GetResultObject", "lTimeout", 0xFFFFFFFF, "WBEM_INFINITE"),
    ("IWbemCallResult", "GetCallStatus", "lTimeout", 5000, None),
    ("IWbemObjectSink", "SetStatus", "lFlags", 2, "WBEM_STATUS_PROGRESS"),
    ("IWbemObjectSink", "SetStatus", "hResult", 0x80041032, "WBEM_E_CALL_CANCELLED"),
])
def test_enumerations_by_name(interface, method, param, value, name):
    stub = wmi.encode_request(interface, method, {param: value})
    p = next(p for p in wmi.decode_stub(interface, method, stub).params if p["name"] == param)
    assert p["value"]["name"] == name
    if name is None:
        assert p["value"]["text"] == "5000 ms"


def test_every_annotated_parameter_exists():
    """Each (interface, method, parameter) of PARAM_ENUMS names a real parameter."""
    for (interface, method, param), names in wc.PARAM_ENUMS.items():
        info = I.interface_by_name(interface)
        assert info is not None, interface
        params = {p["name"] for m in I.methods_of(info["uuid"]).values()
                  if method in ("*", m["name"]) for p in m["params"]}
        assert param in params, (interface, method, param)
        assert all(n == "HRESULT" or n in wc.ENUMS for n in names)


# ---------------------------------------------------------------------------------------
# the Param layout on a built ExecMethod and NTLMLogin

def test_param_layout_of_execmethod():
    stub = wmi.encode_request("IWbemServices", "ExecMethod", {
        "strObjectPath": "Win32_Process", "strMethodName": "Create", "lFlags": 0, "pCtx": None,
        "pInParams": PARAMS, "ppOutParams": wmi.REF_TO_NULL, "ppCallResult": None})
    out = wmi.decode_stub("IWbemServices", "ExecMethod", stub)
    p = {x["name"]: x for x in out.params}
    assert [x["name"] for x in out.params] == ["strObjectPath", "strMethodName", "lFlags", "pCtx", "pInParams",
                                               "ppOutParams", "ppCallResult"]
    assert p["strObjectPath"] == {"name": "strObjectPath", "type": "BSTR", "offset": 32, "length": 42, "pad": 0,
                                  "value": "Win32_Process"}
    assert p["strMethodName"]["pad"] == 2 and p["strMethodName"]["offset"] == 76
    assert p["pInParams"]["value"]["class"] == "__PARAMETERS"
    assert p["pInParams"]["object"].get("CommandLine") == "cmd.exe /c whoami"
    assert p["pInParams"]["objref"]["clsid"] == "4590f812-1d3a-11d0-891f-00aa004b2e24"
    assert p["ppOutParams"]["referent"] > 0 and p["ppOutParams"]["value"] is None
    assert p["ppCallResult"]["referent"] == 0
    ends = [x["offset"] + x["length"] for x in out.params]
    assert all(x["offset"] - x["pad"] == e for x, e in zip(out.params[1:], ends))   # contiguous
    assert ends[-1] == len(stub)


def test_interface_pointer_value_and_objref():
    objref = _objref("IWbemServices")
    stub = wmi.encode_response("IWbemLevel1Login", "NTLMLogin", {"ppNamespace": objref})
    out = wmi.decode_stub("IWbemLevel1Login", "NTLMLogin", stub, response=True)
    p = out.params[0]
    assert p["value"]["interface"] == "IWbemServices" and p["value"]["objref"] == "standard"
    assert p["value"]["bindings"] == ["ncacn_ip_tcp:SERVER[49670]", "ncacn_ip_tcp:10.0.0.5[49670]"]
    assert p["objref"]["ipid"] == "0001a407-06c4-0000-a6e3-c870b6019c76"
    assert out.ret == {"value": 0, "name": "WBEM_S_NO_ERROR",
                       "text": "Indicates a successful completion to the method call.",
                       "offset": len(stub) - 4, "pad": len(stub) - 4 - (p["offset"] + p["length"])}


# ---------------------------------------------------------------------------------------
# the stateful encodings: ObjectArray, refresher blobs, the optimized Indicate

class _State:
    def __init__(self, template=None):
        self.cache = oa.ClassCache()
        self.template = template
        self.asked = []

    def class_cache(self, call):
        return self.cache

    def refresher_template(self, call, request_id):
        self.asked.append(request_id)
        return self.template


def test_smart_enum_next_objectarray_with_a_shared_class_cache():
    state = _State()
    second = wmio.new_instance(CLASS, {"Name": "third"})
    cache = oa.ClassCache()
    first = oa.build_object_array([INSTANCE], cache=cache)
    later = oa.build_object_array([second], cache=cache)          # WBEMOBJECT_INSTANCE_NOCLASS
    outs = []
    for buf in (first, later):
        stub = wmi.encode_response("IWbemWCOSmartEnum", "Next", {"puReturned": 1, "pBuffer": buf})
        outs.append(wmi.decode_stub("IWbemWCOSmartEnum", "Next", stub, response=True, state=state))
    p = outs[1].params[2]
    assert outs[1].errors == []
    assert p["object"].objects[0].get("Name") == "third"
    assert p["value"]["ObjectArray"]["objects"][0]["bObjectType"] == "WBEMOBJECT_INSTANCE_NOCLASS"
    # without the enumeration's cache the class-less instance cannot be read: a located error
    stub = wmi.encode_response("IWbemWCOSmartEnum", "Next", {"puReturned": 1, "pBuffer": later})
    out = wmi.decode_stub("IWbemWCOSmartEnum", "Next", stub, response=True)
    assert out.errors and out.errors[0].structure.endswith("classID")
    assert out.errors[0].offset > 16 and "error" in out.params[2] and out.ret["name"] == "WBEM_S_NO_ERROR"


def test_remote_refresh_against_the_template():
    template = wmio.new_instance(CLASS, {"Name": "x", "Count": 1})
    fresh = wmio.new_instance(CLASS, {"Name": "x", "Count": 99})
    fresh.class_ = template.class_
    objs = [refresher.RefreshedObject.of(5, fresh), refresher.RefreshedObject.of(6, None),
            refresher.RefreshedObject.of(7, [fresh, fresh])]
    stub = wmi.encode_response("IWbemRemoteRefresher", "RemoteRefresh", {"paObjects": objs})
    state = _State(template)
    out = wmi.decode_stub("IWbemRemoteRefresher", "RemoteRefresh", stub, response=True, state=state)
    assert out.errors == [] and state.asked == [5, 7]
    p = out.params[1]
    assert out.params[0]["value"] == 3
    assert p["object"][0].get("Count") == 99 and p["object"][1] is None and len(p["object"][2]) == 2
    assert p["value"][0]["m_lBlobType"]["name"] == "WBEM_BLOB_TYPE_ALL"
    # unknown template: blobs kept raw, with a note
    out = wmi.decode_stub("IWbemRemoteRefresher", "RemoteRefresh", stub, response=True)
    assert out.errors == [] and out.params[1]["object"] == [None, None, None]
    assert any("m_lRequestId 5" in n and "kept raw" in n for n in out.notes)


def test_refresh_info_union_and_template_object():
    info = {"m_lType": 3, "m_Info": {"m_Remote": {"m_pRefresher": _objref("IWbemRemoteRefresher"),
                                                  "m_pTemplate": INSTANCE,
                                                  "m_Guid": "11111111-2222-3333-4444-555555555555"}},
            "m_lCancelId": 12}
    stub = wmi.encode_response("IWbemRefreshingServices", "AddObjectToRefresher",
                               {"pInfo": info, "pdwSvrRefrVersion": 2})
    out = wmi.decode_stub("IWbemRefreshingServices", "AddObjectToRefresher", stub, response=True)
    p = out.params[0]
    assert p["value"]["m_lType"]["name"] == "WBEM_REFRESH_TYPE_REMOTE"
    assert p["value"]["m_Info"]["m_Remote"]["m_pTemplate"]["class"] == "Win32_Sample"
    assert p["object"] == INSTANCE and [o["interface"] for o in p["objrefs"]] == ["IWbemRemoteRefresher",
                                                                                  "IWbemClassObject"]
    assert out.params[1]["value"]["name"] == "WBEM_REFRESHER_VERSION"
    # an m_lType that contradicts the union's discriminant is reported, the rest still decoded
    bad = bytearray(stub)
    struct.pack_into("<i", bad, 8, 6)
    out = wmi.decode_stub("IWbemRefreshingServices", "AddObjectToRefresher", bytes(bad), response=True)
    assert [(e.offset, e.reason) for e in out.errors] == [(12, "discriminant 3 differs from m_lType 6")]
    assert out.params[0]["error"]["offset"] == 12 and out.params[0]["object"] == INSTANCE
    assert out.params[1]["value"]["value"] == 2


def test_optimized_indicate_carries_an_objectarray():
    """After WBEM_S_NEW_STYLE the sink receives an ObjectArray (bPacketType 0) instead of
    interface pointers; whatever framing comes before it, the decoder finds it."""
    packet = oa.build_object_array([INSTANCE, INSTANCE], packet_type=oa.PacketType.INDICATE)
    w = NdrWriter()
    write_orpcthis(w, "8e2416fe-0a3f-42be-a9b0-f30624c94619")
    w.i32(2)
    w.u32(len(packet))
    w.count(len(packet))
    w.raw(packet)
    state = _State()
    out = wmi.decode_stub("IWbemObjectSink", "Indicate", w.getvalue(), state=state)
    assert out.errors == []
    p = out.params[1]
    assert p["encoding"] == "ObjectArray" and p["value"]["ObjectArray"]["bPacketType"] == "INDICATE"
    assert [o.get("Name") for o in p["object"].objects] == ["first", "first"]
    assert len(state.cache) == 1
    # and the ordinary Indicate still reads as interface pointers
    stub = wmi.encode_request("IWbemObjectSink", "Indicate", {"apObjArray": [INSTANCE, CLASS]})
    out = wmi.decode_stub("IWbemObjectSink", "Indicate", stub)
    assert out.values["lObjectCount"] == 2 and out.params[1]["object"] == [INSTANCE, CLASS]


# ---------------------------------------------------------------------------------------
# WmiDecoder on Call records

def _call(interface, method, req, resp, fault=None, opnum=None):
    info = I.interface_by_name(interface)
    plan = wmi.method_plan(interface, method)
    c = Call(conn=0, call_id=1, client=("10.0.0.1", 50000), server=("10.0.0.2", 135),
             interface_uuid=info["uuid"], opnum=plan.opnum if opnum is None else opnum,
             req_frames=(10, 10), resp_frames=(11, 12), req_stub=req, resp_stub=resp, fault=fault)
    DcomDecoder().decode_call(c)
    wmi.WmiDecoder().decode_call(c)
    return c


def test_decoder_fills_the_call_record():
    req = wmi.encode_request("IWbemServices", "ExecQuery", {"strQueryLanguage": "WQL", "strQuery": "SELECT 1",
                                                            "lFlags": 48})
    resp = wmi.encode_response("IWbemServices", "ExecQuery", {"ppEnum": _objref("IEnumWbemClassObject")})
    c = _call("IWbemServices", "ExecQuery", req, resp)
    assert c.errors == []
    assert c.decoded["request"]["params"][1]["value"] == "SELECT 1"
    assert c.decoded["response"]["params"][0]["objref"]["interface"] == "IEnumWbemClassObject"
    assert c.decoded["response"]["return"]["name"] == "WBEM_S_NO_ERROR"
    # a fault has no response stub to decode; an unknown opnum is a note
    c = _call("IWbemServices", "ExecQuery", req, None, fault=0x1C010003)
    assert "params" not in c.decoded.get("response", {}) and c.errors == []
    c = _call("IWbemServices", "ExecQuery", req, resp, opnum=77)
    assert any("opnum 77" in n for n in c.decoded["notes"])


def test_truncated_and_mutated_stubs_give_located_errors():
    req = wmi.encode_request("IWbemServices", "ExecMethod", {
        "strObjectPath": "Win32_Process", "strMethodName": "Create", "pInParams": PARAMS,
        "ppOutParams": wmi.REF_TO_NULL})
    c = _call("IWbemServices", "ExecMethod", req[:90], None)
    assert [e.stage for e in c.errors] == ["wmi"] and c.errors[0].frame == 10
    assert c.errors[0].structure == "IWbemServices::ExecMethod.strMethodName" and c.errors[0].offset is not None
    params = c.decoded["request"]["params"]
    assert params[0]["value"] == "Win32_Process" and params[1]["error"]
    assert all(p["error"]["reason"].startswith("not decoded") for p in params[2:])
    # a broken object does not stop the parameters after it
    i = req.index(b"\x78\x56\x34\x12")                    # the EncodingUnit signature
    bad = req[:i + 12] + b"\xff\xff\xff\x7f" + req[i + 16:]
    c = _call("IWbemServices", "ExecMethod", bad, None)
    assert c.errors and c.errors[0].offset >= i
    names = [p["name"] for p in c.decoded["request"]["params"] if "error" not in p]
    assert names == ["strObjectPath", "strMethodName", "lFlags", "pCtx", "ppOutParams", "ppCallResult"]


def _stubs():
    out = []
    for interface, method in METHODS:
        for direction in ("request", "response"):
            v = direction_values(RandChooser(3), interface, method, direction == "response")
            if direction == "request":
                out.append((interface, method, False, wmi.encode_request(interface, method, v)))
            else:
                out.append((interface, method, True, wmi.encode_response(interface, method, v)))
    return out


def test_fuzz_built_stubs_bounded_and_located():
    rnd = random.Random(1234)
    stubs = [s for s in _stubs() if len(s[3]) > 40]
    for interface, method, response, stub in stubs:   # first-use costs are no mutation's work
        wmi.decode_stub(interface, method, stub, response=response)
    n_err = 0
    for k in range(400):
        interface, method, response, stub = rnd.choice(stubs)
        b = bytearray(stub)
        op = k % 4
        if op == 0:
            b = b[:rnd.randrange(24, len(b))]
        elif op == 1:
            for _ in range(rnd.randint(1, 4)):
                b[rnd.randrange(32, len(b))] = rnd.randrange(256)
        elif op == 2:
            at = rnd.randrange(32, len(b) - 4) & ~3
            b[at:at + 4] = rnd.choice([b"\xff\xff\xff\xff", b"\xff\xff\xff\x7f", b"\x00\x00\x01\x00"])
        else:
            at = rnd.randrange(32, len(b))
            b[at:at] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 9)))
        with linear_in(len(b)):   # bounded: no count honoured, no rescan, whatever the mutation
            out = wmi.decode_stub(interface, method, bytes(b), response=response)
        for e in out.errors:
            assert e.structure and 0 <= e.offset <= len(b)
        n_err += bool(out.errors)
        assert out.params or out.header is None or not (
            wmi.method_plan(interface, method).response if response else wmi.method_plan(interface, method).request)
    assert n_err > 100


def test_hostile_counts_cost_nothing():
    """Conformances of 2**32-1 against a small stub: refused at once, not allocated."""
    w = NdrWriter()
    write_orpcthis(w, "8e2416fe-0a3f-42be-a9b0-f30624c94619")
    w.i32(0x7FFFFFFF)
    w.u32(0xFFFFFFFF)
    with linear_in(len(w.getvalue())):   # refused before looping or allocating
        out = wmi.decode_stub("IWbemObjectSink", "Indicate", w.getvalue())
    assert out.errors and "count" in out.errors[0].reason
    w = NdrWriter()
    write_orpcthis(w, "8e2416fe-0a3f-42be-a9b0-f30624c94619")
    w.u32(0x20000)
    w.u32(0x7FFFFFF0)                 # a wstring max count far beyond the stub
    out = wmi.decode_stub("IWbemLoginClientID", "SetClientInfo", w.getvalue())
    assert out.errors and out.errors[0].offset == 36


def test_single_pointer_form_of_an_inout_interface_pointer():
    """Hand-built stubs may send [in,out,unique] IWbemClassObject** as one pointer: read, with a note."""
    w = NdrWriter()
    w.u32(0)
    w.referent(False)                               # ORPCTHAT
    w.interface_pointer(interpreter._objref_bytes(CLASS))   # one pointer, not two
    w.referent(False)
    w.u32(0)
    out = wmi.decode_stub("IWbemServices", "GetObject", w.getvalue(), response=True)
    assert out.errors == [] and out.values["ppObject"] == CLASS and out.values["ppCallResult"] is None
    assert any("one pointer" in n for n in out.notes)
    # the IDL form is not mistaken for it
    stub = wmi.encode_response("IWbemServices", "GetObject", {"ppObject": CLASS})
    out = wmi.decode_stub("IWbemServices", "GetObject", stub, response=True)
    assert out.values["ppObject"] == CLASS and out.notes == []


def test_objects_render_as_json():
    stub = wmi.encode_request("IWbemObjectSink", "Indicate", {"apObjArray": [INSTANCE, None]})
    p = wmi.decode_stub("IWbemObjectSink", "Indicate", stub).params[1]
    assert wmi.object_json(p["object"])[0]["path"] == 'Win32_Sample.Name="first"'
    assert wmi.object_json(p["object"])[1] is None
    assert wmi.object_json(CONTEXT)["properties"][0]["name"] == "__ProviderArchitecture"
    assert wmi.object_json(oa.parse_object_array(OBJECT_ARRAYS[1]))["dwNumObjects"] == 1
