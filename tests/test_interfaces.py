"""The interface table against the MS-WMI IDL text itself, and its JSON form."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from wmiscope.spec import interfaces as I

SPEC = Path(__file__).resolve().parents[2] / "shared" / "spec" / "MS-WMI.txt"

_UUID = re.compile(r"uuid\(\s*([0-9A-Fa-f-]{36})\s*\)")
_IFACE = re.compile(r"interface\s+(\w+)\s*:\s*(\w+)")
_COCLASS = re.compile(r"\bcoclass\s+\w+")
_METHOD = re.compile(r"HRESULT\s+(\w+)\s*\((.*?)\)\s*;", re.S)


def _split_params(text: str) -> list[str]:
    """Split a parameter list on the commas outside [] and ()."""
    out, depth, cur = [], 0, []
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur))
    return [p.strip() for p in out if p.strip()]


def _param(p: str) -> tuple[str, str]:
    attrs = re.match(r"\[(.*?)\]", p, re.S)
    a = {x.split("(")[0].strip() for x in attrs.group(1).split(",")} if attrs else set()
    direction = "inout" if {"in", "out"} <= a else ("out" if "out" in a else "in")
    name = re.findall(r"(\w+)\s*$", p)[0]
    return name, direction


def _parse_idl(text: str) -> dict[str, dict]:
    """{interface name: {"uuid", "base", "methods": [(opnum, name, [(param, dir)])]}} from IDL text,
    page-break debris (``` lines) tolerated: a method belongs to the last interface declared."""
    text = "\n".join(l for l in text.splitlines() if l.strip() != "```")
    events = []
    for rx, kind in ((_UUID, "uuid"), (_IFACE, "iface"), (_COCLASS, "coclass"), (_METHOD, "method")):
        events += [(m.start(), kind, m) for m in rx.finditer(text)]
    out: dict[str, dict] = {}
    last_uuid, cur = None, None
    for _, kind, m in sorted(events, key=lambda e: e[0]):
        if kind == "uuid":
            last_uuid = m.group(1).lower()
        elif kind == "coclass":
            last_uuid = None
        elif kind == "iface":
            name, base = m.group(1), m.group(2)
            first = 3 if base == "IUnknown" else 3 + len(out[base]["methods"])
            cur = out[name] = {"uuid": last_uuid, "base": base, "methods": [], "next": first}
            last_uuid = None
        elif kind == "method" and cur is not None:
            params = [_param(p) for p in _split_params(m.group(2))]
            cur["methods"].append((cur["next"], m.group(1), params))
            cur["next"] += 1
    return out


@pytest.fixture(scope="module")
def spec_text() -> str:
    assert SPEC.exists(), f"MS-WMI text expected at {SPEC}"
    return SPEC.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def idl(spec_text) -> dict[str, dict]:
    start = spec_text.index("6 Appendix A: Full IDL")
    end = spec_text.index("Appendix B: Product Behavior", start)
    return _parse_idl(spec_text[start:end])


def _own_params(m: dict) -> list[tuple[str, str]]:
    return [(p["name"], p["dir"]) for p in m["params"] if not p.get("implicit")]


def test_idl_parse_sees_every_wmi_interface(idl):
    # the parser itself must find what Appendix A declares, or the comparisons below prove nothing
    assert set(idl) == {
        "IWbemClassObject", "IWbemObjectSink", "IEnumWbemClassObject", "IWbemContext", "IWbemCallResult",
        "IWbemServices", "IWbemBackupRestore", "IWbemBackupRestoreEx", "IWbemRemoteRefresher",
        "IWbemRefreshingServices", "IWbemWCOSmartEnum", "IWbemFetchSmartEnum", "IWbemLoginClientID",
        "IWbemLevel1Login", "IWbemLoginHelper"}
    assert len(idl["IWbemServices"]["methods"]) == 23
    assert sum(len(i["methods"]) for i in idl.values()) == 55


def test_every_idl_interface_uuid_opnum_and_parameter_is_in_the_table(idl):
    checked = 0
    for name, spec in idl.items():
        entry = I.interface_by_uuid(spec["uuid"])
        assert entry is not None, f"{name} {spec['uuid']} missing"
        assert entry["name"] == name
        assert entry["base"] == spec["base"]
        for opnum, mname, params in spec["methods"]:
            m = I.method(spec["uuid"], opnum)
            assert m is not None and m["name"] == mname, (name, opnum, mname)
            assert _own_params(m) == params, (name, mname)
            checked += 1
        if not spec["methods"]:
            assert entry["local"] and entry["custom_marshal"]["clsid"]
    assert checked == 55


def test_section_3_1_4_interfaces_outside_the_idl(spec_text):
    """IWbemShutdown, IUnsecuredApartment, IWbemUnsecuredApartment are only in 3.1.4.14-16."""
    body = spec_text[spec_text.index("3.1.4.14 IWbemShutdown Interface\n"):
                     spec_text.index("3.1.4.17 Abstract Provider Interface\n")]
    methods = {m.group(1): [_param(p) for p in _split_params(m.group(2))] for m in _METHOD.finditer(body)}
    assert set(methods) == {"Shutdown", "CreateObjectStub", "CreateSinkStub"}
    for iface, mname in (("IWbemShutdown", "Shutdown"), ("IUnsecuredApartment", "CreateObjectStub"),
                         ("IWbemUnsecuredApartment", "CreateSinkStub")):
        e = I.interface_by_name(iface)
        assert I.method_name(e["uuid"], 3) == mname
        assert _own_params(I.method(e["uuid"], 3)) == methods[mname]
    uuids = dict(re.findall(r"The `?(\w+)`? interface allows .*? UUID \{([0-9a-fA-F-]{36})\}", body))
    assert I.interface_by_name("IUnsecuredApartment")["uuid"] == uuids["IUnsecuredApartment"].lower()
    assert I.interface_by_name("IWbemUnsecuredApartment")["uuid"] == uuids["IWbemUnsecuredApartment"].lower()
    # the spec prints IWbemLevel1Login's UUID for IWbemShutdown: that UUID must keep naming IWbemLevel1Login
    assert uuids["IWbemShutdown"].lower() == "f309ad18-d86a-11d0-a075-00c04fb68820"
    assert I.interface_by_uuid(uuids["IWbemShutdown"])["name"] == "IWbemLevel1Login"
    assert I.interface_by_name("IWbemShutdown")["uuid"] == "b7b31df9-d515-11d3-a11c-00105a1f515a"


def test_uuids_stated_in_section_3_match(spec_text):
    stated = re.findall(r"^The `?(\w+)`? interface .*?(?:uniquely )?identified by (?:the )?UUID \{([0-9a-fA-F-]{36})\}",
                        spec_text, re.M)
    stated += re.findall(r"^(IWbem\w+) MUST be a DCOM .*?UUID \{([0-9a-fA-F-]{36})\}", spec_text, re.M)
    assert len(stated) >= 8
    for name, u in stated:
        if name == "IWbemShutdown":
            continue
        assert I.interface_by_name(name)["uuid"] == u.lower(), name


@pytest.mark.parametrize("uuid, opnum, name", [
    ("9556dc99-828c-11cf-a37e-00aa003240c7", 3, "OpenNamespace"),
    ("9556dc99-828c-11cf-a37e-00aa003240c7", 25, "ExecMethodAsync"),
    ("{9556DC99-828C-11CF-A37E-00AA003240C7}", 20, "ExecQuery"),
    ("9556dc99-828c-11cf-a37e-00aa003240c7", 0, "QueryInterface"),   # IUnknown's, inherited
    ("a359dec5-e813-4834-8a2a-ba7f1d777d76", 4, "Restore"),          # IWbemBackupRestore's, inherited
    ("000001a0-0000-0000-c000-000000000046", 4, "RemoteCreateInstance"),
    ("000001a0-0000-0000-c000-000000000046", 3, "RemoteGetClassObject"),
    ("99fcfec4-5260-101b-bbcb-00aa0021347a", 5, "ServerAlive2"),
    ("99fcfec4-5260-101b-bbcb-00aa0021347a", 4, "ResolveOxid2"),
    ("00000143-0000-0000-c000-000000000046", 5, "RemRelease"),
    ("00000143-0000-0000-c000-000000000046", 6, "RemQueryInterface2"),
    ("00020400-0000-0000-c000-000000000046", 6, "Invoke"),
    ("9f6c78ef-fce5-42fa-abea-3e7df91921dc", 3, "SetClientInfoEx"),
    ("4d9f4ab8-7d1c-11cf-861e-0020af6e7c57", 0, "RemoteActivation"),
])
def test_method_names(uuid, opnum, name):
    assert I.method_name(uuid, opnum) == name


def test_unknowns_are_none():
    assert I.method_name("9556dc99-828c-11cf-a37e-00aa003240c7", 26) is None
    assert I.method_name("e1af8308-5d1f-11c9-91a4-08002b14a0fa", 99) is None  # EPM has no opnum 99
    assert I.method_name("00000000-1111-2222-3333-444444444444", 3) is None
    assert I.interface_by_uuid(None) is None
    assert I.method_name(None, None) is None


def test_orpc_and_plain_rpc_interfaces():
    assert I.is_orpc("9556dc99-828c-11cf-a37e-00aa003240c7")
    assert I.is_orpc("00000143-0000-0000-c000-000000000046")
    for plain in ("000001a0-0000-0000-c000-000000000046", "99fcfec4-5260-101b-bbcb-00aa0021347a",
                  "4d9f4ab8-7d1c-11cf-861e-0020af6e7c57"):
        assert not I.is_orpc(plain)
    ntlm = I.method("f309ad18-d86a-11d0-a075-00c04fb68820", 6)
    assert [p["type"] for p in ntlm["params"]] == [
        "ORPCTHIS", "ORPCTHAT", "unique<wstring>", "unique<wstring>", "long", "IWbemContext*", "IWbemServices*"]
    assert I.derives_from("00000143-0000-0000-c000-000000000046", "00000131-0000-0000-c000-000000000046")
    assert not I.derives_from("00000131-0000-0000-c000-000000000046", "00000143-0000-0000-c000-000000000046")


def test_clsids_and_transfer_syntaxes():
    assert I.clsid_name("8BC3F05E-D86B-11D0-A075-00C04FB68820") == "WbemLevel1Login"
    assert I.clsid_name("4590f812-1d3a-11d0-891f-00aa004b2e24") == "WbemClassObject unmarshaler"
    assert I.clsid_name("674b6698-ee92-11d0-ad71-00c04fd8fdff") == "WbemContext unmarshaler"
    assert I.clsid_name("00000338-0000-0000-c000-000000000046") == "ActivationPropertiesIn"
    assert I.transfer_syntax_name("8a885d04-1ceb-11c9-9fe8-08002b104860") == "NDR"
    assert I.transfer_syntax_name("71710533-beba-4937-8319-b5dbef9ccc36") == "NDR64"
    assert I.transfer_syntax_name("6cb71c2c-9812-4540-0300-000000000000") == "Bind time feature negotiation"


_PRIMS = {"byte", "ushort", "short", "ulong", "long", "uhyper", "hyper", "float", "double", "HRESULT",
          "error_status_t", "GUID", "wstring", "string", "BSTR", "MInterfacePointer"}


def _type_ok(t: str, names: set[str]) -> bool:
    """Every type string is in the documented vocabulary."""
    if t in _PRIMS or t in I.STRUCTS:
        return True
    if t.endswith("*"):
        return t[:-1] in names or t[:-1] == "ITypeInfo"
    m = re.fullmatch(r"(unique|array|varray)<(.+)>", t)
    if not m:
        return False
    inner = m.group(2)
    depth, parts, cur = 0, [], ""
    for ch in inner:
        depth += ch == "<"
        depth -= ch == ">"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return _type_ok(parts[0], names)


def test_json_dump_is_valid_and_complete():
    data = json.loads(I.to_json())
    assert [i["name"] for i in data["interfaces"]] == [i["name"] for i in I.INTERFACES]
    names = {i["name"] for i in data["interfaces"]}
    assert {"IWbemLevel1Login", "IWbemLoginClientID", "IWbemLoginClientIDEx", "IWbemLoginHelper", "IWbemServices",
            "IEnumWbemClassObject", "IWbemCallResult", "IWbemFetchSmartEnum", "IWbemWCOSmartEnum",
            "IWbemObjectSink", "IWbemRefreshingServices", "IWbemRemoteRefresher", "IWbemBackupRestore",
            "IWbemBackupRestoreEx", "IWbemShutdown", "IUnsecuredApartment", "IWbemUnsecuredApartment",
            "IWbemClassObject", "IWbemContext", "IRemoteSCMActivator", "IActivation", "IObjectExporter",
            "IRemUnknown", "IRemUnknown2", "IUnknown", "IDispatch"} <= names
    assert len({i["uuid"] for i in data["interfaces"]}) == len(data["interfaces"])
    n_methods = 0
    for i in data["interfaces"]:
        assert i["group"] in ("wmi", "dcom", "rpc")
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", i["uuid"])
        assert i["base"] is None or i["base"] in names
        opnums = [m["opnum"] for m in i["methods"]]
        assert len(set(opnums)) == len(opnums)
        for m in i["methods"]:
            n_methods += 1
            for p in m["params"]:
                assert p["dir"] in ("in", "out", "inout")
                assert _type_ok(p["type"], names), (i["name"], m["name"], p)
    assert n_methods >= 55 + 4 + 3 + 5 + 1 + 6 + 3 + 1 + 4
    assert {c["name"] for c in data["clsids"]} >= {"WbemLevel1Login", "WbemClassObject unmarshaler",
                                                   "WbemContext unmarshaler"}
    assert len(data["transfer_syntaxes"]) == 3
