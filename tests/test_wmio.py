"""MS-WMIO encoding: objects we build, the spec's own example, bad input.

Real Windows encodings are in test_wmio_real.py.
"""

from __future__ import annotations

import datetime as dt
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from work_meter import linear_in
from wmiscope.formats import DecodeError, EncodeError, cim, wmio
from wmiscope.formats.cim import CIM_ARRAY_FLAG, CimType, DmtfDateTime
from wmiscope.formats.wmio import Method, Property, Qualifier, WmiClass, WmiInstance

# [MS-WMIO] section 3 "Structure Examples": the class `Base { [key] sint32 Id; }`
# as the spec prints it, line by line.  Its ObjectEncodingLength (0xD0) is
# larger than the ObjectBlock (175 octets, see the note in 2.2.1); the spec
# shows 17 of the octets after the block and stops 8 short of 0xD0.
SPEC_BASE_LINES = """
78 56 34 12 D0 00 00 00
05 00 44 50 52 41 56 41 54 2D 44 45
56 00 00 52 4F 4F 54 00 1D 00 00 00 00 FF FF FF
FF 00 00 00 00 04 00 00 00 04 00 00 00 00 00 00
00 00 00 00 80
0C 00 00 00 00 00 00 00 00 00 00 80
66 00 00 00 00 00 00 00 00 05 00 00 00 04 00
00 00 04 00 00 00 01 00 00 00 06 00 00 00 0A 00
00 00 05 FF FF FF FF 3C 00 00 80 00 42 61 73 65
00 00 49 64 00 03 00 00 00 00 00 00 00 00 00 00
00 00 00 1C 00 00 00 0A 00 00 80 03 08 00 00 00
34 00 00 00 01 00 00 80 13 0B 00 00 00 FF FF 00
73 69 6E 74 33 32 00 0C 00 00 00 00 00 34 00 00
00 00 80 00 80 13 0B 00 00 00 FF FF 00 73 69 6E
74 33 32 00
"""
SPEC_BASE_CLASS = bytes.fromhex(SPEC_BASE_LINES.replace("\n", " "))
SPEC_BASE_BLOCK = SPEC_BASE_CLASS[8:8 + 175]


def test_spec_example_base_class():
    blk = SPEC_BASE_BLOCK
    cls = wmio.parse_object_block(blk)
    assert isinstance(cls, WmiClass)
    assert cls.name == "Base" and cls.superclass is None
    assert cls.decoration == ("DPRAVAT-DEV", "ROOT")
    (idp,) = cls.properties
    assert (idp.name, idp.type_name, idp.is_key, idp.value, idp.null) == ("Id", "sint32", True, None, True)
    key = [q for q in idp.qualifiers if q.name == "key"][0]
    # flavor 0x13: to instance, to subclass, not overridable
    assert key.flavors == ["PROPAGATE_TO_INSTANCE", "PROPAGATE_TO_DERIVED_CLASS", "NOT_OVERRIDABLE"]
    assert cls.parent.name is None and cls.parent.properties == []
    # the ParentClass of a root class is an empty ClassPart with a NULL name
    assert wmio.build_object_block(cls) == blk
    # the CurrentClass MethodsPart carries 0x0034 in MethodCountPadding: kept
    raw = wmio.parse_raw(blk, unit=False)
    assert raw.ClassType.CurrentClass.MethodsPart.MethodCountPadding == 0x34
    # With the 0xD0 ObjectEncodingLength the block is followed by other
    # octets (padded here to the declared length); they survive a rebuild.
    unit = SPEC_BASE_CLASS + b"\0" * (8 + 0xD0 - len(SPEC_BASE_CLASS))
    again = wmio.parse_encoding_unit(unit)
    assert again == cls
    assert wmio.build_encoding_unit(again) == unit
    assert "[key : ToInstance ToSubclass DisableOverride] sint32 Id;" in wmio.to_mof(cls)


# ----------------------------------------------------------------------------
# hand-made objects covering every CIM type
# ----------------------------------------------------------------------------

def _every_type_class():
    return wmio.new_class(
        "Test_Every", superclass=None, qualifiers={"dynamic": True, "provider": "TestProv"},
        decoration=("HOST1", "root\\cimv2"),
        properties=[
            ("Name", "string", None, {"key": True}), ("Count", "uint32", 7), ("S8", "sint8", -3),
            ("U8", "uint8"), ("S16", "sint16"), ("U16", "uint16"), ("S32", "sint32"), ("S64", "sint64"),
            ("U64", "uint64"), ("R32", "real32"), ("R64", "real64"), ("B", "boolean", True),
            ("C", "char16"), ("When", "datetime"), ("Ref", "ref:Win32_Foo"), ("Tags", "string[]"),
            ("Nums", "uint32[]"), ("Flags", "boolean[]"), ("Dates", "datetime[]"),
            ("Emb", "object:Test_Inner"), ("Embs", "object:Test_Inner[]"),
        ],
        methods=[("Run", [("Arg", "string"), ("Level", "uint8")], [("ReturnValue", "uint32")],
                  {"Implemented": True})])


def _inner():
    return wmio.new_instance(wmio.new_class("Test_Inner", properties=[("V", "uint32"), ("T", "string")]),
                             {"V": 5, "T": "ünïcode"})


EVERY_VALUES = {
    "Name": "héllo wörld", "S8": -5, "U8": 200, "S16": -300, "U16": 60000, "S32": -70000,
    "S64": -2 ** 40, "U64": 2 ** 63, "R32": 1.5, "R64": 2.25, "B": False, "C": "ж",
    "When": "20230505123456.000000+060", "Ref": 'Win32_Foo.Id="1"', "Tags": ["a", "bé", "日本"],
    "Nums": [1, 2, 3], "Flags": [True, False], "Dates": ["00000001020304.000000:000"],
    "Emb": None, "Embs": [],
}


def test_every_type_round_trip():
    cls = _every_type_class()
    vals = dict(EVERY_VALUES, Emb=_inner(), Embs=[_inner(), _inner()])
    inst = wmio.new_instance(cls, vals)
    for obj in (cls, inst):
        b = wmio.build_encoding_unit(obj)
        back = wmio.parse_encoding_unit(b)
        assert back == obj
        assert wmio.build_encoding_unit(back) == b
    back = wmio.parse_encoding_unit(wmio.build_encoding_unit(inst))
    assert back.get("Emb").get("T") == "ünïcode"
    assert back.get("Count") == 7 and back.is_default("Count")      # class default
    assert back.get("Emb").class_.name == "Test_Inner"
    assert back.path == 'Test_Every.Name="héllo wörld"'
    assert back.get("When").to_python() == dt.datetime(2023, 5, 5, 12, 34, 56,
                                                      tzinfo=dt.timezone(dt.timedelta(minutes=60)))
    assert back.get("Dates")[0].to_python() == dt.timedelta(days=1, hours=2, minutes=3, seconds=4)
    run = wmio.parse_encoding_unit(wmio.build_encoding_unit(cls)).get_method("Run")
    assert [p.name for p in run.in_params.properties] == ["Arg", "Level"]
    assert run.out_params.get_property("ReturnValue").type_name == "uint32"


def test_null_versus_default():
    """NdTable (2.2.26): bit 0 NULL, bit 1 default from the class."""
    cls = wmio.new_class("T", properties=[("A", "uint32", 42), ("B", "uint32", 43), ("C", "string")])
    inst = wmio.new_instance(cls, {"A": None})                 # explicit NULL over a default
    back = wmio.parse_encoding_unit(wmio.build_encoding_unit(inst))
    assert back.get("A") is None and not back.is_default("A")
    assert back.get("B") == 43 and back.is_default("B")
    assert back.get("C") is None and back.is_default("C")
    raw = wmio.parse_raw(wmio.build_encoding_unit(inst)).ObjectBlock.InstanceType
    by_order = {p.name: p.order for p in cls.properties}
    assert raw.NdTable[by_order["A"]] == 1       # NULL
    assert raw.NdTable[by_order["B"]] == 2       # default, not NULL
    assert raw.NdTable[by_order["C"]] == 3       # default, and the default is NULL
    c = wmio.parse_encoding_unit(wmio.build_encoding_unit(cls))
    assert [(p.name, p.value, p.null) for p in c.declared()] == [("A", 42, False), ("B", 43, False), ("C", None, True)]


def test_both_encoded_string_forms():
    """2.2.78: flag 0 one octet per char (Latin-1), flag 1 UTF-16LE."""
    assert wmio.encode_string("abc") == b"\0abc\0"
    assert wmio.encode_string("é") == b"\0\xe9\0"
    assert wmio.encode_string("ж") == b"\1" + "ж".encode("utf-16-le") + b"\0\0"
    assert wmio.read_encoded_string(b"\1a\0\0\0", 0, 5) == ("a", 1, 5)
    # a UTF-16 code unit ending in 00 followed by one starting with 00 is not a terminator
    s = "\u0100\u0041"
    enc = wmio.encode_string(s, 1)
    assert wmio.read_encoded_string(enc, 0, len(enc)) == (s, 1, len(enc))


def test_dictionary_heap_refs():
    """2.2.69/2.2.80: qualifier names from the dictionary are high-bit HeapRefs."""
    cls = wmio.new_class("T", properties=[("K", "string", None, {"key": True, "read": True})])
    raw = wmio.parse_raw(wmio.build_encoding_unit(cls)).ObjectBlock.ClassType.CurrentClass.ClassPart
    heap = raw.ClassHeap.HeapItem
    info = wmio.PropertyInfo.parse(heap[raw.PropertyLookupTable.PropertyLookup[0].PropertyInfoRef:])
    names = [q.QualifierName for q in info.PropertyQualifierSet.Qualifier]
    assert [int(n) for n in names] == [10, 1, 3]            # CIMTYPE, key, read
    assert all(isinstance(n, wmio.DictionaryRef) for n in names)
    assert wmio.HeapRef.build(names[1]) == struct.pack("<I", 0x80000001)
    assert wmio.HeapRef.parse(b"\xff\xff\xff\xff") is None


def test_qualifier_flavor_names():
    assert cim.flavor_names(0x33) == ["PROPAGATE_TO_INSTANCE", "PROPAGATE_TO_DERIVED_CLASS",
                                      "NOT_OVERRIDABLE", "ORIGIN_PROPAGATED"]
    assert cim.flavor_names(0x80) == ["AMENDED"]
    assert cim.flavor_names(0x04) == ["0x04"]
    assert Qualifier("x", 0x13, CimType.BOOLEAN, True).flavors[-1] == "NOT_OVERRIDABLE"


def test_inherited_flag_and_superclass():
    base = wmio.new_class("Base", properties=[("Id", "sint32", None, [("key", True, 0x13)])])
    derived = wmio.new_class("Derived", superclass=base, properties=[("Data", "string", "dflt")])
    back = wmio.parse_encoding_unit(wmio.build_encoding_unit(derived))
    assert back == derived
    idp = back.get_property("Id")
    assert idp.inherited and idp.cimtype == CimType.SINT32 | cim.CIM_INHERITED_FLAG and idp.is_key
    assert back.parent.name == "Base" and back.superclass == "Base" and back.derivation == ["Base"]
    assert back.get_property("Data").value == "dflt" and back.get_property("Data").origin == 1
    mof = wmio.to_mof(back)
    assert "class Derived : Base" in mof and 'string Data = "dflt";' in mof


def test_instance_noclass_and_parts_round_trip():
    cls = _every_type_class()
    inst = wmio.new_instance(cls, dict(EVERY_VALUES, Emb=_inner()))
    full = wmio.parse_encoding_unit(wmio.build_encoding_unit(inst))
    nc = wmio.build_instance_noclass(full)
    back = wmio.parse_instance_noclass(nc, full.class_)
    assert back.values == full.values and back.decoration == full.decoration
    assert wmio.build_instance_noclass(back) == nc
    parts = wmio.build_instance_parts(full)
    back2 = wmio.parse_instance_parts(parts, full.class_, 0, len(parts))
    assert back2.values == full.values
    # the NoClass encoding has no CIM class flag, and no class part
    assert nc[0] & wmio.ObjectFlags.CIM_CLASS == 0 and len(nc) < len(wmio.build_object_block(full))


def test_instance_property_qualifiers():
    cls = wmio.new_class("T", properties=[("A", "uint32"), ("B", "string")])
    inst = wmio.new_instance(cls, {"A": 1, "B": "x"}, qualifiers={"Note": "inst"})
    inst.property_qualifiers = {"A": [Qualifier("test", 0, CimType.BOOLEAN, True)], "B": []}
    back = wmio.parse_encoding_unit(wmio.build_encoding_unit(inst))
    assert back == inst
    assert back.property_qualifiers["A"][0].name == "test" and back.qualifiers[0].value == "inst"
    raw = wmio.parse_raw(wmio.build_encoding_unit(inst)).ObjectBlock.InstanceType
    assert raw.InstancePropQualifierSet.InstPropQualSetFlag == 2
    assert "[test] A = 1;" in wmio.to_mof(back)


def test_values_that_do_not_fit_are_encode_errors():
    cls = wmio.new_class("T", properties=[("A", "uint8")])
    with pytest.raises(EncodeError):
        wmio.build_encoding_unit(wmio.new_instance(cls, {"A": 256}))
    with pytest.raises(EncodeError):
        wmio.build_encoding_unit(wmio.new_instance(cls, {"A": "x"}))


def test_dmtf_datetime_forms():
    ts = DmtfDateTime("20230505123456.123456-300")
    assert not ts.is_interval
    assert ts.to_python().utcoffset() == dt.timedelta(minutes=-300)
    iv = DmtfDateTime("00000010000001.000002:000")
    assert iv.is_interval and iv.to_python() == dt.timedelta(days=10, seconds=1, microseconds=2)
    assert DmtfDateTime("2023****123456.000000+000").to_python() is None
    assert DmtfDateTime.from_python(iv.to_python()) == iv
    assert DmtfDateTime.from_python(ts.to_python()) == ts


def test_to_json_is_plain_json():
    import json

    cls = _every_type_class()
    inst = wmio.new_instance(cls, dict(EVERY_VALUES, Emb=_inner()))
    j = wmio.to_json(wmio.parse_encoding_unit(wmio.build_encoding_unit(inst)))
    text = json.dumps(j)
    assert j["properties"]["When"]["value"] == "20230505123456.000000+060"
    assert j["properties"]["Emb"]["value"]["properties"]["V"]["value"] == 5
    assert j["properties"]["Count"] == {"type": "uint32", "value": 7, "null": False, "default": True}
    assert "héllo" in json.loads(text)["path"]


# ----------------------------------------------------------------------------
# independence: impacket's MS-WMIO decoder reads what we build
# ----------------------------------------------------------------------------

def _impacket(b: bytes):
    from impacket.dcerpc.v5.dcom import wmi

    ob = wmi.ENCODING_UNIT(b)["ObjectBlock"]
    ob.parseObject()
    return ob.ctCurrent


def _impacket_supports(p: Property, value) -> bool:
    # embedded objects come back from impacket as raw ENCODING_UNITs; for
    # datetime[] and ref[] it returns the element HeapRefs as numbers (only
    # string[] is followed), while 2.2.79/2.2.71 make every element of those
    # arrays a HeapRef to an Encoded-String, as we decode them.
    if p.base_type == CimType.OBJECT:
        return False
    return not (p.is_array and p.base_type in (CimType.DATETIME, CimType.REFERENCE))


def _impacket_value(p: Property, v):
    """Our value in impacket's conventions: booleans as 'True'/'False',
    char16 as its code point (impacket does not interpret those)."""
    if v is None:
        return None
    if not p.is_array and type(v) is int and v == 0xFFFFFFFF:
        # impacket's ENCODED_VALUE.getValue takes a cell of 0xFFFFFFFF for NULL,
        # even the uint32 (or uint64) number 4294967295 stored inline (2.2.71)
        return None
    if p.base_type == CimType.BOOLEAN:
        if p.is_array:  # elements come back as the raw BOOL cells
            return [0xFFFF if x else 0 for x in v]
        return "True" if v else "False"
    if p.base_type == CimType.CHAR16 and v is not None:
        return [ord(c) for c in v] if p.is_array else ord(v)
    return v


def _without_scalar_reals(inst: WmiInstance) -> WmiInstance:
    """impacket slices its heap with every non-NULL InstanceData cell before it
    looks at the type, so a real32/real64 value makes it raise TypeError:
    such values are made NULL before impacket sees the instance."""
    vals = {p.name: (None if p.base_type in (CimType.REAL32, CimType.REAL64) and not p.is_array
                     else inst.values[p.name])
            for p in inst.class_.properties if p.name not in inst.defaulted}
    out = wmio.new_instance(inst.class_, vals, inst.qualifiers, inst.decoration)
    out.property_qualifiers = inst.property_qualifiers
    return out


def assert_impacket_agrees(obj):
    if isinstance(obj, WmiInstance):
        obj = _without_scalar_reals(obj)
    b = wmio.build_encoding_unit(obj)
    theirs = _impacket(b)
    cls = obj if isinstance(obj, WmiClass) else obj.class_
    assert theirs["name"].split(" : ")[0] == cls.name
    assert set(theirs["properties"]) == {p.name for p in cls.properties}
    for p in cls.properties:
        tp = theirs["properties"][p.name]
        assert tp["order"] == p.order and tp["type"] == p.cimtype
        # impacket returns booleans as 'True'/'False' strings, and takes any
        # qualifier cell of 0xFFFFFFFF for NULL, even a uint32 4294967295
        # (2.2.71 makes numeric EncodedValues inline: it is a number)
        assert {k: v for k, v in tp["qualifiers"].items() if not isinstance(v, (bool, str)) or k == "CIMTYPE"} \
            == {q.name: (None if q.value == 0xFFFFFFFF and q.cimtype == CimType.UINT32 else q.value)
                for q in p.qualifiers if not isinstance(q.value, (bool, str)) or q.name == "CIMTYPE"}
    if isinstance(obj, WmiClass):
        assert list(theirs["methods"] or {}) == [m.name for m in obj.methods]
        for m in obj.methods:
            tin = theirs["methods"][m.name]["InParams"]
            # impacket lists parameters in DeclarationOrder
            assert list(tin or {}) == ([p.name for p in m.in_params.declared()] if m.in_params else [])
        return
    for p in cls.properties:
        v = obj.values[p.name]
        if p.name in obj.defaulted:
            # impacket reads the (zero) InstanceData cell of a defaulted
            # property; 2.2.27 says the class default applies, as we do.
            continue
        if _impacket_supports(p, v):
            assert theirs["properties"][p.name]["value"] == _impacket_value(p, v), p.name


def test_impacket_reads_our_every_type_objects():
    cls = _every_type_class()
    assert_impacket_agrees(cls)
    assert_impacket_agrees(wmio.new_instance(cls, EVERY_VALUES))


# ----------------------------------------------------------------------------
# hypothesis: generated classes and instances
# ----------------------------------------------------------------------------

_names = st.text(alphabet=st.sampled_from("abcXYZ_éøжж日本9"), min_size=1, max_size=10).filter(
    lambda s: not s[0].isdigit())
_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=20)
_dates = st.one_of(
    st.datetimes(min_value=dt.datetime(1601, 1, 2), max_value=dt.datetime(9999, 12, 30),
                 timezones=st.sampled_from([dt.timezone.utc, dt.timezone(dt.timedelta(minutes=-300))]))
    .map(DmtfDateTime.from_python),
    st.timedeltas(min_value=dt.timedelta(0), max_value=dt.timedelta(days=99999)).map(DmtfDateTime.from_python),
)
_SCALARS = {
    **{t: st.integers(lo, hi) for t, (lo, hi) in cim.INTEGER_RANGES.items()},
    CimType.REAL32: st.floats(width=32, allow_nan=False),
    CimType.REAL64: st.floats(allow_nan=False),
    CimType.BOOLEAN: st.booleans(),
    CimType.CHAR16: st.characters(max_codepoint=0xFFFF, blacklist_categories=("Cs",)),
    CimType.STRING: _text,
    CimType.REFERENCE: _text,
    CimType.DATETIME: _dates,
}


def _value(t: int, depth: int):
    b = t & 0x1FFF
    if b == CimType.OBJECT:
        one = _instances(depth + 1) if depth < 2 else st.none()
        if t & CIM_ARRAY_FLAG:
            return st.lists(_instances(depth + 1), max_size=2) if depth < 2 else st.just([])
        return one
    one = _SCALARS[CimType(b)]
    return st.lists(one, max_size=4) if t & CIM_ARRAY_FLAG else one


def _type_strategy(bases):
    return st.sampled_from(list(bases)).flatmap(lambda b: st.sampled_from([int(b), int(b) | CIM_ARRAY_FLAG]))


ALL_TYPES = list(CimType)
QUALIFIER_TYPES = [t for t in CimType if t != CimType.OBJECT]
# What impacket's decoder can read back (see _impacket_supports for values):
# it sizes an array-typed qualifier's cell by the element type, and slices its
# heap with every non-NULL class default or qualifier value before looking at
# the type (so reals raise TypeError); 4-octet and string types are safe.
IMPACKET_QUALIFIER_TYPES = [CimType.STRING, CimType.SINT32, CimType.UINT32]
# embedded objects are left out: impacket hands them back undecoded (and raises on
# nested per-property instance qualifiers)
IMPACKET_TYPES = [t for t in CimType if t not in (CimType.REAL32, CimType.REAL64, CimType.OBJECT)]
_flavors = st.sampled_from([0, 0x01, 0x02, 0x03, 0x10, 0x13, 0x23, 0x33, 0x80, 0x81])


@st.composite
def _qualifiers(draw, max_size=3, types=QUALIFIER_TYPES):
    names = draw(st.lists(st.one_of(_names, st.sampled_from(["key", "read", "write", "provider", "dynamic"])),
                          max_size=max_size, unique_by=str.lower))
    out = []
    for n in names:
        t = draw(_type_strategy(types))
        out.append(Qualifier(n, draw(_flavors), t, draw(_value(t, 9))))
    return out


@st.composite
def _classes(draw, depth=0, methods=True, types=ALL_TYPES, qtypes=QUALIFIER_TYPES, defaults=True):
    names = draw(st.lists(_names, min_size=0, max_size=6 if depth == 0 else 3, unique_by=str.lower))
    props = []
    for n in names:
        t = draw(_type_strategy(types))
        default = draw(st.one_of(st.none(), _value(t, depth + 1))) if defaults else None
        props.append(Property(n, t, None, default, draw(_qualifiers(types=qtypes)), 0, default is None))
    meths = []
    if methods and depth == 0:
        for mname in draw(st.lists(_names, max_size=2, unique_by=str.lower)):
            ins = draw(st.one_of(st.none(), _classes(depth + 1, False, types, qtypes, defaults)))
            outs = draw(st.one_of(st.none(), _classes(depth + 1, False, types, qtypes, defaults)))
            meths.append(Method(mname, draw(st.sampled_from([0, 1])), 0, draw(_qualifiers(types=qtypes)),
                                _params(ins), _params(outs)))
    deco = draw(st.one_of(st.none(), st.tuples(_names, _names)))
    return wmio.new_class(draw(_names), properties=props, methods=meths,
                          qualifiers=draw(_qualifiers(types=qtypes)), decoration=deco)


def _params(cls):
    if cls is None:
        return None
    cls.name, cls.decoration = "__PARAMETERS", None
    return cls


@st.composite
def _instances_of(draw, cls, depth, qtypes=QUALIFIER_TYPES, prop_quals=True):
    chosen = draw(st.lists(st.sampled_from(cls.properties), unique_by=lambda p: p.name)) if cls.properties else []
    values = {p.name: draw(st.one_of(st.none(), _value(p.cimtype, depth))) for p in chosen}
    inst = wmio.new_instance(cls, values, qualifiers=draw(_qualifiers(2, qtypes)), decoration=cls.decoration)
    if prop_quals and draw(st.booleans()) and cls.properties:
        inst.property_qualifiers = {p.name: draw(_qualifiers(1, qtypes)) for p in cls.properties}
    return inst


def _instances(depth):
    return _classes(depth, False).flatmap(lambda c: _instances_of(c, depth))


def _impacket_instances():
    return _classes(0, True, IMPACKET_TYPES, IMPACKET_QUALIFIER_TYPES, False).flatmap(
        # impacket raises on InstPropQualSetFlag 2 (per-property instance qualifiers)
        lambda c: _instances_of(c, 1, IMPACKET_QUALIFIER_TYPES, prop_quals=False))


HSET = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.data_too_large])


@HSET
@given(_classes())
def test_hypothesis_class_round_trip(cls):
    b = wmio.build_encoding_unit(cls)
    back = wmio.parse_encoding_unit(b)
    assert back == cls
    assert wmio.build_encoding_unit(back) == b
    assert wmio.build_encoding_unit(back, canonical=True) == b
    wmio.to_mof(back)
    wmio.to_json(back)


@HSET
@given(_instances(0))
def test_hypothesis_instance_round_trip(inst):
    b = wmio.build_encoding_unit(inst)
    back = wmio.parse_encoding_unit(b)
    assert back == inst
    assert wmio.build_encoding_unit(back) == b
    nc = wmio.build_instance_noclass(back)
    assert wmio.parse_instance_noclass(nc, back.class_).values == inst.values
    wmio.to_mof(back)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(_impacket_instances())
def test_hypothesis_impacket_agrees(inst):
    # impacket keeps qualifier sets as name->value dicts; names are unique here.
    assert_impacket_agrees(inst)
    assert_impacket_agrees(inst.class_)


# ----------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------

def _sample_units() -> list[bytes]:
    cls = _every_type_class()
    inst = wmio.new_instance(cls, dict(EVERY_VALUES, Emb=_inner(), Embs=[_inner()]))
    return [wmio.build_encoding_unit(cls), wmio.build_encoding_unit(inst),
            SPEC_BASE_CLASS + b"\0" * (8 + 0xD0 - len(SPEC_BASE_CLASS))]


def test_bad_signature():
    b = bytearray(_sample_units()[0])
    b[0] = 0x79
    with pytest.raises(DecodeError) as e:
        wmio.parse_encoding_unit(bytes(b))
    assert e.value.structure == "EncodingUnit.Signature" and e.value.offset == 0


def test_truncations_name_structure_and_offset():
    b = _sample_units()[1]
    seen = set()
    for cut in range(0, len(b), 7):
        with pytest.raises(DecodeError) as e:
            wmio.parse_encoding_unit(b[:cut])
        assert 0 <= e.value.offset <= len(b)
        seen.add(e.value.structure)
    assert {"EncodingUnit", "ClassPart"} & seen


def test_heapref_outside_heap():
    cls = wmio.new_class("T", properties=[("A", "string", "x")])
    b = bytearray(wmio.build_encoding_unit(cls))
    raw = wmio.parse_raw(bytes(b)).ObjectBlock.ClassType.CurrentClass.ClassPart
    # PropertyInfoRef of the only property -> far outside the ClassHeap
    lookup_at = bytes(b).index(struct.pack("<II", raw.PropertyLookupTable.PropertyLookup[0].PropertyNameRef,
                                           raw.PropertyLookupTable.PropertyLookup[0].PropertyInfoRef))
    b[lookup_at + 4:lookup_at + 8] = struct.pack("<I", 0x00FFFFFF)
    with pytest.raises(DecodeError) as e:
        wmio.parse_encoding_unit(bytes(b))
    assert e.value.structure == "PropertyInfo" and "outside" in e.value.reason
    assert e.value.offset > lookup_at  # the ClassHeap of CurrentClass


def test_absurd_array_count():
    cls = wmio.new_class("T", properties=[("A", "uint32[]", [1, 2])])
    b = bytearray(wmio.build_encoding_unit(cls))
    wmio.parse_encoding_unit(bytes(b))   # first-use costs (lazy imports) are not the refusal's
    i = bytes(b).index(struct.pack("<III", 2, 1, 2))
    b[i:i + 4] = struct.pack("<I", 0x7FFFFFFF)
    # refused before looping over or allocating 2**31-1 elements
    with pytest.raises(DecodeError) as e, linear_in(len(b)):
        wmio.parse_encoding_unit(bytes(b))
    assert "ArrayCount" in e.value.reason


def test_absurd_property_count():
    b = bytearray(_sample_units()[0])
    raw = wmio.parse_raw(bytes(b)).ObjectBlock.ClassType.CurrentClass.ClassPart
    n = raw.PropertyLookupTable.PropertyCount
    i = bytes(b).index(struct.pack("<I", n) + struct.pack("<I", raw.PropertyLookupTable.PropertyLookup[0].PropertyNameRef))
    b[i:i + 4] = struct.pack("<I", 0xFFFFFFF0)
    with pytest.raises(DecodeError):
        wmio.parse_encoding_unit(bytes(b))


def test_object_flags_neither_class_nor_instance():
    b = bytearray(_sample_units()[1])
    b[8] = 0x00
    with pytest.raises(DecodeError) as e:
        wmio.parse_encoding_unit(bytes(b))
    assert e.value.offset == 8


def test_deeply_nested_embedded_objects_are_refused():
    inner = wmio.new_class("N", properties=[("Next", "object:N")])
    obj = wmio.new_instance(inner, {"Next": None})
    for _ in range(wmio.MAX_DEPTH + 2):
        obj = wmio.new_instance(inner, {"Next": obj})
    b = wmio.build_encoding_unit(obj)
    with pytest.raises(DecodeError) as e:
        wmio.parse_encoding_unit(b)
    assert "nested deeper" in e.value.reason


def test_embedded_object_pointing_at_its_own_heap_start():
    """A CIM-TYPE-OBJECT HeapRef aimed at the enclosing heap's first item (the
    class name string) instead of an ObjectEncodingLength+ObjectBlock."""
    cls = wmio.new_class("N", properties=[("Next", "object:N")])
    b = bytearray(wmio.build_encoding_unit(wmio.new_instance(cls, {"Next": _inner()})))
    raw = wmio.parse_raw(bytes(b)).ObjectBlock.InstanceType
    data_at = raw._nd_offset + len(raw.NdTable) // 4   # Tell offsets are absolute
    (ref,) = struct.unpack_from("<I", b, data_at)
    assert ref > 0
    b[data_at:data_at + 4] = b"\0\0\0\0"
    with pytest.raises(DecodeError):
        wmio.parse_encoding_unit(bytes(b))


def test_shared_embedded_objects_decode_once():
    """Many array elements referring to one embedded object: decoded once, fast."""
    cls = wmio.new_class("T", properties=[("Objs", "object:Test_Inner[]")])
    b = bytearray(wmio.build_encoding_unit(wmio.new_instance(cls, {"Objs": [_inner()] * 2})))
    raw = wmio.parse_raw(bytes(b)).ObjectBlock.InstanceType
    heap = raw.InstanceHeap.HeapItem
    (ref,) = struct.unpack_from("<I", raw.InstanceData, 0)
    count, first, second = struct.unpack_from("<III", heap, ref)
    assert count == 2 and first != second
    heap_at = raw.InstanceHeap._offset
    struct.pack_into("<I", b, heap_at + ref + 8, first)
    back = wmio.parse_encoding_unit(bytes(b))
    assert back.get("Objs")[0] is back.get("Objs")[1]


def test_fuzz_mutations_only_raise_decode_error():
    """Random byte flips, overwrites and truncations of valid encodings:
    the decoder either returns an object or raises DecodeError, quickly."""
    rng = random.Random(20240505)
    seeds = _sample_units()
    for seed in seeds:   # first-use costs are no mutation's work
        wmio.to_json(wmio.parse_encoding_unit(seed))
    cases = 0
    for _ in range(300):
        b = bytearray(rng.choice(seeds))
        kind = rng.randrange(4)
        if kind == 0:
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif kind == 1:
            i = rng.randrange(8, len(b) - 4)
            b[i:i + 4] = struct.pack("<I", rng.choice([0xFFFFFFFF, 0x7FFFFFFF, 0x80000005, len(b), 1 << rng.randrange(32)]))
        elif kind == 2:
            b = b[:rng.randrange(len(b))]
        else:
            i = rng.randrange(8, len(b))
            b[i] = rng.randrange(256)
        with linear_in(len(b)):
            try:
                obj = wmio.parse_encoding_unit(bytes(b))
                wmio.to_json(obj)
            except DecodeError:
                pass
        cases += 1
    assert cases == 300


def test_noclass_against_wrong_class_is_decode_error():
    small = wmio.new_class("S", properties=[("A", "uint8")])
    big = wmio.parse_encoding_unit(wmio.build_encoding_unit(wmio.new_instance(_every_type_class(), EVERY_VALUES)))
    nc = wmio.build_instance_noclass(big)
    with pytest.raises(DecodeError):
        wmio.parse_instance_noclass(nc, wmio.parse_encoding_unit(
            wmio.build_encoding_unit(wmio.new_instance(small, {"A": 1}))).class_)


def test_compiled_parsers_kept_across_runs(tmp_path, monkeypatch):
    """construct's compiled parser is kept on disk by the digest of its generated source:
    the id() numbers that source names its callbacks by are renumbered, so compiling the
    same declaration again (as a later run does) finds the same entry, and the parser
    read back parses as the declaration does."""
    from wmiscope.formats.declarations import compiled_parser

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cls = wmio.new_class("Demo", properties=[("Name", CimType.STRING, "x", {"key": True}),
                                             ("Count", CimType.UINT32, 7)])
    unit = wmio.build_encoding_unit(cls)
    first = compiled_parser(wmio.EncodingUnit)
    kept = sorted((tmp_path / "wmiscope" / "construct").iterdir())
    assert len(kept) == 1
    again = compiled_parser(wmio.EncodingUnit)
    assert sorted((tmp_path / "wmiscope" / "construct").iterdir()) == kept
    expected = wmio.EncodingUnit.parse(unit)
    assert first.parse(unit) == again.parse(unit) == expected
    # an unreadable entry only means compiling again
    kept[0].write_bytes(b"not byte code")
    assert compiled_parser(wmio.EncodingUnit).parse(unit) == expected
