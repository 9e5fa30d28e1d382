"""MS-WMI 2.2.15-2.2.19 refresher blobs, decoded against a template: the real
Win32_Environment instance of wmimplant.pcap and the real Win32_Process class
of impacket_wmiexec.pcapng serve as templates (no capture at hand holds an
IWbemRemoteRefresher call), with values built by wmio."""

from __future__ import annotations

import struct

import pytest

from fuzz_util import decode_mutations
from tshark_util import encoding_units, have_tshark, stub
from work_meter import assert_linear
from wmiscope.formats import DecodeError, wmio
from wmiscope.formats.object_array import parse_object_array
from wmiscope.formats.refresher import (
    RefreshedObject, WbemInstanceBlobType, build_instance_blob, build_refreshed_single_instance,
    parse_instance_blob, parse_refreshed_single_instance,
)

needs_tshark = pytest.mark.skipif(not have_tshark(), reason="tshark not installed")


@pytest.fixture(scope="module")
def environment():
    """The real Win32_Environment instance (IWbemWCOSmartEnum::Next reply, frame 313)."""
    if not have_tshark():
        pytest.skip("tshark not installed")
    return parse_object_array(stub("wmimplant.pcap", 313), None, 24).objects[0]


@pytest.fixture(scope="module")
def process_class():
    """The real Win32_Process class (GetObject reply, frame 66)."""
    if not have_tshark():
        pytest.skip("tshark not installed")
    return wmio.parse_encoding_unit(encoding_units(stub("impacket_wmiexec.pcapng", 66))[0])


def refreshed_processes(process_class, n):
    return [wmio.new_instance(process_class, {
        "Handle": str(4 * i), "ProcessId": 4 * i, "Name": f"proc{i}.exe", "ThreadCount": i,
        "CommandLine": None if i % 2 else f"proc{i}.exe /arg", "WorkingSetSize": 2**33 + i,
    }) for i in range(n)]


def test_enum_blob_of_real_win32_process_instances(process_class):
    procs = refreshed_processes(process_class, 5)
    template = procs[0]
    blob = build_instance_blob(procs)
    assert struct.unpack_from("<II", blob) == (1, 5)           # Version, numObjects
    back = parse_instance_blob(blob, template)
    assert back == procs
    assert [p.get("Name") for p in back] == [f"proc{i}.exe" for i in range(5)]
    assert back[3].get("CommandLine") is None and back[2].get("CommandLine") == "proc2.exe /arg"
    assert back[4].get("WorkingSetSize") == 2**33 + 4
    assert back[0].get("Caption") is None                          # not refreshed: class default
    # RefreshedInstances: each blobSize frames exactly one RefreshedSingleInstance
    pos, sizes = 8, []
    for _ in range(5):
        (size,) = struct.unpack_from("<I", blob, pos)
        sizes.append(size)
        pos += 4 + size
    assert pos == len(blob)


def test_single_instance_of_the_real_environment_template(environment):
    changed = wmio.new_instance(environment.class_, {
        "Name": "puFHs", "UserName": "PICKLESWORTH\\Administrator", "VariableValue": "refreshed",
        "SystemVariable": False}, decoration=environment.decoration)
    single = build_refreshed_single_instance(changed)
    back = parse_refreshed_single_instance(single, environment)   # the template instance
    assert back == changed
    assert back.decoration == ("SNICKLEFRITZ", "root\\cimv2")        # the template's origin
    assert back.get("VariableValue") == "refreshed"
    assert back.path == environment.path


def test_instance_heap_size_leads_the_single_instance(environment):
    single = build_refreshed_single_instance(environment)
    (heap_size,) = struct.unpack_from("<I", single)
    # the InstanceHeap ends the blob, its HeapLength (top bit set) heap_size bytes from the end
    (heap_length,) = struct.unpack_from("<I", single, len(single) - 4 - heap_size)
    assert heap_length == 0x80000000 | heap_size
    assert parse_refreshed_single_instance(single, environment.class_).get("Name") == "puFHs"
    # a size that counts the HeapLength field too is read the same
    alt = struct.pack("<I", heap_size + 4) + single[4:]
    assert parse_refreshed_single_instance(alt, environment) == parse_refreshed_single_instance(single, environment)
    bad = struct.pack("<I", heap_size + 1) + single[4:]
    with pytest.raises(DecodeError) as e:
        parse_refreshed_single_instance(bad, environment)
    assert e.value.structure == "RefreshedSingleInstance.InstanceHeapSize" and e.value.offset == 0


def test_refreshed_objects_by_blob_type(environment, process_class):
    procs = refreshed_processes(process_class, 3)
    enum = RefreshedObject.of(11, procs)
    assert enum.blob_type == WbemInstanceBlobType.WBEM_BLOB_TYPE_ENUM == 4
    assert enum.blob_type_name == "WBEM_BLOB_TYPE_ENUM"
    assert enum.decode(procs[0]) == procs
    one = RefreshedObject.of(12, environment)
    assert one.blob_type_name == "WBEM_BLOB_TYPE_ALL" and one.decode(environment) == environment
    err = RefreshedObject.of(13, None)
    assert (err.blob_type, err.blob, err.decode(environment)) == (3, b"", None)
    doc = enum.to_json(procs[0])
    assert doc["m_lRequestId"] == 11 and doc["m_lBlobType"] == "WBEM_BLOB_TYPE_ENUM"
    assert [i["properties"]["Name"]["value"] for i in doc["instances"]] == ["proc0.exe", "proc1.exe", "proc2.exe"]
    assert one.to_json(environment)["instance"]["properties"]["Name"]["value"] == "puFHs"
    with pytest.raises(DecodeError):
        RefreshedObject(14, 3, b"\0").decode(environment)
    with pytest.raises(DecodeError) as e:
        RefreshedObject(15, 9, b"").decode(environment)
    assert e.value.structure == "WBEM_REFRESHED_OBJECT.m_lBlobType"
    assert RefreshedObject(15, 9).blob_type_name == "0x9"


def test_empty_enum():
    assert parse_instance_blob(build_instance_blob([]), None) == []


# ---------------------------------------------------------------------------
# hostile input
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sample(process_class):
    procs = refreshed_processes(process_class, 3)
    return procs[0], build_instance_blob(procs)


def test_header_violations_are_located(sample):
    template, blob = sample
    for data, structure, offset in [
        (struct.pack("<I", 2) + blob[4:], "WBEM_INSTANCE_BLOB.Version", 0),
        (blob[:4] + struct.pack("<I", 0xFFFFFFFF) + blob[8:], "WBEM_INSTANCE_BLOB.numObjects", 4),
        (blob[:4] + struct.pack("<I", 2) + blob[8:], "WBEM_INSTANCE_BLOB.Objects", None),
        (blob[:8] + struct.pack("<I", 0x7FFFFFFF) + blob[12:], "RefreshedInstances[0].blobSize", 8),
    ]:
        with pytest.raises(DecodeError) as e:
            parse_instance_blob(data, template)
        assert e.value.structure == structure
        if offset is not None:
            assert e.value.offset == offset


def test_every_truncation_is_a_decode_error(sample):
    template, blob = sample
    for n in range(0, len(blob), max(1, len(blob) // 300)):
        with pytest.raises(DecodeError):
            parse_instance_blob(blob[:n], template)


def test_random_mutations_only_raise_decode_error_quickly(sample):
    template, blob = sample
    run = decode_mutations(lambda data: parse_instance_blob(data, template), blob, seed=2219)
    assert_linear(run, len(blob))
