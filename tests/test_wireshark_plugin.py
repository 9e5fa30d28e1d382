"""The generated Wireshark plugin, run in the real tshark, agrees with `wmiscope calls`.

One tshark run per capture (the real captures in ../shared/captures and the project's
samples, the sealed ones with their keys) reads the plugin's fields; the same capture
through `wmiscope calls --format jsonl` gives the calls. Call by call they must agree on
the frame, interface, method, namespace, query, object path, method name, class, every
ExecMethod in-parameter value and the HRESULT names. tshark's stderr must hold no Lua
error, and the built-in DCE/RPC and DCOM fields must be what they are without the plugin.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import re
import shutil
import os
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

import tshark_util
from tshark_util import CAPTURES, PCAPS, ROOT
from wmiscope import cli
from wmiscope.spec import interfaces as itf
from wmiscope.wireshark_plugin import render

PLUGIN = ROOT / "wireshark_lua" / "wmiscope.lua"
needs_tshark = pytest.mark.skipif(not tshark_util.have_tshark(), reason="tshark not installed")

FIELDS = ["frame.number", "wmi.interface", "wmi.method", "wmi.direction", "wmi.namespace", "wmi.class",
          "wmi.strQuery", "wmi.strObjectPath", "wmi.strMethodName", "wmi.status", "wmi.prop.name",
          "wmi.prop.value", "wmi.encrypted", "wmi.prop.CommandLine", "_ws.expert.message", "wmi.operation",
          "wmi.obj.class", "wmi.m_lCancelId", "wmi.m_lRequestId"]
SEP = "\x1f"


def _password():
    return tshark_util.generator().SAMPLE_PASSWORD


def _keys(path: Path) -> tuple[list[str], list[str]]:
    """(tshark options, wmiscope options) that decrypt a sealed sample."""
    secrets = tshark_util.sample_secrets()
    if path.name == "wmi-process-create-ntlm-sealed.pcap":
        return ["-o", f"ntlmssp.nt_password:{_password()}"], ["--credentials", str(secrets["wmi-sealed-samples.credentials"])]
    if path.name == "wmi-process-create-kerberos-sealed.pcap":
        keytab = secrets["wmi-process-create-kerberos.keytab"]
        return (["-o", "kerberos.decrypt:TRUE", "-o", f"kerberos.file:{keytab}"],
                ["--credentials", str(secrets["wmi-sealed-samples.credentials"])])
    return [], []


CASES = sorted(p for p in CAPTURES.glob("*") if p.suffix in (".pcap", ".pcapng", ".cap")) + sorted(PCAPS.glob("*.pcap"))


def tshark_fields(path: Path, options: list[str], tshark: list[str] | None = None, plugin_args=None, dfilter="wmi"):
    """frame -> {field: [values]} of the frames the plugin decoded, and tshark's stderr.

    tshark 4.4 escapes backslashes in -T fields output (4.0 does not): undone here."""
    cmd = [*(tshark or ["tshark"]), *(plugin_args if plugin_args is not None else ["-X", f"lua_script:{PLUGIN}"]),
           "-r", str(path), *options, "-Y", dfilter, "-T", "fields", "-E", "occurrence=a", "-E", f"aggregator={SEP}"]
    for f in FIELDS:
        cmd += ["-e", f]
    run = subprocess.run(cmd, capture_output=True, text=True)
    frames = {}
    for line in run.stdout.splitlines():
        cells = line.split("\t")
        if tshark:
            cells = [re.sub(r"\\(.)", r"\1", c) for c in cells]
        row = {f: (c.split(SEP) if c else []) for f, c in zip(FIELDS, cells)}
        frames[int(cells[0])] = row
    return frames, run.stderr


def lua_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines()
            if "Running as user" not in line and "cut short in the middle of a packet" not in line and line.strip()]


@functools.lru_cache(maxsize=None)
def _calls(path: Path, options: tuple[str, ...]) -> tuple[dict, ...]:
    # in this process, as the command line runs it (`wmiscope calls --format jsonl`)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["calls", "--format", "jsonl", "--no-errors", *options, str(path)]) == 0
    return tuple(d for d in map(json.loads, out.getvalue().splitlines()) if d["type"] == "call")


def wmiscope_calls(path: Path, options: list[str]) -> tuple[dict, ...]:
    return _calls(path, tuple(options))


def _text(v) -> str:
    """A property value as the plugin prints it."""
    if v is None:
        return "NULL"
    if v is True or v is False:
        return "TRUE" if v else "FALSE"
    if isinstance(v, list):
        return "{" + ", ".join(_text(x) for x in v) + "}"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _param(side: dict | None, name: str):
    for p in (side or {}).get("params") or ():
        if p.get("name") == name:
            return p
    return None


def expected(call: dict) -> list[tuple[int, dict]]:
    """What the plugin must show for one call: (frame, facts) of the request and the response."""
    out = []
    dec = call.get("decoded") or {}
    ns = (call.get("operation") or {}).get("namespace")
    for side, direction in (("request", "Request"), ("response", "Response")):
        if not call.get(side):
            continue
        facts = {"interface": call["interface"], "method": call["method"], "direction": direction}
        d = dec.get(side)
        encrypted = call[side]["encrypted"] and not call[side]["decrypted"]
        facts["encrypted"] = encrypted
        if side == "request" and d:
            for name in ("strQuery", "strObjectPath", "strMethodName"):
                p = _param(d, name)
                if p is not None and p.get("value") is not None:
                    # impacket counts a BSTR's terminating NUL in its length: wmiscope keeps it
                    # in the value, a Wireshark string field cannot hold it
                    facts[name] = p["value"].rstrip("\x00")
            path_ = facts.get("strObjectPath")
            if path_ and call["method"] in ("ExecMethod", "GetObject", "DeleteInstance"):
                facts["class"] = path_.split(":")[-1].split(".")[0].split("=")[0]
            if call["method"] == "ExecMethod":
                obj = (_param(d, "pInParams") or {}).get("object") or {}
                facts["inparams"] = {k: _text(v.get("value")) for k, v in (obj.get("properties") or {}).items()}
        if side == "response" and d:
            _refresher_facts(d, facts)
        if side == "response" and d and isinstance(d.get("return"), dict) and d["return"].get("name"):
            facts["status"] = d["return"]["name"]
        if ns and call["interface"] == "IWbemServices":
            facts["namespace"] = ns
        op = call.get("operation") or {}
        # the operation a call belongs to; wmiscope also guesses the owner of a pointer a sealed
        # reply carried ("inferred"), which the plugin does not
        if not op.get("inferred"):
            facts["operation"] = op.get("kind")
        out.append((call[side]["frames"][1], facts))
    return out


def _refresher_facts(d: dict, facts: dict) -> None:
    """A refresher reply's key values: the m_lCancelId an object was added under, and the
    objects RemoteRefresh returned (request ids, classes, every property's value)."""
    info = _param(d, "pInfo")
    if info and isinstance(info.get("value"), dict) and "m_lCancelId" in info["value"]:
        facts["cancel_id"] = str(info["value"]["m_lCancelId"])
    refreshed = _param(d, "paObjects")
    if refreshed and isinstance(refreshed.get("value"), list):
        facts["request_ids"] = [str(o["m_lRequestId"]) for o in refreshed["value"]]
        instances = []
        for o in refreshed.get("object") or []:
            instances.extend(o if isinstance(o, list) else [o])
        facts["refreshed_classes"] = [i["class"] for i in instances]
        facts["refreshed_props"] = [(k, _text(v.get("value"))) for i in instances
                                    for k, v in (i.get("properties") or {}).items()]


TSHARK44 = ROOT / ".tshark44" / "tshark"


@functools.lru_cache(maxsize=None)
def tshark44() -> list[str] | None:
    """The private tshark 4.4 (scripts/tshark44.sh) with the plugin in its global Lua plugin
    folder: as root, 4.4 loads Lua only from there (it ignores -X lua_script and personal folders)."""
    if not TSHARK44.exists():
        return None
    out = subprocess.run([str(TSHARK44), "-G", "folders"], capture_output=True, text=True).stdout
    folder = next((line.split(":", 1)[1].strip() for line in out.splitlines()
                   if line.startswith("Global Lua Plugins")), None)
    if folder is None:
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PLUGIN, Path(folder) / "wmiscope.lua")
    return [str(TSHARK44)]


def compare(path: Path, version: str = "4.0") -> tuple[int, list[str]]:
    """(calls checked, differences) for one capture."""
    topts, wopts = _keys(path)
    if version == "4.0":
        frames, stderr = tshark_fields(path, topts)
    else:
        frames, stderr = tshark_fields(path, topts, tshark=tshark44(), plugin_args=[])
    assert lua_errors(stderr) == [], stderr
    diffs = []
    checked = 0
    compared = defaultdict(int)
    for call in wmiscope_calls(path, wopts):
        info = itf.interface_by_name(call["interface"] or "")
        if not info or info["group"] != "wmi":
            continue
        checked += 1
        for frame, facts in expected(call):
            row = frames.get(frame)
            where = f"{path.name} frame {frame} {facts['interface']}:{facts['method']} {facts['direction']}"
            if row is None:
                diffs.append(f"{where}: not shown by the plugin")
                continue
            # a frame may hold several PDUs: the call's values are among the frame's
            picks = list(zip(row["wmi.interface"], row["wmi.method"], row["wmi.direction"]))
            if (facts["interface"], facts["method"], facts["direction"]) not in picks:
                diffs.append(f"{where}: plugin says {picks}")
                continue
            for name in ("strQuery", "strObjectPath", "strMethodName"):
                if name in facts and facts[name] not in row[f"wmi.{name}"]:
                    diffs.append(f"{where}: {name} {facts[name]!r} vs {row['wmi.' + name]}")
            if "operation" in facts and (facts["operation"] or "") not in (row["wmi.operation"] or [""]):
                diffs.append(f"{where}: operation {facts['operation']!r} vs {row['wmi.operation']}")
            if "class" in facts and facts["class"] not in row["wmi.class"]:
                diffs.append(f"{where}: class {facts['class']!r} vs {row['wmi.class']}")
            malformed = [m for m in row["_ws.expert.message"] if m.startswith("malformed")]
            if malformed:
                diffs.append(f"{where}: {malformed}")
            if "status" in facts and facts["status"] not in row["wmi.status"]:
                diffs.append(f"{where}: status {facts['status']} vs {row['wmi.status']}")
            if "namespace" in facts and facts["namespace"] not in row["wmi.namespace"]:
                diffs.append(f"{where}: namespace {facts['namespace']!r} vs {row['wmi.namespace']}")
            if facts["encrypted"] != ("1" in row["wmi.encrypted"] or "True" in row["wmi.encrypted"]):
                diffs.append(f"{where}: encrypted {facts['encrypted']} vs {row['wmi.encrypted']}")
            if "inparams" in facts:
                got = dict(zip(row["wmi.prop.name"], row["wmi.prop.value"]))
                if got != facts["inparams"]:
                    diffs.append(f"{where}: in-parameters {facts['inparams']} vs {got}")
            if "cancel_id" in facts and row["wmi.m_lCancelId"] != [facts["cancel_id"]]:
                diffs.append(f"{where}: m_lCancelId {facts['cancel_id']} vs {row['wmi.m_lCancelId']}")
            if "request_ids" in facts:
                got = (row["wmi.m_lRequestId"], row["wmi.obj.class"],
                       list(zip(row["wmi.prop.name"], row["wmi.prop.value"])))
                want = (facts["request_ids"], facts["refreshed_classes"], facts["refreshed_props"])
                if got != want:
                    diffs.append(f"{where}: refreshed objects {want} vs {got}")
            compared.update({k: compared[k] + 1 for k in facts})
    compare.last = dict(compared)
    return checked, diffs


def test_checked_in_plugin_is_what_the_generator_writes_now():
    assert PLUGIN.read_text(encoding="utf-8") == render(), \
        "wireshark_lua/wmiscope.lua is stale: run `wmiscope wireshark-plugin -o wireshark_lua/wmiscope.lua`"


def test_every_parameter_of_the_table_is_a_field():
    from wmiscope.wireshark_plugin import _data

    # every WMI and DCOM method gets a decoding plan (the type grammar knows all its types)
    for info in _data()["IFACES"].values():
        if info["g"] != "rpc":
            assert all("q" in m and "r" in m for m in info["m"].values()), info["name"]
    text = PLUGIN.read_text(encoding="utf-8")
    for i in itf.INTERFACES:
        for m in i["methods"]:
            for p in m["params"]:
                assert f'["{p["name"]}"]=' in text or f'{p["name"]}=' in text, (i["name"], m["name"], p["name"])


@pytest.fixture(params=["4.0", "4.4"])
def version(request):
    if request.param == "4.0" and not tshark_util.have_tshark():
        pytest.skip("tshark not installed")
    if request.param == "4.4" and tshark44() is None:
        pytest.skip("Wireshark 4.4 not fetched: scripts/tshark44.sh (run by scripts/setup.sh) failed or was not run")
    return request.param


@pytest.mark.parametrize("path", CASES, ids=[p.name for p in CASES])
def test_plugin_agrees_with_wmiscope_calls(path, version):
    checked, diffs = compare(path, version)
    assert diffs == []
    if path.name in ("impacket_dcomexec.pcapng", "dcom_mmc20_application.pcapng"):
        assert checked == 0          # DCOM lateral movement without WMI: nothing to show
    else:
        assert checked > 0


def _builtin(path: Path, with_plugin: bool, extra=()) -> str:
    cmd = ["tshark", *(["-X", f"lua_script:{PLUGIN}"] if with_plugin else []), "-r", str(path), *extra,
           "-T", "fields", "-E", "occurrence=a"]
    for f in ("frame.number", "dcerpc.pkt_type", "dcerpc.cn_call_id", "dcerpc.opnum", "dcerpc.cn_ctx_id",
              "dcerpc.obj_id", "dcerpc.cn_bind_to_uuid", "dcom.ipid", "dcom.iid", "dcerpc.stub_data"):
        cmd += ["-e", f]
    return subprocess.run(cmd, capture_output=True, text=True).stdout


@needs_tshark
def test_builtin_dcerpc_and_dcom_fields_are_unchanged():
    path = CAPTURES / "invoke-wmiexec.pcap"
    without = _builtin(path, False)
    assert "00000143-0000-0000-c000-000000000046" in without     # the IRemUnknown2 bind is there to compare
    assert _builtin(path, True) == without


def _fields_run(path: Path, dfilter: str, fields: list[str], topts=()) -> list[list[str]]:
    cmd = ["tshark", "-X", f"lua_script:{PLUGIN}", "-r", str(path), *topts, "-Y", dfilter,
           "-T", "fields", "-E", "occurrence=a", "-E", f"aggregator={SEP}"]
    for f in fields:
        cmd += ["-e", f]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert lua_errors(run.stderr) == []
    return [line.split("\t")[:len(fields)] for line in run.stdout.splitlines()]


@needs_tshark
@pytest.mark.parametrize("path", [CAPTURES / "wmimplant.pcap", PCAPS / "wmi-refresher.pcap",
                                  PCAPS / "wmi-process-create-ntlm-sealed.pcap"], ids=lambda p: p.name)
def test_a_fields_run_shows_what_the_whole_tree_shows(path):
    """Under tshark 4.0 -T fields the plugin builds no tree when no filter or field names
    wmi, and the tree not shown when only the call's own fields and plain parameters are
    named (it reads tshark's command line): those fields, the columns and the expert infos
    must be what the whole tree (asked for by naming wmi.obj.class) gives."""
    topts, _ = _keys(path)
    call = ["frame.number", "wmi.interface", "wmi.method", "wmi.opnum", "wmi.direction", "wmi.call_id",
            "wmi.namespace", "wmi.class", "wmi.operation", "wmi.request_in", "wmi.response_in",
            "wmi.encrypted", "wmi.hresult", "wmi.status", "wmi.strQuery", "wmi.lFlags", "wmi.strObjectPath"]
    whole = _fields_run(path, "dcerpc", [*call, "wmi.obj.class"], topts)
    assert any(row[2] for row in whole)
    assert _fields_run(path, "dcerpc", call, topts) == [row[:len(call)] for row in whole]
    plain = ["frame.number", "dcerpc.opnum", "_ws.col.Info", "_ws.col.Protocol"]
    assert (_fields_run(path, "dcerpc", plain, topts)
            == [row[:len(plain)] for row in _fields_run(path, "dcerpc", [*plain, "wmi.obj.class"], topts)])
    malformed = _fields_run(path, "_ws.malformed", ["frame.number", "wmi.obj.class"], topts)
    assert _fields_run(path, "_ws.malformed", ["frame.number"], topts) == [row[:1] for row in malformed]


@needs_tshark
def test_one_pass_and_two_pass_show_the_same():
    """The IPID map is built on the first pass only and cached per frame: a second pass
    (as tshark -2 and the GUI make) must not name anything differently."""
    path = CAPTURES / "wmimplant.pcap"
    one, _ = tshark_fields(path, [])
    two, err = tshark_fields(path, ["-2"])
    assert lua_errors(err) == []
    assert len(one) > 40 and one == two


@needs_tshark
def test_the_create_command_line_is_a_field():
    frames, _ = tshark_fields(CAPTURES / "impacket_wmiexec.pcapng", [],
                              dfilter='wmi.prop.CommandLine contains "whoami"')
    lines = [v for row in frames.values() for v in row["wmi.prop.CommandLine"]]
    assert lines == ["cmd.exe /Q /c whoami 1> \\\\127.0.0.1\\ADMIN$\\__1683291962.56 2>&1"]


@needs_tshark
def tshark_on_damaged(tmp_path, packets, packet, payload: bytearray) -> dict:
    """The capture with one packet's TCP payload replaced, through tshark with the plugin;
    no Lua error is allowed whatever the damage."""
    from scapy.all import TCP, Raw, wrpcap
    packet[TCP].remove_payload()
    packet[TCP].add_payload(Raw(bytes(payload)))
    damaged = tmp_path / "damaged.pcap"
    wrpcap(str(damaged), packets)
    frames, stderr = tshark_fields(damaged, [], dfilter="wmi")
    assert lua_errors(stderr) == []
    return frames


def test_a_malformed_stub_gets_expert_info_and_the_capture_goes_on(tmp_path):
    """ExecMethod's strObjectPath conformance made huge: that call is named and marked
    malformed at the offset of the count, the reply and everything else still decode."""
    from scapy.all import TCP, Raw, rdpcap, wrpcap

    packets = rdpcap(str(PCAPS / "wmi-process-create.pcap"))
    request = packets[13]                                  # frame 14, the ExecMethod request
    payload = bytearray(bytes(request[TCP].payload))
    assert payload[2] == 0 and payload[22] == 24           # a request, opnum 24
    # stub after the 40-octet header (object UUID present); ORPCTHIS is 32 octets, then the
    # BSTR's referent and the FLAGGED_WORD_BLOB's conformance
    payload[40 + 36:40 + 40] = (0xFFFFFF00).to_bytes(4, "little")
    frames = tshark_on_damaged(tmp_path, packets, request, payload)
    assert frames[14]["wmi.method"] == ["ExecMethod"]
    assert [m for m in frames[14]["_ws.expert.message"] if m.startswith("malformed stub")] == [
        "malformed stub: FLAGGED_WORD_BLOB count 4294967040 exceeds the bytes left at offset 36"]   # in the stub
    assert frames[15]["wmi.status"] == ["WBEM_S_NO_ERROR"]
    assert frames[13]["wmi.status"] == ["WBEM_S_NO_ERROR"]


@needs_tshark
def test_install_puts_the_plugin_where_tshark_looks(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / ".config")}
    run = subprocess.run([str(ROOT / ".venv" / "bin" / "wmiscope"), "wireshark-plugin", "--install"],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    folder = subprocess.run(["tshark", "-G", "folders"], capture_output=True, text=True, env=env).stdout
    personal = next(line.split(":", 1)[1].strip() for line in folder.splitlines()
                    if line.startswith("Personal Lua Plugins"))
    installed = Path(personal) / "wmiscope.lua"
    assert str(installed).startswith(str(tmp_path)) and installed.read_text() == PLUGIN.read_text()


@needs_tshark
def test_an_iwbemcontext_is_shown_value_by_value(tmp_path):
    """No capture at hand carries an IWbemContext: a GetObject with one, made by the
    project's generator (formats/context builds the buffer), read back by the plugin."""
    from wmiscope import synth
    from wmiscope.synth import samples
    from wmiscope.formats.context import ContextProperty, VarType, WbemContext, build_context_objref

    ctx = WbemContext(properties=[ContextProperty("__ProviderArchitecture", VarType.VT_I4, 64),
                                  ContextProperty("__RequiredArchitecture", VarType.VT_BOOL, True),
                                  ContextProperty("__Locale", VarType.VT_BSTR, "MS_409")])
    path = tmp_path / "context.pcap"
    with synth.PcapWriter(path) as pcap:
        session, services = samples._spec_session(pcap, synth.Clock(), "c0ffee00-0000-4000-8000-000000000001")
        session.call("IWbemServices", "GetObject", services,
                     {"strObjectPath": "StdRegProv", "lFlags": 0, "pCtx": build_context_objref(ctx),
                      "ppObject": None, "ppCallResult": None}, {"ppObject": None, "ppCallResult": None})
        session.close()
    frames, stderr = tshark_fields(path, [], dfilter="wmi.context.name")
    assert lua_errors(stderr) == []
    (row,) = frames.values()
    assert row["wmi.method"] == ["GetObject"] and row["wmi.class"] == ["StdRegProv"]
    out = subprocess.run(["tshark", "-X", f"lua_script:{PLUGIN}", "-r", str(path), "-Y", "wmi.context.name",
                          "-T", "fields", "-E", f"aggregator={SEP}", "-e", "wmi.context.name"],
                         capture_output=True, text=True).stdout
    assert out.strip().split(SEP) == ["__ProviderArchitecture = 64", "__RequiredArchitecture = TRUE",
                                      "__Locale = MS_409"]


@needs_tshark
def test_a_malformed_refreshed_blob_gets_expert_info_and_the_rest_decodes(tmp_path):
    """The WBEM_INSTANCE_BLOB of the first RemoteRefresh reply given Version 7: that blob is
    marked malformed at its offset in the stub, its sibling and the next reply still decode."""
    from scapy.all import TCP, Raw, rdpcap, wrpcap

    packets = rdpcap(str(PCAPS / "wmi-refresher.pcap"))
    reply = packets[38]                                    # frame 39, the first RemoteRefresh reply
    payload = bytearray(bytes(reply[TCP].payload))
    # Version 1, numObjects 2, the first RefreshedInstances' blobSize 0x58
    at = payload.find(bytes.fromhex("010000000200000058000000"))
    assert at == 24 + 152                                  # the 24-octet response header, then the stub
    payload[at:at + 4] = (7).to_bytes(4, "little")
    frames = tshark_on_damaged(tmp_path, packets, reply, payload)
    assert frames[39]["_ws.expert.message"] == ["malformed stub: WBEM_INSTANCE_BLOB: Version is not 1 at offset 152"]
    assert frames[39]["wmi.obj.class"] == ["Win32_PerfRawData_PerfOS_Processor"]
    assert frames[41]["wmi.obj.class"] == ["Win32_PerfRawData_PerfOS_Processor"] + 2 * ["Win32_PerfRawData_PerfProc_Process"]
