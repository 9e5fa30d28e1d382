#!/usr/bin/env python3
"""Decoding speed of wmiscope's MS-WMIO / ObjectArray decoders against impacket's,
on the same bytes, in one run.

    python scripts/bench_formats.py [--seconds S] [--profile]

Inputs (all built with wmiscope.formats.wmio's builders, plus one real one):
  class     a Win32_Process-sized class: 45 properties with qualifiers,
            6 methods with in/out parameters, as one EncodingUnit
  array     an ObjectArray (MS-WMI 2.2.14) of 1,000 instances of that class:
            the first a WBEMOBJECT_INSTANCE, the rest WBEMOBJECT_INSTANCE_NOCLASS
  real      the Win32_Process class of impacket_wmiexec.pcapng frame 66
            (cut out with tshark; skipped when tshark is not installed)

impacket (impacket.dcerpc.v5.dcom.wmi) has no ObjectArray decoder: it decodes
one EncodingUnit at a time (ENCODING_UNIT(bytes), then
ObjectBlock.parseObject(), which resolves the class, its qualifiers,
properties and methods, and an instance's values).  For the array it is given
each instance as a full EncodingUnit (class included), the way IEnumWbemClassObject
would send it; wmiscope is timed both on the ObjectArray itself and on those
same 1,000 EncodingUnits, so the like-for-like ratio is printed too.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------

def bench_class():
    """A class shaped like Win32_Process: 45 properties, 6 methods."""
    from wmiscope.formats import wmio

    types = ["string", "uint32", "uint64", "datetime", "string", "uint16", "boolean", "sint32", "string[]"]
    props = []
    for i in range(45):
        t = types[i % len(types)]
        quals = {"read": True, "MappingStrings": [f"Win32API|Process Status|SYSTEM_PROCESS_INFORMATION|F{i}"]}
        if i == 0:
            quals["key"] = True
            quals["MaxLen"] = 256
        if i % 5 == 0:
            quals["Description"] = f"Property number {i} of the benchmark class, described at some length."
        if t == "uint16":
            quals["ValueMap"] = ["0", "1", "2", "3"]
            quals["Values"] = ["Unknown", "Running", "Stopped", "Paused"]
        props.append((f"Property{i:02d}", t, None, quals))
    props[0] = ("Handle", "string", None, props[0][3])

    def params(prefix, n, with_return):
        ps = [(f"{prefix}{j}", types[j % 4], None, {"In" if prefix == "In" else "Out": True, "ID": j})
              for j in range(n)]
        if with_return:
            ps.append(("ReturnValue", "uint32", None, {"out": True}))
        return ps

    methods = [
        ("Create", params("In", 3, False), params("Out", 1, True),
         {"Constructor": True, "Static": True, "Implemented": True, "ValueMap": ["0", "2", "3", "8", "9", "21"]}),
        ("Terminate", params("In", 1, False), params("Out", 0, True), {"Destructor": True, "Implemented": True}),
        ("GetOwner", None, params("Out", 2, True), {"Implemented": True}),
        ("GetOwnerSid", None, params("Out", 1, True), {"Implemented": True}),
        ("SetPriority", params("In", 1, False), params("Out", 0, True), {"Implemented": True}),
        ("AttachDebugger", None, params("Out", 0, True), {"Implemented": True}),
    ]
    cls = wmio.new_class("Bench_Process", superclass="CIM_Process", properties=props, methods=methods,
                         qualifiers={"dynamic": True, "provider": "CIMWin32", "Locale": 1033,
                                     "UUID": "{8502C4DC-5FBB-11D2-AAC1-006008C78BC7}"})
    return wmio.parse_encoding_unit(wmio.build_encoding_unit(cls))


def bench_instances(cls, n=1000):
    from wmiscope.formats import wmio

    sample = {"string": lambda i: f"value {i} " * (1 + i % 3), "uint32": lambda i: i * 7,
              "uint64": lambda i: 2**40 + i, "datetime": lambda i: wmio.DmtfDateTime("20230505103000.000000+000"),
              "uint16": lambda i: i % 4, "boolean": lambda i: bool(i & 1), "sint32": lambda i: -i,
              "string[]": lambda i: ["a", "b", str(i)]}
    from wmiscope.formats.cim import type_name

    out = []
    for i in range(n):
        values = {}
        for p in cls.properties:
            t = type_name(p.cimtype & ~0x4000)
            if (i + p.order) % 6:     # leave about one in six to the class default
                values[p.name] = sample[t](i + p.order)
        values["Handle"] = str(i)
        out.append(wmio.new_instance(cls, values))
    return out


def real_class_bytes():
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import tshark_util
    except ImportError:
        return None
    if not tshark_util.have_tshark() or not tshark_util.capture("impacket_wmiexec.pcapng").exists():
        return None
    return tshark_util.encoding_units(tshark_util.stub("impacket_wmiexec.pcapng", 66))[0]


# ---------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------

def rate(fn, seconds: float) -> float:
    """Calls per second: best of a few batches, after one warm-up call."""
    fn()
    best = float("inf")
    spent, calls = 0.0, 1
    while spent < seconds:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        dt = time.perf_counter() - t0
        best = min(best, dt / calls)
        spent += dt
        if dt < 0.05:
            calls *= 2
    return 1.0 / best


def impacket_decode(unit: bytes):
    from impacket.dcerpc.v5.dcom.wmi import ENCODING_UNIT

    block = ENCODING_UNIT(unit)["ObjectBlock"]
    block.parseObject()
    return block


def report(title, ours, theirs, unit="ops/s", note=""):
    ratio = ours / theirs if theirs else float("inf")
    print(f"{title}")
    print(f"  wmiscope  {ours:12,.1f} {unit}")
    print(f"  impacket  {theirs:12,.1f} {unit}")
    print(f"  ratio     {ratio:12.1f}x{note}")
    return ratio


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.5, help="time budget per measurement")
    ap.add_argument("--profile", action="store_true", help="cProfile wmiscope's ObjectArray decode")
    args = ap.parse_args(argv)

    from wmiscope.formats import wmio
    from wmiscope.formats.object_array import build_object_array, parse_object_array

    cls = bench_class()
    class_unit = wmio.build_encoding_unit(cls)
    instances = bench_instances(cls)
    array = build_object_array(instances)
    units = [wmio.build_encoding_unit(i) for i in instances]
    n = len(instances)

    # both decoders must agree on what they decode before they are timed
    check = impacket_decode(class_unit).ctCurrent
    assert len(check["properties"]) == len(cls.properties) and len(check["methods"]) == 6
    check = impacket_decode(units[7]).ctCurrent["values"]
    assert check["Property01"]["value"] == instances[7].get("Property01")
    decoded = parse_object_array(array).objects
    assert decoded[999].get("Handle") == "999" and len(decoded) == n

    print(f"python {sys.version.split()[0]}; class EncodingUnit {len(class_unit):,} bytes "
          f"({len(cls.properties)} properties, {len(cls.methods)} methods); "
          f"ObjectArray of {n:,} instances {len(array):,} bytes; "
          f"{n:,} full EncodingUnits {sum(map(len, units)):,} bytes\n")

    ratios = {}
    ratios["class"] = report(
        "class EncodingUnit (Win32_Process-sized, synthetic)",
        rate(lambda: wmio.parse_encoding_unit(class_unit), args.seconds),
        rate(lambda: impacket_decode(class_unit), args.seconds), "classes/s")

    ours_array = rate(lambda: parse_object_array(array), args.seconds) * n
    ours_units = rate(lambda: [wmio.parse_encoding_unit(u) for u in units], args.seconds) * n
    theirs_units = rate(lambda: [impacket_decode(u) for u in units[:50]], args.seconds) * 50
    ratios["array"] = report(
        f"{n:,} instances: wmiscope decodes the ObjectArray, impacket each object's EncodingUnit",
        ours_array, theirs_units, "instances/s",
        "   (impacket has no ObjectArray decoder)")
    ratios["units"] = report(
        f"{n:,} instances, like for like: both decode the same full EncodingUnits",
        ours_units, theirs_units, "instances/s", "   (impacket timed on the first 50)")

    real = real_class_bytes()
    if real is not None:
        ratios["real"] = report(
            "real Win32_Process class (impacket_wmiexec.pcapng frame 66, "
            f"{len(real):,} bytes)",
            rate(lambda: wmio.parse_encoding_unit(real), args.seconds),
            rate(lambda: impacket_decode(real), args.seconds), "classes/s")
    else:
        print("real Win32_Process class: skipped (tshark or the capture is missing)")

    worst = min(ratios.values())
    print(f"\nslowest ratio {worst:.1f}x (goal: >= 5x impacket)")

    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(3):
            parse_object_array(array)
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(15)
        print("\nwhere parse_object_array spends its time (3 runs, by own time):")
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
