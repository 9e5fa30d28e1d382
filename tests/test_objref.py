"""OBJREF, STDOBJREF and DUALSTRINGARRAY declared once (formats/objref.py), parsing and building.

The construct declaration and the fast reader compiled from its fixed parts must read
every real OBJREF the same way, and the declaration must build back the exact bytes:
otherwise the sample generator and the decoder would share a misunderstanding.
"""

from __future__ import annotations

import pytest

import tshark_util
from wmiscope.formats import objref as O
from wmiscope.formats.guid import guid_text

# capture -> the OBJREF flavors its clear stubs carry in MInterfacePointers
CAPTURES = {"LM_WMI_ProcessCallCreate.pcapng": {"standard"}, "impacket_wmiexec.pcapng": {"standard", "custom"},
            "wmimplant.pcap": {"standard", "custom"},
            "covenant_sharpwmi_dcerpc_wmi_execquery_execmethod.cap": {"standard"}}


def _real_objrefs(name):
    for frame, stubs in tshark_util.stubs(name).items():
        for stub in stubs:
            for pos, o in O.scan_objrefs(stub):
                if o.framed:
                    yield frame, stub[pos:pos + o.length], o


@pytest.mark.skipif(not tshark_util.have_tshark(), reason="tshark not installed")
@pytest.mark.parametrize("name", CAPTURES)
def test_declaration_and_fast_reader_agree_on_real_objrefs_and_build_them_back(name):
    count = 0
    kinds = set()
    for frame, raw, o in _real_objrefs(name):
        c = O.OBJREF.parse(raw)
        assert (c.flags, guid_text(c.iid)) == (o.flags, o.iid), frame
        body = c.u_objref
        if o.std is not None:
            s = body.std
            assert (s.flags, s.cPublicRefs, s.oxid, s.oid, guid_text(s.ipid)) == \
                (o.std.flags, o.std.public_refs, o.std.oxid, o.std.oid, o.std.ipid), frame
            dsa, _ = O.parse_dualstringarray(O.DUALSTRINGARRAY.build(body.saResAddr), 0)
            assert dsa == o.resolver, frame
        else:
            assert (guid_text(body.clsid), body.reserved, len(body.pObjectData)) == \
                (o.clsid, o.size, o.payload_length), frame
        assert O.OBJREF.build(c) == raw, frame
        kinds.add(o.kind)
        count += 1
    assert kinds == CAPTURES[name] and count >= 1


def test_every_flavor_builds_and_parses_back():
    dsa = O.build_dualstringarray([(7, "host[49670]"), (7, "10.1.1.5")], [(10, 0xFFFF, ""), (9, 0xFFFF, "svc")])
    parsed, end = O.parse_dualstringarray(dsa, 0)
    assert end == len(dsa) and parsed.bindings_text() == ["ncacn_ip_tcp:host[49670]", "ncacn_ip_tcp:10.1.1.5"]
    assert [b.princ_name for b in parsed.security_bindings] == ["", "svc"]
    assert parsed.string_bindings[0].port == 49670
    iid = "9556dc99-828c-11cf-a37e-00aa003240c7"
    for flags in (O.OBJREF_STANDARD, O.OBJREF_HANDLER, O.OBJREF_CUSTOM, O.OBJREF_EXTENDED):
        raw = O.build_objref(iid, flags, ipid="00009401-1a5c-0000-7a6e-2b9f51c3d402", oxid=0x1122, oid=0x3344,
                             resolver=dsa, clsid="4590f812-1d3a-11d0-891f-00aa004b2e24", payload=b"payload",
                             elements=[("0000031c-0000-0000-c000-000000000046", b"123456789")])
        o = O.parse_objref(raw, 0)
        assert (o.kind, o.iid, o.length) == (O.OBJREF_KINDS[flags], iid, len(raw))
        assert O.OBJREF.build(O.OBJREF.parse(raw)) == raw
        if flags == O.OBJREF_CUSTOM:
            assert raw[o.payload_offset:] == b"payload" and o.size == 7
        else:
            assert (o.std.oxid, o.std.oid, o.resolver) == (0x1122, 0x3344, parsed)
        if flags == O.OBJREF_EXTENDED:
            assert o.elements == [{"data_id": "0000031c-0000-0000-c000-000000000046", "size": 9,
                                   "offset": len(raw) - 16}]


@pytest.mark.parametrize("cut,structure", [(20, "OBJREF"), (60, "STDOBJREF"), (70, "OBJREF.saResAddr")])
def test_truncated_objrefs_fail_located(cut, structure):
    raw = O.build_objref("9556dc99-828c-11cf-a37e-00aa003240c7", resolver=O.build_dualstringarray([(7, "h")]))
    with pytest.raises(O.DecodeError) as e:
        O.parse_objref(raw[:cut], 0)
    assert e.value.structure == structure
