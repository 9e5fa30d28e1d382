"""Object decoding on demand, and the cache of decoded objects."""

from __future__ import annotations

from tshark_util import CAPTURES, encoding_units, stub
from wmiscope.dissectors import interpreter, wmi
from wmiscope.dissectors.pipeline import analyse
from wmiscope.dissectors.records import Call

WMIEXEC = CAPTURES / "impacket_wmiexec.pcapng"
CLSID = wmi.CLSID_WBEM_CLASS_OBJECT_MARSHALER


def _get_object(objects: bool) -> Call:
    records, _ = analyse(WMIEXEC, objects=objects)
    return next(r for r in records if type(r) is Call and r.method == "GetObject")


def test_objects_off_keeps_parameters_but_decodes_no_object():
    with_objects, without = _get_object(True), _get_object(False)
    p_on = {p["name"]: p for p in with_objects.decoded["response"]["params"]}
    p_off = {p["name"]: p for p in without.decoded["response"]["params"]}
    assert p_on["ppObject"]["object"].name == "Win32_Process"
    assert "object" not in p_off["ppObject"]
    assert p_off["ppObject"]["objref"]["interface"] == "IWbemClassObject"   # the pointer is still shown
    assert without.decoded["request"]["params"][0]["value"] == "Win32_Process"
    # impacket's 12 stray octets after GetObject's parameters are a warning either way, nothing worse
    assert [(e.kind, e.severity) for e in without.errors] == [("wmi.stub_trailing_bytes", "warning")]


def test_cache_shares_identical_objects_and_keeps_to_its_budget():
    unit = encoding_units(stub("impacket_wmiexec.pcapng", 66))[0]
    cache = interpreter._PayloadCache(budget=2 * len(unit), largest=len(unit))
    first = cache.decode(CLSID, unit, 0, len(unit))
    assert cache.decode(CLSID, bytes(unit), 0, len(unit)) is first and first.name == "Win32_Process"
    other = unit[:-1] + b"\x00"          # different bytes, decoded anew (or failing on their own)
    try:
        cache.decode(CLSID, other, 0, len(other))
    except wmi.DecodeError:
        pass
    third = encoding_units(stub("impacket_wmiexec.pcapng", 115))[0]
    cache.decode(CLSID, third, 0, len(third))
    assert cache.used <= cache.budget
    big = interpreter._PayloadCache(budget=1 << 20, largest=10)
    big.decode(CLSID, unit, 0, len(unit))
    assert big.used == 0                 # objects larger than `largest` are never kept
