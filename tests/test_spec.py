"""The neutral spec layer (wmiscope/spec/): plain data, importing nothing of ours, exported whole.

A generator outside Python (the Wireshark Lua plugin) sees only the JSON export, so every
name the decoders and renderers look up in the tables must be in it; and the layers must
depend one way only (spec <- formats <- dissectors), or the table cannot be read alone.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from wmiscope.spec import interfaces as I

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "wmiscope" / "spec"
CODE = [*sorted((ROOT / "dissectors").glob("*.py")), *sorted((ROOT / "formats").glob("*.py")),
        *sorted((ROOT / "wmiscope").rglob("*.py"))]


def _imports(path: Path) -> list[tuple[int, str]]:
    """(level, module) of every import in a file; level > 0 for relative imports."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            out.append((node.level, node.module or ""))
        elif isinstance(node, ast.Import):
            out += [(0, a.name) for a in node.names]
    return out


def test_spec_layer_imports_nothing_of_ours():
    for path in SPEC.glob("*.py"):
        for level, module in _imports(path):
            assert level in (0, 1), (path.name, level, module)          # only siblings in the spec layer
            if level == 0:
                assert module.split(".")[0] not in ("wmiscope", "formats", "dissectors"), (path.name, module)


def test_formats_import_nothing_from_dissectors():
    for path in (ROOT / "formats").glob("*.py"):
        for level, module in _imports(path):
            assert "dissectors" not in module, (path.name, module)


def test_no_import_fallbacks_for_our_own_modules():
    for path in CODE:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Try) and any(
                    isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in node.handlers):
                ours = [m for lvl, m in (_imports_of(node.body)) if lvl or m.startswith("wmiscope")]
                assert not ours, f"{path.relative_to(ROOT)}: except ImportError around {ours}"


def _imports_of(body) -> list[tuple[int, str]]:
    return [(n.level, n.module or "") for s in body for n in ast.walk(s) if isinstance(n, ast.ImportFrom)]


def _export() -> dict:
    return json.loads(I.to_json())


def _names_used(call: str) -> set[str]:
    """Every literal name passed to `call("...")` anywhere in the code."""
    pattern = re.compile(rf"\b{call}\(\s*\"([^\"]+)\"")
    return {m for path in CODE for m in pattern.findall(path.read_text())}


def test_every_name_the_code_looks_up_is_in_the_export():
    data = _export()
    interfaces = {i["name"] for i in data["interfaces"]}
    clsids = {c["name"] for c in data["clsids"]}
    used_uuids = _names_used("uuid_of")
    assert {"IWbemContext", "WbemClassObject unmarshaler", "IRemUnknown2"} <= used_uuids
    assert used_uuids <= interfaces | clsids, used_uuids - interfaces - clsids

    values = {v[0] for e in data["enums"].values() for v in e["values"]}
    values |= {h["name"] for table in data["hresults"].values() for h in table}
    used_values = _names_used("value_of")
    assert {"WBEM_FLAG_RETURN_IMMEDIATELY", "WBEM_S_NEW_STYLE"} <= used_values
    assert used_values <= values, used_values - values


def test_enum_references_and_special_parameters_resolve_in_the_export():
    data = _export()
    enums = set(data["enums"]) | {"HRESULT"}
    for row in data["param_enums"] + data["field_enums"]:
        assert set(row["enums"]) <= enums, row
    methods = {(i["name"], m["name"]): {p["name"] for p in m["params"]}
               for i in data["interfaces"] for m in i["methods"]}
    for row in data["param_enums"]:
        if row["method"] != "*":
            assert row["param"] in methods[(row["interface"], row["method"])], row
    for row in data["field_enums"]:
        assert row["field"] in {f for f, _ in data["structs"][row["struct"]]["fields"]}, row
    assert {s["encoding"] for s in data["special_params"]} == {"object_array", "refreshed_objects", "indicate"}
    for s in data["special_params"]:
        assert s["param"] in methods[(s["interface"], s["method"])], s


def test_export_carries_status_codes_and_dcom_constants():
    data = _export()
    by_value = {h["value"]: h["name"] for h in data["hresults"]["wbemstatus"]}
    assert by_value[0x80041003] == "WBEM_E_ACCESS_DENIED"
    assert any(h["name"] == "E_ACCESSDENIED" for h in data["hresults"]["erref"])
    assert data["enums"]["WBEM_GENERIC_FLAG_TYPE"]["kind"] == "flags"
    assert data["dcom"]["tower_ids"]["7"] == "ncacn_ip_tcp"
    assert [f["name"] for f in data["dcom"]["objref_flags"]] == ["OBJREF_STANDARD", "OBJREF_HANDLER",
                                                                  "OBJREF_CUSTOM", "OBJREF_EXTENDED"]
    assert data["dcom"]["objref_signature"].to_bytes(4, "little") == b"MEOW"
