"""wmiscope stats CAPTURE: what the capture holds, counted so that the parts add up."""

from __future__ import annotations

import json
import sys

from . import workers
from .output import add_source_arguments, open_source


def add_arguments(p) -> None:
    add_source_arguments(p)
    p.add_argument("--json", action="store_true", help="print the counts as one JSON object")
    workers.add_arguments(p)


def record_renderer(args):
    """Counts only: no record is written (a split run's workers send their Stats alone)."""
    return _nothing


def _nothing(rec) -> str:
    return ""


def run(args) -> int:
    # counts need no MS-WMIO objects
    stats = workers.write_records(args, "stats", None, open_source(args), streaming=False, objects=False)
    d = stats.as_dict()
    if args.json:
        json.dump(d, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    w = sys.stdout.write
    w(f"frames            {d['frames']:>8}   (not TCP: {d['non_tcp_frames']})\n")
    ip = d.get("ip_fragments")
    if ip:
        w(f"IP fragments      {ip['fragments']:>8}   (datagrams reassembled: {ip['reassembled']}, "
          f"duplicates: {ip['duplicates']}, dropped: {ip['dropped_fragments']})\n")
    w(f"TCP flows         {d['tcp_flows']:>8}   (DCE/RPC: {d['dcerpc_flows']}, other: {d['other_flows']})\n")
    w(f"TCP gaps          {d['gaps']:>8}   ({d['gap_bytes']} bytes missing)\n")
    w(f"DCE/RPC PDUs      {d['pdus']:>8}\n")
    for name, n in d["pdus_by_type"].items():
        w(f"  {name:<16}{n:>8}\n")
    w("  by outcome:     " + ", ".join(f"{k} {v}" for k, v in d["pdus_by_outcome"].items()) + "\n")
    w(f"calls             {d['calls']:>8}\n")
    w("  by outcome:     " + ", ".join(f"{k} {v}" for k, v in d["calls_by_outcome"].items()) + "\n")
    w(f"errors            {d['errors']:>8}   " + ", ".join(f"{k} {v}" for k, v in d["errors_by_stage"].items()) + "\n")
    n = sum(d["anomalies_by_kind"].values())
    w(f"anomalies         {n:>8}   " + ", ".join(f"{k} {v}" for k, v in d["anomalies_by_severity"].items())
      + (f" ({d['suppressed']} of a flood not shown)" if d["suppressed"] else "") + "\n")
    for kind, count in d["anomalies_by_kind"].items():
        w(f"  {kind:<34}{count:>8}\n")
    if d.get("forgotten"):
        w("forgotten (bounds) " + ", ".join(f"{k} {v}" for k, v in d["forgotten"].items()) + "\n")
    return 0
