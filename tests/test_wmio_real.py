"""MS-WMIO objects cut by tshark out of real Windows captures."""

from __future__ import annotations

import json
import random
import struct

import pytest

import tshark_util as t
from wmiscope.formats import DecodeError, wmio
from wmiscope.formats.cim import CIM_INHERITED_FLAG, CimType

pytestmark = pytest.mark.skipif(not t.have_tshark(), reason="tshark not installed")

ALL = [
    ("impacket_wmiexec.pcapng", f) for f in (66, 69, 71, 91, 93, 115, 117)
] + [
    ("invoke-wmiexec.pcap", f) for f in (106, 129, 131)
] + [
    ("wmiexecpro-create-start-service.pcap", f) for f in (84, 114, 117, 188)
] + [
    ("wmimplant.pcap", f) for f in (201, 203, 357, 375, 376, 668)
]


def unit(cap: str, frame: int) -> bytes:
    (u,) = t.encoding_units(t.stub(cap, frame))
    return u


def obj(cap: str, frame: int):
    return wmio.parse_encoding_unit(unit(cap, frame))


@pytest.fixture(scope="module")
def win32_process():
    return obj("impacket_wmiexec.pcapng", 66)


def test_win32_process_class(win32_process):
    c = win32_process
    assert (c.name, c.superclass) == ("Win32_Process", "CIM_Process")
    assert c.derivation == ["CIM_Process", "CIM_LogicalElement", "CIM_ManagedSystemElement"]
    assert c.decoration == ("WIN-KCBVCO95HFV", "ROOT\\CIMV2")
    assert len(c.properties) == 45
    names = {p.name for p in c.properties}
    assert {"Handle", "CommandLine", "ProcessId", "ParentProcessId", "ExecutablePath", "CreationDate"} <= names
    handle = c.get_property("Handle")
    assert handle.is_key and handle.type_name == "string" and handle.qualifier("CIMTYPE") == "string"
    assert handle.qualifier("MaxLen") == 256 and handle.inherited and handle.origin == 2
    assert [p.name for p in c.key_properties] == ["Handle"]
    assert c.get_property("CreationDate").type_name == "datetime"
    assert c.get_property("ProcessId").type_name == "uint32" and not c.get_property("ProcessId").inherited
    assert c.get_property("CommandLine").cimtype == CimType.STRING
    assert c.get_property("Caption").cimtype == CimType.STRING | CIM_INHERITED_FLAG
    assert c.qualifier("provider") == "CIMWin32" and c.qualifier("dynamic") is True
    assert c.qualifier("UUID") == "{8502C4DC-5FBB-11D2-AAC1-006008C78BC7}"
    # the ParentClass part is CIM_Process itself (2.2.12)
    assert c.parent.name == "CIM_Process" and len(c.parent.properties) == 18
    # this server's Win32_Process has six methods (no GetAvailableVirtualSize)
    assert [m.name for m in c.methods] == ["Create", "Terminate", "GetOwner", "GetOwnerSid",
                                           "SetPriority", "AttachDebugger"]


def test_win32_process_create_signature(win32_process):
    create = win32_process.get_method("Create")
    assert create.qualifier("Static") is True and create.qualifier("Constructor") is True
    assert create.qualifier("Privileges") == ["SeAssignPrimaryTokenPrivilege", "SeIncreaseQuotaPrivilege",
                                              "SeRestorePrivilege"]
    ins, outs = create.in_params, create.out_params
    assert ins.name == outs.name == "__PARAMETERS"
    assert [(p.name, p.type_name) for p in ins.properties] == [
        ("CommandLine", "string"), ("CurrentDirectory", "string"),
        ("ProcessStartupInformation", "object:Win32_ProcessStartup")]
    assert [p.qualifier("ID") for p in ins.properties] == [0, 1, 2]
    assert [(p.name, p.type_name) for p in outs.properties] == [("ProcessId", "uint32"), ("ReturnValue", "uint32")]
    # Windows names the signature objects' build machine in their Decoration
    assert ins.decoration is not None and ins.decoration[1] == "ROOT\\CIMV2"
    assert win32_process.get_method("AttachDebugger").in_params is None


def test_win32_process_mof_and_json(win32_process):
    mof = wmio.to_mof(win32_process)
    assert "class Win32_Process : CIM_Process" in mof
    assert "[key, read, MaxLen(256)] string Handle;" in mof
    assert "uint32 Create([in, " in mof and "] string CommandLine" in mof
    assert "[out, " in mof and "] uint32 ProcessId);" in mof
    assert "Win32_ProcessStartup ProcessStartupInformation" in mof
    assert 'provider("CIMWin32")' in mof
    j = wmio.to_json(win32_process)
    json.dumps(j)
    handle = [p for p in j["properties"] if p["name"] == "Handle"][0]
    assert handle["key"] and handle["type"] == "string" and handle["inherited"]
    create = [m for m in j["methods"] if m["name"] == "Create"][0]
    assert [p["name"] for p in create["in"]["properties"]][0] == "CommandLine"


def test_create_in_params_impacket_utf16():
    inst = obj("impacket_wmiexec.pcapng", 115)
    assert inst.class_.name == "__PARAMETERS"
    assert inst.get("CommandLine") == r"cmd.exe /Q /c whoami 1> \\127.0.0.1\ADMIN$\__1683291962.56 2>&1"
    assert inst.get("CurrentDirectory") == "C:\\"
    assert inst.get("ProcessStartupInformation") is None and inst.is_default("ProcessStartupInformation")
    # impacket writes string values in the UTF-16 form of Encoded-String (flag 1)
    assert _string_flag(unit("impacket_wmiexec.pcapng", 115), "CommandLine") == 1
    out = obj("impacket_wmiexec.pcapng", 117)
    assert (out.get("ProcessId"), out.get("ReturnValue")) == (2692, 0)


def _string_flag(u: bytes, prop: str) -> int:
    """Encoded-String-Flag of a string property's value in an instance."""
    raw = wmio.parse_raw(u).ObjectBlock.InstanceType
    inst = wmio.parse_encoding_unit(u)
    p = inst.class_.get_property(prop)
    (ref,) = struct.unpack_from("<I", raw.InstanceData, p.value_table_offset)
    return raw.InstanceHeap.HeapItem[ref]


def test_win32_environment_putinstance_compressed_strings():
    inst = obj("wmimplant.pcap", 203)
    assert inst.class_.name == "Win32_Environment"
    assert inst.get("Name") == "puFHs"
    assert inst.get("UserName") == "picklesworth\\administrator"
    assert inst.get("VariableValue").startswith(
        "$fct = Get-Content -Encoding byte -ReadCount 0 -Path 'C:\\shimcache.reg'")
    # the same path GetResultString returns in frame 215
    assert inst.path == 'Win32_Environment.Name="puFHs",UserName="picklesworth\\\\administrator"'
    assert inst.get("SystemVariable") is None and inst.is_default("SystemVariable")
    # a Windows client writes the one-octet form (flag 0)
    assert _string_flag(unit("wmimplant.pcap", 203), "Name") == 0
    assert "instance of Win32_Environment" in wmio.to_mof(inst) and 'Name = "puFHs";' in wmio.to_mof(inst)


def test_win32_service_create_in_params():
    inst = obj("wmiexecpro-create-start-service.pcap", 114)
    assert (inst.get("Name"), inst.get("DisplayName"), inst.get("PathName"), inst.get("StartMode"),
            inst.get("StartName")) == ("test", "For test", r"C:\windows\system32\calc.exe", "Automatic",
                                        "LocalSystem")
    assert inst.get("DesktopInteract") is False and inst.get("ServiceType") == 16
    assert inst.get("ServiceDependencies") == []
    assert obj("wmiexecpro-create-start-service.pcap", 117).get("ReturnValue") == 0


def test_win32_service_class_and_instance():
    c = obj("wmiexecpro-create-start-service.pcap", 84)
    assert c.name == "Win32_Service" and c.decoration == ("SNICKLEFRITZ", "ROOT\\cimv2")
    assert {"StartService", "StopService", "Create", "Change", "Delete"} <= {m.name for m in c.methods}
    assert [p.name for p in c.get_method("Create").in_params.properties][:3] == [
        "DesktopInteract", "DisplayName", "ErrorControl"]
    svc = obj("wmiexecpro-create-start-service.pcap", 188)
    assert (svc.get("Name"), svc.get("State"), svc.get("StartMode"), svc.get("SystemName")) == (
        "test", "Stopped", "Auto", "SNICKLEFRITZ")
    assert svc.path == 'Win32_Service.Name="test"'


def test_invoke_wmiexec_ipconfig():
    inst = obj("invoke-wmiexec.pcap", 129)
    assert inst.get("CommandLine") == "ipconfig"
    assert obj("invoke-wmiexec.pcap", 106).decoration == ("CHIP_DOUGLAS-PC", "ROOT\\cimv2")


def test_stdregprov_class_and_big_out_params():
    c = obj("wmimplant.pcap", 357)
    assert c.name == "StdRegProv" and c.properties == []
    gsv = c.get_method("GetStringValue")
    hdef = gsv.in_params.get_property("hDefKey")
    assert hdef.value == 0x80000002 and not hdef.null       # default HKEY_LOCAL_MACHINE
    assert [p.name for p in gsv.out_params.properties] == ["ReturnValue", "sValue"]
    big = obj("wmimplant.pcap", 668)                        # 868 KB reply
    assert big.get("ReturnValue") == 0 and len(big.get("sValue")) == 867596


@pytest.mark.parametrize("cap,frame", ALL)
def test_rebuild_gives_windows_bytes(cap, frame):
    u = unit(cap, frame)
    # the raw layer alone is lossless
    assert wmio.RawEncodingUnit.build(wmio.parse_raw(u)) == u
    o = wmio.parse_encoding_unit(u)
    assert wmio.build_encoding_unit(o) == u
    # our canonical layout decodes to the same model ...
    canon = wmio.build_encoding_unit(o, canonical=True)
    assert wmio.parse_encoding_unit(canon) == o
    # ... but is never Windows's: see test_where_windows_is_not_canonical
    assert canon != u


def _public(c, skip: set) -> dict:
    return {k: v for k, v in c.items() if k not in skip and k != "_io"}


@pytest.mark.parametrize("cap,frame", ALL)
def test_known_class_path_agrees_with_the_declarations(cap, frame, monkeypatch):
    """An object whose class part was decoded before skips parsing it again
    (wmio._instance_of_known_class); on every real object, what it gives must be what the
    whole parse through the declarations gives: the model, the JSON, the raw layer
    (the fields after the class part as parsed, the part the cache's) and the bytes
    built back."""
    u = unit(cap, frame)
    fast_path = wmio._instance_of_known_class
    monkeypatch.setattr(wmio, "_instance_of_known_class", lambda *a: None)
    whole = wmio.parse_encoding_unit(u)             # also leaves its class part in the cache
    monkeypatch.setattr(wmio, "_instance_of_known_class", fast_path)
    fast = fast_path(u, 8, 0, True)
    assert fast is not None
    assert fast == whole and fast.decoration == whole.decoration and fast.flags == whole.flags
    assert wmio.to_json(fast) == wmio.to_json(whole)
    if isinstance(whole, wmio.WmiInstance):
        assert fast.class_ is whole.class_
        assert _public(fast._raw, {"InstanceType"}) == _public(whole._raw, {"InstanceType"})
        assert _public(fast._raw.InstanceType, {"CurrentClass"}) == \
            _public(whole._raw.InstanceType, {"CurrentClass"})
    else:
        assert fast.parent == whole.parent and fast.methods == whole.methods
        assert _public(fast._raw, {"ClassType"}) == _public(whole._raw, {"ClassType"})
        assert wmio.RawObjectBlock.build(fast._raw) == wmio.RawObjectBlock.build(whole._raw)
    assert _public(fast._raw_unit, {"ObjectBlock"}) == _public(whole._raw_unit, {"ObjectBlock"})
    assert wmio.build_encoding_unit(fast) == u
    assert wmio.build_encoding_unit(fast, canonical=True) == wmio.build_encoding_unit(whole, canonical=True)
    # an instance cut short, or with a byte changed after its class part, is the whole
    # parse's to report: the fast path declines or agrees
    for bad in (u[:-3], u[:-1] + bytes([u[-1] ^ 0xFF])):
        try:
            expected = wmio.parse_encoding_unit(bad)
        except DecodeError:
            expected = None
        got = fast_path(bad, 8, 0, True)
        assert got is None or got == expected


def test_where_windows_is_not_canonical():
    """Why canonical builds differ from these encodings (all allowed by the spec):
    - ClassParts whose EncodingLength exceeds their fields (zero padding kept
      as ClassPart.Trailing), and octets after an instance's InstanceHeap;
    - heaps with unused octets and items in Windows's own order (2.2.66
      allows both);
    - NdTable slots past the last property set to 1."""
    u = unit("impacket_wmiexec.pcapng", 117)
    raw = wmio.parse_raw(u).ObjectBlock.InstanceType
    assert len(raw.CurrentClass.Trailing) > 0 and set(raw.CurrentClass.Trailing) == {0}
    assert raw.CurrentClass.NdTable[2] == 1      # __PARAMETERS has 2 properties
    canon = wmio.parse_raw(wmio.build_encoding_unit(obj("impacket_wmiexec.pcapng", 117), canonical=True))
    assert canon.ObjectBlock.InstanceType.CurrentClass.Trailing == b""
    u = unit("wmimplant.pcap", 203)
    raw = wmio.parse_raw(u).ObjectBlock.InstanceType
    assert len(raw.Trailing) > 0
    # the model is indifferent to all of that
    o = obj("wmimplant.pcap", 203)
    o.values["Name"] = "changed"
    again = wmio.parse_encoding_unit(wmio.build_encoding_unit(o))
    assert again.get("Name") == "changed" and again.get("UserName") == "picklesworth\\administrator"


def test_modified_real_object_falls_back_to_canonical():
    c = obj("impacket_wmiexec.pcapng", 66)
    c.get_property("Handle").qualifiers.append(wmio.Qualifier("Note", 0, CimType.STRING, "added"))
    b = wmio.build_encoding_unit(c)
    back = wmio.parse_encoding_unit(b)
    assert back.get_property("Handle").qualifier("Note") == "added"
    assert back == c


def test_noclass_against_real_class():
    svc = obj("wmiexecpro-create-start-service.pcap", 188)
    nc = wmio.build_instance_noclass(svc)
    back = wmio.parse_instance_noclass(nc, svc.class_)
    assert back.values == svc.values and back.decoration == ("SNICKLEFRITZ", "root\\cimv2")
    rng = random.Random(5)
    for _ in range(150):
        b = bytearray(nc)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        try:
            wmio.parse_instance_noclass(bytes(b[:rng.randrange(len(b) + 1)]), svc.class_)
        except DecodeError:
            pass


def test_real_encodings_fuzzed():
    rng = random.Random(99)
    outcomes = {"decoded": 0, "located error": 0}
    seeds = [unit("impacket_wmiexec.pcapng", 66), unit("wmimplant.pcap", 203), unit("impacket_wmiexec.pcapng", 115)]
    for _ in range(200):
        b = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(8, len(b) - 4)
            if rng.random() < 0.5:
                b[i] ^= 1 << rng.randrange(8)
            else:
                b[i:i + 4] = struct.pack("<I", rng.choice([0xFFFFFFFF, 0x80000003, 0x7FFFFFF0, rng.randrange(4096)]))
        try:
            wmio.to_json(wmio.parse_encoding_unit(bytes(b)))
            outcomes["decoded"] += 1
        except DecodeError as e:        # anything else fails the test
            assert e.structure and e.offset >= 0
            outcomes["located error"] += 1
    # Mutations both slip through as other values and break structures: the fuzzing reached both.
    assert outcomes["decoded"] > 0 and outcomes["located error"] > 0, outcomes


# --- independence: impacket's decoder on the same real bytes -----------------

def _impacket(u: bytes):
    from impacket.dcerpc.v5.dcom import wmi

    ob = wmi.ENCODING_UNIT(u)["ObjectBlock"]
    ob.parseObject()
    return ob.ctCurrent


def test_impacket_agrees_on_win32_process(win32_process):
    theirs = _impacket(unit("impacket_wmiexec.pcapng", 66))
    # impacket lists properties in DeclarationOrder; ours keep the
    # PropertyLookupTable order (sorted by name, as Windows writes it)
    assert list(theirs["properties"]) == [p.name for p in win32_process.declared()]
    assert [p.name for p in win32_process.properties] == sorted((p.name for p in win32_process.properties),
                                                               key=str.lower)
    for p in win32_process.properties:
        tp = theirs["properties"][p.name]
        assert (tp["type"], tp["order"], tp["qualifiers"]["CIMTYPE"]) == (p.cimtype, p.order, p.qualifier("CIMTYPE"))
    assert list(theirs["methods"]) == [m.name for m in win32_process.methods]
    for m in win32_process.methods:
        tm = theirs["methods"][m.name]
        assert list(tm["InParams"] or {}) == [p.name for p in (m.in_params.declared() if m.in_params else [])]
        assert list(tm["OutParams"] or {}) == [p.name for p in (m.out_params.declared() if m.out_params else [])]


@pytest.mark.parametrize("cap,frame", [("impacket_wmiexec.pcapng", 115), ("wmimplant.pcap", 203),
                                       ("wmiexecpro-create-start-service.pcap", 114),
                                       ("wmiexecpro-create-start-service.pcap", 188)])
def test_impacket_agrees_on_real_instances(cap, frame):
    ours = obj(cap, frame)
    theirs = _impacket(unit(cap, frame))["properties"]
    for p in ours.class_.properties:
        if p.name in ours.defaulted:
            continue  # impacket ignores the NdTable default bit (see test_wmio.py)
        v = ours.values[p.name]
        if p.base_type == CimType.BOOLEAN:
            v = None if v is None else str(v)
        assert theirs[p.name]["value"] == v, p.name
