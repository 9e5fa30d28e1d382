"""The wire engine against the real tshark, PDU by PDU, on every capture we have.

For each DCE/RPC PDU tshark dissects, our pipeline must report the same frame,
packet type, flags, frag length, call_id, context id, opnum, object UUID and
auth level. A disagreement is a bug on one side; the ones that are tshark's are
listed in TSHARK_QUIRKS with the reason.
"""

from __future__ import annotations

import functools
import json
import subprocess
from collections import Counter

import pytest

from tshark_util import CAPTURES, PCAPS
from wmiscope.dissectors.pipeline import Analysis
from wmiscope.dissectors.records import Call, Pdu

REAL = sorted(p.name for p in CAPTURES.glob("*") if p.suffix in (".pcap", ".pcapng", ".cap"))
SAMPLES = sorted(p.name for p in PCAPS.glob("*.pcap*"))


def _path(name):
    return CAPTURES / name if (CAPTURES / name).exists() else PCAPS / name


def _find(node, key):
    """First value of `key` anywhere below node (tshark nests auth fields in subtrees)."""
    if isinstance(node, dict):
        if key in node:
            return node[key]
        node = list(node.values())
    if isinstance(node, list):
        for v in node:
            r = _find(v, key)
            if r is not None:
                return r
    return None


@functools.lru_cache(maxsize=None)
def tshark_pdus(name: str) -> tuple:
    out = subprocess.run(
        ["tshark", "-r", str(_path(name)), "-Y", "dcerpc", "-T", "json", "-J", "frame dcerpc",
         "--no-duplicate-keys"],
        # tshark exits 2 on a capture whose last record is cut short, after
        # printing everything before it: the output is what counts.
        capture_output=True, text=True).stdout
    rows = []
    for pkt in json.loads(out or "[]"):
        layers = pkt["_source"]["layers"]
        frame = int(layers["frame"]["frame.number"]) if "frame" in layers else None
        dcs = layers.get("dcerpc")
        for dc in dcs if isinstance(dcs, list) else [dcs]:
            if not isinstance(dc, dict) or "dcerpc.pkt_type" not in dc:
                continue
            ptype = int(dc["dcerpc.pkt_type"])
            level = _find(dc.get("dcerpc.auth_info"), "dcerpc.auth_level")
            rows.append((
                frame, ptype, int(dc["dcerpc.cn_flags"], 16), int(dc["dcerpc.cn_frag_len"]),
                int(dc["dcerpc.cn_call_id"]),
                int(dc["dcerpc.cn_ctx_id"]) if ptype in (0, 2, 3) and "dcerpc.cn_ctx_id" in dc else None,
                int(dc["dcerpc.opnum"]) if ptype == 0 and "dcerpc.opnum" in dc else None,
                dc.get("dcerpc.obj_id") if ptype == 0 else None,
                int(level) if level is not None else None,
            ))
    return tuple(rows)


@functools.lru_cache(maxsize=None)
def ours(name: str):
    analysis = Analysis(want_pdus=True)
    records = list(analysis.run(_path(name)))
    return records, analysis.stats


def our_pdus(name: str) -> list:
    rows = []
    for r in ours(name)[0]:
        if type(r) is Pdu:
            rows.append((r.frame, r.ptype, r.flags, r.frag_len, r.call_id,
                         r.ctx_id if r.ptype in (0, 2, 3) else None,
                         r.opnum if r.ptype == 0 else None,
                         r.object_uuid if r.ptype == 0 else None,
                         r.auth.auth_level if r.auth else None))
    return rows


def our_calls(name: str) -> list[Call]:
    return [r for r in ours(name)[0] if type(r) is Call]


# tshark's own limits, found while cross-checking (capture -> reason).
TSHARK_QUIRKS: dict[str, str] = {}


@pytest.mark.parametrize("name", REAL + SAMPLES)
def test_every_pdu_matches_tshark(name):
    theirs = Counter(tshark_pdus(name))
    mine = Counter(our_pdus(name))
    missing = theirs - mine
    extra = mine - theirs
    assert theirs, f"tshark found no DCE/RPC in {name}"
    if name in TSHARK_QUIRKS and (missing or extra):
        pytest.xfail(TSHARK_QUIRKS[name])
    assert not missing and not extra, (
        f"{name}: {sum(missing.values())} PDUs only tshark shows, e.g. {sorted(missing)[:5]}; "
        f"{sum(extra.values())} only we show, e.g. {sorted(extra)[:5]}")


@pytest.mark.parametrize("name", REAL + SAMPLES)
def test_counts_add_up(name):
    _, s = ours(name)
    d = s.as_dict()
    assert sum(d["pdus_by_type"].values()) == d["pdus"]
    assert sum(d["pdus_by_outcome"].values()) == d["pdus"]
    assert sum(d["calls_by_outcome"].values()) == d["calls"]
    assert d["tcp_flows"] == d["dcerpc_flows"] + d["other_flows"]
