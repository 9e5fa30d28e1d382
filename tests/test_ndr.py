"""The NDR reader and writer: real stubs, round trips, hostile counts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

import tshark_util
from work_meter import linear_in
from wmiscope.dissectors.ndr import DecodeError, NdrReader, NdrWriter, guid_bytes, guid_text

NTLMLOGIN = ("LM_WMI_ProcessCallCreate.pcapng", 45)
SETCLIENTINFO = ("LM_WMI_ProcessCallCreate.pcapng", 39)


def test_real_ntlmlogin_request():
    """IWbemLevel1Login::NTLMLogin (frame 45): ORPCTHIS, two unique strings, lFlags, a NULL pCtx."""
    r = NdrReader(tshark_util.stub(*NTLMLOGIN), structure="NTLMLogin")
    assert (r.u16(), r.u16()) == (5, 7)
    r.u32(), r.u32()
    assert r.guid() == "fd7ed21b-dac9-49d2-aadd-65b0c706fc49"   # causality ID, as tshark shows it
    assert r.referent() == 0                                    # no ORPC extensions
    assert r.unique_wstring() == "\\\\172.16.66.36\\ROOT\\CIMV2"
    assert r.unique_wstring() == "ms_409,en-US,en"
    assert r.i32() == 0
    assert r.interface_pointer() is None
    assert r.remaining == 0


def test_real_setclientinfo():
    r = NdrReader(tshark_util.stub(*SETCLIENTINFO))
    r.skip(32)                          # ORPCTHIS without extensions
    assert r.unique_wstring() == "02694W-WIN10"
    assert r.i32() == 3836
    assert r.i32() == 0


def test_real_bstr_impacket_getobject():
    """impacket's GetObject (frame 44): BSTR `Win32_Process` behind a unique pointer, then 0xbf padding."""
    r = NdrReader(tshark_util.stub("impacket_wmiexec.pcapng", 44))
    r.skip(32)
    assert r.bstr() == "Win32_Process"
    assert r.i32() == 0                 # lFlags, after skipping the two bytes of alignment padding
    assert r.pos == 0x50


def test_bstr_forms():
    """MS-OAUT 2.2.23.1: little-endian even in a big-endian stream; cBytes 0xFFFFFFFF is NULL."""
    w = NdrWriter(little_endian=False)
    w.u32(0x20000)
    w.flagged_word_blob(None)
    w.u32(0x20004)
    w.flagged_word_blob("ok")
    data = w.getvalue()
    assert data[4:16] == bytes.fromhex("00000000ffffffff00000000")
    r = NdrReader(data + bytes.fromhex("00020008 02000000 03000000 02000000 41004200"), little_endian=False)
    assert r.bstr() is None
    assert r.bstr() == "ok"
    assert r.bstr() == "A"                 # odd cBytes: the last byte is no character
    assert r.remaining == 0


def test_alignment_is_relative_to_base():
    buf = b"\xff" * 3 + b"\x01" + b"\x00" * 3 + b"\x02\x00\x00\x00"
    r = NdrReader(buf, 3)              # a serialized structure starting at an odd offset
    assert r.u8() == 1
    assert r.u32() == 2                # aligned to 4 from offset 3, i.e. at 7
    assert r.pos == 11


def test_big_endian():
    w = NdrWriter(little_endian=False)
    w.u16(0x1234)
    w.u32(0xDEADBEEF)
    w.u64(1 << 40)
    w.guid("00112233-4455-6677-8899-aabbccddeeff")
    w.wstring("BE")
    data = w.getvalue()
    assert data[:2] == b"\x12\x34"
    r = NdrReader(data, little_endian=False)
    assert (r.u16(), r.u32(), r.u64()) == (0x1234, 0xDEADBEEF, 1 << 40)
    assert r.guid() == "00112233-4455-6677-8899-aabbccddeeff"
    assert r.wstring() == "BE"


def test_guid_text_matches_uuid_module():
    import uuid
    u = uuid.UUID("9556dc99-828c-11cf-a37e-00aa003240c7")
    assert guid_text(u.bytes_le) == str(u)
    assert guid_bytes(str(u)) == u.bytes_le


def test_deferred_pointees_in_ndr_order():
    """struct {A* a; B* b} with A {C* c}: wire order a-refid, b-refid, *a, *c, *b."""
    w = NdrWriter()

    def write_a():
        w.u32(0xAAAA)
        w.defer(w.referent(), w.u32, 0xCCCC)

    w.defer(w.referent(), write_a)
    w.defer(w.referent(), w.u32, 0xBBBB)
    w.flush()
    r = NdrReader(w.getvalue())
    seen = []

    def read_a():
        seen.append(r.u32())
        r.defer(r.referent(), lambda: seen.append(r.u32()))

    r.defer(r.referent(), read_a)
    r.defer(r.referent(), lambda: seen.append(r.u32()))
    r.flush()
    assert seen == [0xAAAA, 0xCCCC, 0xBBBB]
    assert r.remaining == 0


def test_full_pointer_pointee_only_once():
    w = NdrWriter()
    w.u32(0x20000)
    w.u32(7)
    w.u32(0x20000)
    r = NdrReader(w.getvalue())
    assert r.full_referent() == (0x20000, True)
    assert r.u32() == 7
    assert r.full_referent() == (0x20000, False)
    assert r.full_referent.__name__  # the second occurrence has no pointee to read
    assert r.remaining == 0


def test_conformant_varying_and_arrays_round_trip():
    w = NdrWriter()
    w.conformant_guids(["f309ad18-d86a-11d0-a075-00c04fb68820", "d4781cd6-e5d3-44df-ad94-930efe48a887"])
    w.u16(3)
    w.count(3)
    w.u16_array([7, 8, 9])
    w.count(2)
    w.u64_array([1, 2 ** 63])
    w.conformant_bytes(b"abc")
    w.cstring("LPSTR")
    w.bstr(None)
    w.bstr("é€")
    w.interface_pointer(b"MEOW" + bytes(20))
    r = NdrReader(w.getvalue())
    assert r.conformant_guids() == ["f309ad18-d86a-11d0-a075-00c04fb68820", "d4781cd6-e5d3-44df-ad94-930efe48a887"]
    assert r.u16() == 3
    assert r.u16_array(r.count(2)) == [7, 8, 9]
    assert r.u64_array(r.count(8)) == [1, 2 ** 63]
    assert r.conformant_bytes() == b"abc"
    assert r.cstring() == "LPSTR"
    assert r.bstr() is None
    assert r.bstr() == "é€"
    off, n = r.interface_pointer()
    assert n == 24 and r.buf[off:off + 4] == b"MEOW"
    assert r.remaining == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("u8"), st.integers(0, 255)),
    st.tuples(st.just("u16"), st.integers(0, 0xFFFF)),
    st.tuples(st.just("u32"), st.integers(0, 0xFFFFFFFF)),
    st.tuples(st.just("i32"), st.integers(-2 ** 31, 2 ** 31 - 1)),
    st.tuples(st.just("u64"), st.integers(0, 2 ** 64 - 1)),
    st.tuples(st.just("guid"), st.uuids().map(str)),
    st.tuples(st.just("wstring"), st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)),
    st.tuples(st.just("bstr"), st.one_of(st.none(), st.text(st.characters(blacklist_categories=("Cs",)), max_size=40))),
    st.tuples(st.just("unique_wstring"), st.one_of(st.none(), st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20))),
), max_size=12), st.booleans())
def test_round_trip(items, little):
    w = NdrWriter(little_endian=little)
    for kind, v in items:
        getattr(w, kind)(v)
    r = NdrReader(w.getvalue(), little_endian=little)
    assert [getattr(r, kind)() for kind, _ in items] == [v for _, v in items]
    assert r.remaining == 0


@pytest.mark.parametrize("build, read", [
    (lambda w: w.u32(0xFFFFFFFF), lambda r: r.count(16)),
    (lambda w: (w.u32(0xFFFFFFFF), w.u32(0), w.u32(0xFFFFFFFF)), lambda r: r.wstring()),
    (lambda w: (w.u32(4), w.u32(0), w.u32(0x7FFFFFFF)), lambda r: r.wstring()),        # actual > max
    (lambda w: (w.u32(2), w.u32(1), w.u32(2)), lambda r: r.cstring()),                 # offset + actual > max
    (lambda w: (w.u32(0x20000), w.u32(0x10000000), w.u32(0), w.u32(0x10000000)), lambda r: r.bstr()),
    (lambda w: (w.u32(0x20000), w.u32(8), w.u32(0), w.u32(9)), lambda r: r.bstr()),    # clSize > conformance
    (lambda w: (w.u32(0x20000), w.u32(0xFFFFFF00), w.u32(0xFFFFFF00)), lambda r: r.interface_pointer()),
    (lambda w: (w.u32(0x20000), w.u32(8), w.u32(9)), lambda r: r.interface_pointer()),   # ulCntData != conformance
    (lambda w: w.u16(1), lambda r: (r.u64(), r.u64())),
    (lambda w: None, lambda r: r.guid()),
])
def test_hostile_counts_are_decode_errors(build, read):
    w = NdrWriter()
    build(w)
    r = NdrReader(w.getvalue() + b"\x00" * 8, structure="Hostile")
    # refused at once: no loop over the count, no allocation of its size
    with pytest.raises(DecodeError) as e, linear_in(len(r.buf)):
        read(r)
    assert e.value.structure == "Hostile"
    assert 0 <= e.value.offset <= len(r.buf)


def test_deferral_depth_is_capped():
    r = NdrReader(b"\x01\x00\x00\x00" * 100)

    def again():
        r.defer(r.referent(), again)

    r.defer(r.referent(), again)
    with pytest.raises(DecodeError, match="nested deeper"):
        r.flush()


def test_error_carries_structure_and_offset():
    r = NdrReader(b"\x00" * 6, structure="ORPCTHIS")
    r.u32()
    with pytest.raises(DecodeError) as e:
        r.u32()
    assert (e.value.structure, e.value.offset) == ("ORPCTHIS", 4)
