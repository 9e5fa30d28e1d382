"""MS-WMI 2.2.14 ObjectArray: the real IWbemWCOSmartEnum::Next reply of
wmimplant.pcap, the classID cache across calls, build/parse round trips and
hostile input."""

from __future__ import annotations

import struct
import uuid

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fuzz_util import decode_mutations
from tshark_util import have_tshark, stub
from work_meter import assert_linear
from wmiscope.formats import DecodeError, EncodeError, wmio
from wmiscope.formats.object_array import (
    ClassCache, ObjectArray, ObjectType, PacketType, build_object_array, parse_object_array,
)

needs_tshark = pytest.mark.skipif(not have_tshark(), reason="tshark not installed")

REAL_CLASS_ID = uuid.UUID("12c1de05-1e0e-4a2f-8992-aa36d9bdec07")


def next_reply_object_array(data: bytes) -> tuple[int, int]:
    """IWbemWCOSmartEnum::Next response stub (3.1.4.7.1) -> (ObjectArray offset, pdwBuffSize).

    ORPCTHAT (flags, NULL extensions), puReturned, pdwBuffSize, then pBuffer:
    a unique pointer to a conformant byte array (referent, max count, bytes).
    """
    flags, extensions, returned, buff_size, referent, max_count = struct.unpack_from("<6I", data, 0)
    assert extensions == 0 and referent != 0
    assert returned == 1 and max_count == buff_size
    return 24, buff_size


@pytest.fixture(scope="module")
def real():
    data = stub("wmimplant.pcap", 313)
    offset, size = next_reply_object_array(data)
    return data, offset, size


# ---------------------------------------------------------------------------
# real bytes
# ---------------------------------------------------------------------------

@needs_tshark
def test_real_next_reply_decodes_the_win32_environment_instance(real):
    data, offset, size = real
    cache = ClassCache()
    arr = parse_object_array(data, cache, offset)
    assert arr.packet_type == PacketType.NEXT and arr.packet_type_name == "NEXT"
    assert arr.size == size == 2765
    assert arr.object_types == [ObjectType.WBEMOBJECT_INSTANCE]
    assert arr.class_ids == [REAL_CLASS_ID]
    inst = arr.objects[0]
    assert inst.class_name == "Win32_Environment"
    assert inst.get("Name") == "puFHs"
    # PutInstance sent "picklesworth\administrator"; the server returns it normalized
    assert inst.get("UserName") == "PICKLESWORTH\\Administrator"
    assert inst.get("UserName").lower() == "picklesworth\\administrator"
    assert inst.get("VariableValue").startswith(
        "$fct = Get-Content -Encoding byte -ReadCount 0 -Path 'C:\\shimcache.reg'")
    assert inst.path == 'Win32_Environment.Name="puFHs",UserName="PICKLESWORTH\\\\Administrator"'
    assert inst.decoration == ("SNICKLEFRITZ", "root\\cimv2")
    assert REAL_CLASS_ID in cache and cache.get(REAL_CLASS_ID) is inst.class_
    doc = arr.to_json()
    assert doc["objects"][0]["classID"] == str(REAL_CLASS_ID)
    assert doc["objects"][0]["object"]["properties"]["Name"]["value"] == "puFHs"


@needs_tshark
def test_real_object_array_rebuilds_byte_for_byte_but_its_random_class_id(real):
    data, offset, size = real
    arr = parse_object_array(data, None, offset)
    rebuilt = build_object_array(arr.objects, arr.packet_type)
    original = data[offset:offset + size]
    assert len(rebuilt) == len(original)
    class_id_at = 46 + 9 + 8   # ObjectArray headers, WBEM_DATAPACKET_OBJECT, dwSizeOfHeader+dwSizeOfData
    assert rebuilt[:class_id_at] == original[:class_id_at]
    assert rebuilt[class_id_at + 16:] == original[class_id_at + 16:]
    assert parse_object_array(rebuilt).objects == arr.objects


@needs_tshark
def test_a_later_call_sends_instances_of_the_real_class_without_it(real):
    data, offset, _ = real
    server, client = ClassCache(), ClassCache()
    first = parse_object_array(data, client, offset)
    server.add(REAL_CLASS_ID, first.objects[0].class_)
    cls = first.objects[0].class_
    more = [wmio.new_instance(cls, {"Name": f"var{i}", "UserName": "<SYSTEM>",
                                    "VariableValue": "x" * i, "SystemVariable": True}) for i in range(3)]
    second_bytes = build_object_array(more, PacketType.NEXT, server)
    # the real class is known to both ends: three NOCLASS instances, far smaller
    second = parse_object_array(second_bytes, client)
    assert second.object_types == [ObjectType.WBEMOBJECT_INSTANCE_NOCLASS] * 3
    assert second.class_ids == [REAL_CLASS_ID] * 3
    assert [o.get("Name") for o in second.objects] == ["var0", "var1", "var2"]
    assert second.objects[2].get("VariableValue") == "xx"
    assert second.objects[0].class_ is cls
    assert len(second_bytes) < 3 * 400
    # a client that missed the first call cannot decode the second: the spec's error
    with pytest.raises(DecodeError) as e:
        parse_object_array(second_bytes, ClassCache())
    assert e.value.structure == "WBEMOBJECT_INSTANCE_NOCLASS.classID"
    assert str(REAL_CLASS_ID) in e.value.reason
    assert e.value.offset == 46 + 9 + 8


# ---------------------------------------------------------------------------
# synthetic round trips
# ---------------------------------------------------------------------------

def canonical(obj):
    """An object as a decoder returns it (wmio fills in what constructors leave out)."""
    return wmio.parse_encoding_unit(wmio.build_encoding_unit(obj))


@pytest.fixture(scope="module")
def classes():
    disk = canonical(wmio.new_class("Win32_LogicalDisk", properties=[
        ("DeviceID", "string", None, {"key": True}), ("Size", "uint64"), ("FreeSpace", "uint64"),
        ("VolumeName", "string"), ("Compressed", "boolean"), ("Access", "uint16")],
        methods=[("Chkdsk", [("FixErrors", "boolean")], [("ReturnValue", "uint32")])]))
    proc = canonical(wmio.new_class("Win32_Process", properties=[
        ("Handle", "string", None, {"key": True}), ("ProcessId", "uint32"), ("Name", "string"),
        ("CommandLine", "string"), ("CreationDate", "datetime"), ("ThreadCount", "uint32"),
        ("Priorities", "sint32[]")]))
    return disk, proc


def test_first_instance_of_each_class_carries_it_the_rest_do_not(classes):
    disk, proc = classes
    objs = [
        disk,
        wmio.new_instance(disk, {"DeviceID": "C:", "Size": 2**40, "FreeSpace": 12345, "Compressed": False}),
        wmio.new_instance(proc, {"Handle": "4", "ProcessId": 4, "Name": "System", "Priorities": [8, -1]}),
        wmio.new_instance(disk, {"DeviceID": "D:", "VolumeName": "DATA", "Access": 3}),
        wmio.new_instance(proc, {"Handle": "1234", "ProcessId": 1234, "Name": "cmd.exe",
                                 "CommandLine": "cmd.exe /Q /c whoami",
                                 "CreationDate": wmio.DmtfDateTime("20230505103000.123456+120")}),
        wmio.new_instance(disk, {"DeviceID": "E:", "Size": None}),
    ]
    data = build_object_array(objs, PacketType.INDICATE)
    arr = parse_object_array(data)
    assert arr.packet_type == PacketType.INDICATE
    assert arr.object_types == [1, 2, 2, 3, 3, 3]
    assert arr.class_ids[0] is None
    assert arr.class_ids[1] == arr.class_ids[3] == arr.class_ids[5] != arr.class_ids[2] == arr.class_ids[4]
    assert arr.objects == objs
    assert arr.objects[4].get("CommandLine") == "cmd.exe /Q /c whoami"
    assert arr.objects[5].get("Size") is None
    assert arr.size == len(data)


def test_a_cache_spans_the_calls_of_one_enumeration(classes):
    disk, _ = classes
    server, client = ClassCache(), ClassCache()
    calls = [[wmio.new_instance(disk, {"DeviceID": f"{c}{i}:"}) for i in range(2)] for c in "AB"]
    first = parse_object_array(build_object_array(calls[0], PacketType.NEXT, server), client)
    second = parse_object_array(build_object_array(calls[1], PacketType.NEXT, server), client)
    assert first.object_types == [2, 3] and second.object_types == [3, 3]
    assert [o.get("DeviceID") for o in first.objects + second.objects] == ["A0:", "A1:", "B0:", "B1:"]
    assert len(client) == len(server) == 1


def test_empty_object_array_and_bad_packet_type():
    with pytest.raises(EncodeError):
        build_object_array([], 2)
    data = build_object_array([], PacketType.NEXT)
    assert len(data) == 46
    assert parse_object_array(data) == ObjectArray(PacketType.NEXT, [], [], [])


# MS-WMIO strings are NUL-terminated: a NUL cannot be sent inside one
wmi_text = st.text(st.characters(blacklist_characters="\x00"), max_size=30)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(
    wmi_text, st.integers(0, 2**64 - 1), st.none() | st.integers(0, 2**64 - 1),
    st.none() | wmi_text, st.booleans()), min_size=1, max_size=8))
def test_round_trip_of_random_instances(classes, rows):
    disk, _ = classes
    objs = [wmio.new_instance(disk, {"DeviceID": d, "Size": s, "FreeSpace": f, "VolumeName": v,
                                     "Compressed": c}) for d, s, f, v, c in rows]
    arr = parse_object_array(build_object_array(objs))
    assert arr.objects == objs
    assert arr.object_types == [2] + [3] * (len(objs) - 1)


# ---------------------------------------------------------------------------
# hostile input
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sample(classes):
    disk, proc = classes
    objs = [disk] + [wmio.new_instance(disk, {"DeviceID": f"{c}:", "VolumeName": "v" * i})
                     for i, c in enumerate("CDE")] + [wmio.new_instance(proc, {"Handle": "1"})]
    return build_object_array(objs)


@pytest.mark.parametrize("field,offset,value", [
    ("dwByteOrdering", 0, b"\x01"),
    ("abSignature", 4, b"X"),
    ("dwSizeOfHeader1", 12, b"\x1b"),
    ("dwFlags", 20, b"\x01"),
    ("bVersion", 24, b"\x02"),
    ("bPacketType", 25, b"\x07"),
    ("dwSizeOfHeader2", 26, b"\x09"),
    ("dwSizeOfHeader3", 34, b"\x0d"),
])
def test_each_checked_header_field_is_named_with_its_offset(sample, field, offset, value):
    bad = sample[:offset] + value + sample[offset + len(value):]
    with pytest.raises(DecodeError) as e:
        parse_object_array(b"\0" * 5 + bad, None, 5)
    assert e.value.structure == f"ObjectArray.{field}"
    assert e.value.offset == 5 + offset


def _with_u32(data: bytes, at: int, value: int) -> bytes:
    return data[:at] + struct.pack("<I", value) + data[at + 4:]


@pytest.mark.parametrize("at,value,structure", [
    (16, 10**6, "ObjectArray.dwDataSize1"),
    (30, 5, "ObjectArray.dwDataSize2"),
    (38, 5, "ObjectArray.dwDataSize3"),
    (42, 0xFFFFFFFF, "ObjectArray.dwNumObjects"),
    (42, 2, "ObjectArray.wbemObjects"),             # objects left over
    (46, 10, "WBEM_DATAPACKET_OBJECT.dwSizeOfHeader"),
    (50, 0x7FFFFFFF, "WBEM_DATAPACKET_OBJECT[0].dwSizeOfData"),
    (59, 3, "WBEMOBJECT_CLASS.dwSizeOfData"),
])
def test_inconsistent_sizes_are_located(sample, at, value, structure):
    with pytest.raises(DecodeError) as e:
        parse_object_array(_with_u32(sample, at, value))
    assert e.value.structure == structure


def test_object_type_must_match_the_object(sample):
    bad = sample[:54] + b"\x02" + sample[55:]   # the class announced as an instance
    with pytest.raises(DecodeError) as e:
        parse_object_array(bad)
    assert e.value.structure.startswith("WBEMOBJECT_INSTANCE")
    with pytest.raises(DecodeError) as e:
        parse_object_array(sample[:54] + b"\x09" + sample[55:])
    assert e.value.structure == "WBEM_DATAPACKET_OBJECT[0].bObjectType"


def test_every_truncation_is_a_decode_error(sample):
    for n in range(0, len(sample), max(1, len(sample) // 300)):
        with pytest.raises(DecodeError):
            parse_object_array(sample[:n])


@pytest.mark.parametrize("which", ["synthetic", "real"])
def test_random_mutations_only_raise_decode_error_quickly(sample, which):
    if which == "real":
        if not have_tshark():
            pytest.skip("tshark not installed")
        sample = stub("wmimplant.pcap", 313)[24:24 + 2765]
    # six edits and this word order: the very mutations the test was written against
    run = decode_mutations(parse_object_array, sample, seed=2140, max_edits=6,
                           words=(0, 0x7FFFFFFF, 0xFFFFFFFF))
    assert_linear(run, len(sample))
    assert run.decoded < 300   # the checks do reject most mutations
