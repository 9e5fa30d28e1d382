"""`wmiscope decode`, run as a user runs it (a subprocess), on bytes cut out of
the real captures into temporary files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tshark_util import encoding_units, have_tshark, stub

pytestmark = pytest.mark.skipif(not have_tshark(), reason="tshark not installed")


def wmiscope(*args, stdin: bytes | None = None):
    p = subprocess.run([sys.executable, "-m", "wmiscope", "decode", *map(str, args)],
                       input=stdin, capture_output=True, timeout=60)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cut")
    next_reply = stub("wmimplant.pcap", 313)
    array = next_reply[24:24 + 2765]
    process = encoding_units(stub("impacket_wmiexec.pcapng", 66))[0]
    out = {
        "array": array,
        "stub_hex": ":".join(f"{b:02x}" for b in next_reply).encode(),
        # the instance's ObjectData inside WBEMOBJECT_INSTANCE (headers 46 + 9 + 24)
        "block": array[46 + 9 + 24:],
        "process": process,
        "put_instance": encoding_units(stub("wmimplant.pcap", 203))[0],
    }
    paths = {}
    for name, data in out.items():
        paths[name] = d / name
        paths[name].write_bytes(data)
    return paths


def test_object_array_as_json(files):
    rc, out, err = wmiscope(files["array"], "--as", "object-array")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["bPacketType"] == "NEXT" and doc["dwNumObjects"] == 1
    obj = doc["objects"][0]
    assert obj["bObjectType"] == "WBEMOBJECT_INSTANCE"
    assert obj["classID"] == "12c1de05-1e0e-4a2f-8992-aa36d9bdec07"
    assert obj["object"]["class"] == "Win32_Environment"
    assert obj["object"]["properties"]["Name"]["value"] == "puFHs"
    assert obj["object"]["properties"]["UserName"]["value"] == "PICKLESWORTH\\Administrator"


def test_hex_from_stdin_with_an_offset_as_mof(files):
    rc, out, err = wmiscope("-", "--hex", "--offset", "24", "--as", "object-array", "--mof",
                            stdin=files["stub_hex"].read_bytes())
    assert rc == 0, err
    assert "instance of Win32_Environment" in out
    assert 'Name = "puFHs";' in out


def test_encoding_unit_of_the_real_win32_process_class_as_mof(files):
    rc, out, err = wmiscope(files["process"], "--as", "encoding-unit", "--mof")
    assert rc == 0, err
    assert "class Win32_Process : CIM_Process" in out
    assert "Create(" in out and "CommandLine" in out


def test_encoding_unit_json_lists_45_properties_and_6_methods(files):
    rc, out, _ = wmiscope(files["process"], "--as", "encoding-unit", "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["name"] == "Win32_Process"
    assert len(doc["properties"]) == 45
    assert [m["name"] for m in doc["methods"]] == [
        "Create", "Terminate", "GetOwner", "GetOwnerSid", "SetPriority", "AttachDebugger"]


def test_object_block(files):
    rc, out, err = wmiscope(files["block"], "--as", "object-block")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["kind"] == "instance" and doc["decoration"] == ["SNICKLEFRITZ", "root\\cimv2"]


def test_context_with_a_real_embedded_instance(files, tmp_path):
    from wmiscope.formats import context, wmio

    inst = wmio.parse_encoding_unit(files["put_instance"].read_bytes())
    ctx = context.WbemContext([], [
        context.ContextProperty("__ProviderArchitecture", context.VarType.VT_I4, 64),
        context.ContextProperty("__Target", context.VarType.VT_UNKNOWN, inst)])
    path = tmp_path / "ctx.bin"
    path.write_bytes(context.build_context_objref(ctx))
    rc, out, err = wmiscope(path, "--as", "context")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["properties"][0] == {"name": "__ProviderArchitecture", "type": "VT_I4", "value": 64}
    assert doc["properties"][1]["value"]["properties"]["Name"]["value"] == "puFHs"
    rc, out, _ = wmiscope(path, "--as", "context", "--mof")
    assert rc == 0 and "// __ProviderArchitecture (VT_I4) = 64" in out
    assert "instance of Win32_Environment" in out


def test_instance_blob_against_the_real_template_class(files, tmp_path):
    from wmiscope.formats import refresher, wmio

    cls = wmio.parse_encoding_unit(files["process"].read_bytes())
    procs = [wmio.new_instance(cls, {"Handle": str(i), "ProcessId": i, "Name": f"p{i}.exe"}) for i in range(3)]
    path = tmp_path / "blob.hex"
    path.write_text(refresher.build_instance_blob(procs).hex(" "))
    template_hex = tmp_path / "template.hex"
    template_hex.write_text(files["process"].read_bytes().hex())
    rc, out, err = wmiscope(path, "--hex", "--as", "instance-blob", "--template", template_hex)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["numObjects"] == 3
    assert [o["properties"]["Name"]["value"] for o in doc["objects"]] == ["p0.exe", "p1.exe", "p2.exe"]


# ---------------------------------------------------------------------------
# failures: one located line on stderr, exit 1 (2 for usage), never a traceback
# ---------------------------------------------------------------------------

def assert_one_line_failure(rc, out, err, *needles, status=1):
    assert rc == status and out == ""
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("wmiscope: error: ")
    for n in needles:
        assert n in err, err


def test_truncated_object_array(files, tmp_path):
    path = tmp_path / "cut.bin"
    path.write_bytes(files["array"].read_bytes()[:1000])
    assert_one_line_failure(*wmiscope(path, "--as", "object-array"),
                            "ObjectArray.dwDataSize1 at offset 16", "2739 bytes announced")


def test_wrong_kind(files):
    assert_one_line_failure(*wmiscope(files["array"], "--as", "encoding-unit"),
                            "EncodingUnit.Signature at offset 0")


def test_mutated_class_is_located(files, tmp_path):
    data = bytearray(files["process"].read_bytes())
    data[4:8] = (0x7FFFFFFF).to_bytes(4, "little")
    path = tmp_path / "bad.bin"
    path.write_bytes(bytes(data))
    rc, out, err = wmiscope(path, "--as", "encoding-unit")
    assert_one_line_failure(rc, out, err, "offset")


def test_usage_errors(files, tmp_path):
    assert_one_line_failure(*wmiscope(tmp_path / "missing.bin", "--as", "context"), "missing.bin")
    bad_hex = tmp_path / "bad.hex"
    bad_hex.write_text("12 34 zz")
    assert_one_line_failure(*wmiscope(bad_hex, "--hex", "--as", "context"), "not hex text")
    # mistakes of the command line itself: exit 2, as argparse's own
    assert_one_line_failure(*wmiscope(files["array"], "--as", "instance-blob"), "--template", status=2)
    assert_one_line_failure(*wmiscope(files["array"], "--as", "object-array", "--offset", "99999"),
                            "past the end", status=2)
