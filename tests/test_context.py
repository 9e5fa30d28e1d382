"""MS-WMI 2.2.13 IWbemContextBuffer: the spec's byte layout of every property
type, arrays, embedded IWbemClassObjects (a real one from wmimplant.pcap),
round trips and hostile input.  No capture at hand carries an IWbemContext
(every clear call in them passes a NULL context), so the layouts are checked
against bytes written from the spec's tables."""

from __future__ import annotations

import struct
import uuid

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fuzz_util import decode_mutations
from tshark_util import encoding_units, have_tshark, stub
from work_meter import assert_linear
from wmiscope.formats import DecodeError, EncodeError, wmio
from wmiscope.formats.context import (
    CLSID_WBEM_CONTEXT_UNMARSHALER, VT_ARRAY, ContextProperty, VarType, WbemContext,
    build_context, build_context_objref, parse_context, parse_context_objref,
)

needs_tshark = pytest.mark.skipif(not have_tshark(), reason="tshark not installed")

GUID = uuid.UUID("8d1b7e6c-1b5f-4a57-9c3e-2f1e0d9c8b7a")
V = VarType


def ctx_string(s: str) -> bytes:
    raw = s.encode("utf-16-le")
    return struct.pack("<I", len(raw) // 2) + raw


def prop(name: str, vartype: int, value: bytes) -> bytes:
    return ctx_string(name) + struct.pack("<IH", 0, vartype) + value


def buffer(*props: bytes) -> bytes:
    return struct.pack("<I", 1) + GUID.bytes_le + struct.pack("<I", len(props)) + b"".join(props)


def canonical(obj):
    return wmio.parse_encoding_unit(wmio.build_encoding_unit(obj))


@pytest.fixture(scope="module")
def small_class():
    return canonical(wmio.new_class("Demo_Setting", properties=[
        ("Name", "string", None, {"key": True}), ("Level", "uint32"), ("Tags", "string[]")]))


@pytest.fixture(scope="module")
def small_instance(small_class):
    return canonical(wmio.new_instance(small_class, {"Name": "a", "Level": 3, "Tags": ["x", "y"]}))


# ---------------------------------------------------------------------------
# layout, from the spec's tables
# ---------------------------------------------------------------------------

def test_the_documented_context_properties_in_their_wire_form():
    data = buffer(
        prop("__ProviderArchitecture", 3, struct.pack("<i", 64) + b"\0" * 4),
        prop("__RequiredArchitecture", 11, b"\xff\xff" + b"\0" * 6),
        prop("__MI_DESTINATIONOPTIONS_UI_LOCALE", 8, ctx_string("MS_409")),
        prop("__CorrelationId", 8, ctx_string("{5A0A8D4E-0B1C-4F9F-9F0D-6E7D8C9B0A1F}")),
    )
    ctx = parse_context(data)
    assert ctx.guids == [GUID]
    assert ctx.get("__providerarchitecture") == 64
    assert ctx.get("__RequiredArchitecture") is True
    assert ctx.get("__MI_DESTINATIONOPTIONS_UI_LOCALE") == "MS_409"
    assert [p.type_name for p in ctx.properties] == ["VT_I4", "VT_BOOL", "VT_BSTR", "VT_BSTR"]
    assert ctx.size == len(data)
    assert build_context(ctx) == data


# (type, value, the 2.2.13.2 PropertyValue bytes)
SCALARS = [
    (V.VT_NULL, None, b""),
    (V.VT_I1, -2, b"\xfe" + b"\0" * 7),
    (V.VT_UI1, 0xC8, b"\xc8" + b"\0" * 7),
    (V.VT_I2, -300, struct.pack("<h", -300) + b"\0" * 6),
    (V.VT_UI2, 60000, struct.pack("<H", 60000) + b"\0" * 6),
    (V.VT_BOOL, False, b"\0" * 8),
    (V.VT_I4, -7, struct.pack("<i", -7) + b"\0" * 4),
    (V.VT_UI4, 4_000_000_000, struct.pack("<I", 4_000_000_000) + b"\0" * 4),
    (V.VT_R4, 1.5, struct.pack("<f", 1.5) + b"\0" * 4),
    (V.VT_R8, -2.25, struct.pack("<d", -2.25)),
    (V.VT_BSTR, "h\u00e9llo", ctx_string("h\u00e9llo")),
    (V.VT_BSTR, "", b"\0\0\0\0"),
]


@pytest.mark.parametrize("vartype,value,wire", SCALARS, ids=lambda x: getattr(x, "name", None))
def test_scalar_property_layout(vartype, value, wire):
    data = buffer(prop("p", vartype, wire))
    ctx = parse_context(data)
    assert ctx.properties == [ContextProperty("p", vartype, value)]
    assert build_context(ctx) == data


# (type, values, ElementSize, Elements bytes) per 2.2.13.4
ARRAYS = [
    (V.VT_I1, [-1, 2], 1, b"\xff\x02"),
    (V.VT_UI1, [1, 255], 1, b"\x01\xff"),
    (V.VT_I2, [1, -2], 2, b"\x01\x00\xfe\xff"),
    (V.VT_UI2, [65535], 2, b"\xff\xff"),
    (V.VT_BOOL, [True, False], 2, b"\xff\xff\x00\x00"),
    (V.VT_I4, [-1, 5], 4, struct.pack("<ii", -1, 5)),
    (V.VT_UI4, [7], 4, struct.pack("<I", 7)),
    (V.VT_R4, [0.5, -4.0], 8, struct.pack("<f", 0.5) + b"\0" * 4 + struct.pack("<f", -4.0) + b"\0" * 4),
    (V.VT_R4, [0.5, -4.0], 4, struct.pack("<ff", 0.5, -4.0)),      # packed floats read too
    (V.VT_R8, [1e300], 8, struct.pack("<d", 1e300)),
    (V.VT_BSTR, ["a", "", "bc"], 8, ctx_string("a") + ctx_string("") + ctx_string("bc")),
    (V.VT_BSTR, ["x"], 4, ctx_string("x")),                         # a 32-bit sender
    (V.VT_NULL, [None, None, None], 0, b""),
]


@pytest.mark.parametrize("vartype,values,size,elements", ARRAYS, ids=lambda x: getattr(x, "name", None))
def test_array_property_layout(vartype, values, size, elements):
    wire = struct.pack("<II", len(values), size) + elements
    data = buffer(prop("arr", VT_ARRAY | vartype, wire))
    ctx = parse_context(data)
    p = ctx.properties[0]
    assert p.type == VT_ARRAY | vartype and p.type_name == f"VT_ARRAY|{vartype.name}"
    assert p.value == values and p.element_size == size
    assert build_context(ctx) == data


def test_array_element_size_defaults_to_a_64_bit_sender():
    p = ContextProperty("names", VT_ARRAY | V.VT_BSTR, ["a"])
    assert p.element_size == 8
    assert ContextProperty("r", VT_ARRAY | V.VT_R4, [1.0]).element_size == 8
    assert ContextProperty("b", VT_ARRAY | V.VT_UI1, [1]).element_size == 1


# ---------------------------------------------------------------------------
# VT_UNKNOWN: embedded IWbemClassObjects
# ---------------------------------------------------------------------------

@needs_tshark
def test_a_real_windows_instance_embedded_as_vt_unknown():
    unit = encoding_units(stub("wmimplant.pcap", 203))[0]   # PutInstance's Win32_Environment
    data = buffer(prop("__Target", V.VT_UNKNOWN, unit), prop("n", V.VT_I4, b"\x01" + b"\0" * 7))
    ctx = parse_context(data)
    inst = ctx.get("__Target")
    assert inst.class_name == "Win32_Environment"
    assert inst.get("Name") == "puFHs"
    assert inst.get("UserName") == "picklesworth\\administrator"
    assert ctx.get("n") == 1
    assert build_context(ctx) == data          # wmio keeps Windows's own layout


def test_vt_unknown_as_bare_encoding_unit_or_whole_objref(small_class, small_instance):
    for objref in (False, True):
        ctx = WbemContext([GUID], [
            ContextProperty("cls", V.VT_UNKNOWN, small_class, objref=objref),
            ContextProperty("objs", VT_ARRAY | V.VT_UNKNOWN, [small_instance, small_instance], objref=objref),
        ])
        data = build_context(ctx)
        assert (b"MEOW" in data) == objref
        back = parse_context(data)
        assert back == ctx
        assert back.get("objs")[1].get("Tags") == ["x", "y"]


def test_vt_unknown_layout_is_the_encoding_unit(small_instance):
    unit = wmio.build_encoding_unit(small_instance)
    data = buffer(prop("o", V.VT_UNKNOWN, unit))
    assert parse_context(data).get("o").get("Level") == 3
    assert build_context(parse_context(data)) == data


# ---------------------------------------------------------------------------
# the OBJREF_CUSTOM that carries a context
# ---------------------------------------------------------------------------

def test_context_objref_carries_the_unmarshaler_clsid():
    ctx = WbemContext([GUID], [ContextProperty("__ProviderArchitecture", V.VT_I4, 32)])
    data = build_context_objref(ctx)
    assert data[:4] == b"MEOW" and struct.unpack_from("<I", data, 4)[0] == 4
    assert data[24:40] == CLSID_WBEM_CONTEXT_UNMARSHALER.bytes_le
    back = parse_context_objref(data)
    assert back == ctx and back.size == len(data)
    wrong = data[:24] + uuid.uuid4().bytes_le + data[40:]
    with pytest.raises(DecodeError) as e:
        parse_context_objref(wrong)
    assert e.value.structure == "OBJREF_CUSTOM.clsid" and e.value.offset == 24


# ---------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------

def _int(bits, signed):
    return st.integers(-(1 << bits - 1), (1 << bits - 1) - 1) if signed else st.integers(0, (1 << bits) - 1)


VALUES = {
    V.VT_NULL: st.none(),
    V.VT_I1: _int(8, True), V.VT_UI1: _int(8, False),
    V.VT_I2: _int(16, True), V.VT_UI2: _int(16, False),
    V.VT_I4: _int(32, True), V.VT_UI4: _int(32, False),
    V.VT_BOOL: st.booleans(),
    V.VT_R4: st.floats(width=32, allow_nan=False),
    V.VT_R8: st.floats(allow_nan=False),
    V.VT_BSTR: st.text(max_size=16),
}


@st.composite
def properties(draw, objects):
    values = {**VALUES, V.VT_UNKNOWN: st.sampled_from(objects)}
    vartype = draw(st.sampled_from(sorted(values)))
    name = draw(st.text(max_size=24))
    flags = draw(st.sampled_from([0, 0, 1, 0xFFFFFFFF]))
    objref = draw(st.booleans()) if vartype == V.VT_UNKNOWN else False
    if draw(st.booleans()):
        value = draw(st.lists(values[vartype], max_size=5))
        size = None
        if vartype in (V.VT_R4, V.VT_BSTR, V.VT_UNKNOWN):
            size = draw(st.sampled_from([4, 8]))
        # an empty array shows no object, so no wrapping either
        return ContextProperty(name, VT_ARRAY | vartype, value, flags, size, objref and bool(value))
    return ContextProperty(name, vartype, draw(values[vartype]), flags, None, objref)


@pytest.fixture(scope="module")
def objects(small_class, small_instance):
    return [small_class, small_instance]


def test_round_trip_of_random_contexts(objects):
    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(guids=st.lists(st.uuids(), min_size=1, max_size=2),
           props=st.lists(properties(objects), max_size=8))
    def check(guids, props):
        ctx = WbemContext(guids, props)
        data = build_context(ctx)
        back = parse_context(data)
        assert back == ctx
        assert back.size == len(data)
    check()


def test_lone_surrogates_survive():
    ctx = WbemContext([GUID], [ContextProperty("\ud800x", V.VT_BSTR, "a\udfffb")])
    assert parse_context(build_context(ctx)) == ctx


@pytest.mark.parametrize("p", [
    ContextProperty("x", V.VT_I1, 200),
    ContextProperty("x", V.VT_UI4, -1),
    ContextProperty("x", 0x0007, 1.0),          # VT_DATE is not allowed
    ContextProperty("x", VT_ARRAY | V.VT_I4, 5),
])
def test_values_that_do_not_fit_are_encode_errors(p):
    with pytest.raises(EncodeError):
        build_context(WbemContext([GUID], [p]))


# ---------------------------------------------------------------------------
# hostile input
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rich(small_class, small_instance):
    return build_context(WbemContext([GUID], [
        ContextProperty("__ProviderArchitecture", V.VT_I4, 64),
        ContextProperty("s", V.VT_BSTR, "value"),
        ContextProperty("o", V.VT_UNKNOWN, small_instance),
        ContextProperty("r", VT_ARRAY | V.VT_R4, [1.0, 2.0]),
        ContextProperty("b", VT_ARRAY | V.VT_BSTR, ["p", "q"]),
        ContextProperty("c", VT_ARRAY | V.VT_UNKNOWN, [small_class], objref=True),
        ContextProperty("n", V.VT_NULL),
    ]))


def test_unknown_property_type_is_located():
    data = buffer(prop("p", 0x0007, b"\0" * 8))
    with pytest.raises(DecodeError) as e:
        parse_context(data)
    assert e.value.structure == "IWbemContextProperty.PropertyType"
    assert e.value.offset == 4 + 16 + 4 + 4 + 2 + 4     # the PropertyType field


def test_absurd_counts_are_refused_without_allocating():
    for data, structure in [
        (struct.pack("<I", 0xFFFFFFFF), "IWbemContextBuffer.Guids"),
        (buffer()[:-4] + struct.pack("<I", 0x7FFFFFFF), "IWbemContextBuffer.Properties"),
        (buffer(prop("p", VT_ARRAY | V.VT_I4, struct.pack("<II", 0x40000000, 4))), "IWbemContextArray.Elements"),
        (buffer(prop("p", VT_ARRAY | V.VT_NULL, struct.pack("<II", 0xFFFFFFFF, 0))), "IWbemContextArray.Elements"),
        (buffer(prop("p", V.VT_BSTR, struct.pack("<I", 0x7FFFFFFF))), "IWbemContextString.Characters"),
        (buffer(prop("p", VT_ARRAY | V.VT_I4, struct.pack("<II", 1, 3) + b"\0" * 4)), "IWbemContextArray.Elements"),
    ]:
        with pytest.raises(DecodeError) as e:
            parse_context(data)
        assert e.value.structure == structure, e.value


def test_every_truncation_is_a_decode_error(rich):
    for n in range(len(rich)):
        with pytest.raises(DecodeError):
            parse_context(rich[:n])


def test_random_mutations_only_raise_decode_error_quickly(rich):
    run = decode_mutations(parse_context, rich, seed=213)
    assert_linear(run, len(rich))
