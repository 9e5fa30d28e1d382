#!/usr/bin/env python3
"""What the Wireshark plugin costs tshark, on the same capture in the same run.

    python scripts/bench_wireshark_plugin.py [--size MB] [--capture FILE] [--keep PATH]
        [--rounds N] [--modes r,fields,V] [--versions 4.0,4.4] [--before PLUGIN]

Builds the `mix` corpus of scripts/bench_corpus.py (every real WMI capture, replicated
with addresses, times and names varied per copy, so no two copies share an object) of
--size MB (default 200), or reads --capture, then times tshark on it without and with
wireshark_lua/wmiscope.lua, in three ways an analyst runs it:

    r       tshark -r FILE                                   (one summary line per frame)
    fields  tshark -r FILE -Y dcerpc -T fields -e ...        (a filter and fields: a tree)
    V       tshark -r FILE -V                                (every frame's whole tree)

under the system's tshark (4.0 on Debian bookworm: -X lua_script:) and under the private
Wireshark 4.4 (.tshark44/, from scripts/tshark44.sh), where the plugin is copied into the
global Lua plugin folder for the run (as root 4.4 loads Lua from nowhere else).
--before PLUGIN times another copy of the plugin in the same rounds (e.g. the one of the
main branch: `git show main:wireshark_lua/wmiscope.lua > /tmp/before.lua`).

The machine is shared: every round runs each variant of a (version, mode) one after the
other, the rounds alternate, and the figures are medians over --rounds rounds (default 3)
of CPU time (user + system, from wait4: other processes stretch the wall clock more than
the CPU time) and of the per-round ratio with / without (the goal: at most 1.5). The load
average is printed beside them. A script, not a test: its figures depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_corpus import build  # noqa: E402

PLUGIN = ROOT / "wireshark_lua" / "wmiscope.lua"
TSHARK44 = ROOT / ".tshark44" / "tshark"

MODES = {
    "r": [],
    "fields": ["-Y", "dcerpc", "-T", "fields", "-e", "frame.number", "-e", "tcp.stream", "-e", "dcerpc.pkt_type",
               "-e", "dcerpc.cn_call_id", "-e", "dcerpc.opnum"],
    "V": ["-V"],
}


def run(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of one child, measured by wait4."""
    start = time.perf_counter()
    with open(os.devnull, "wb") as null:
        proc = subprocess.Popen(cmd, stdout=null, stderr=subprocess.DEVNULL)
        _, _, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime


def global_lua_folder(tshark: str) -> Path | None:
    out = subprocess.run([tshark, "-G", "folders"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("Global Lua Plugins"):
            return Path(line.split(":", 1)[1].strip())
    return None


class Version:
    """How one tshark runs with a given plugin file, or with none."""

    def __init__(self, name: str, tshark: str, folder: Path | None):
        self.name, self.tshark, self.folder = name, tshark, folder

    def command(self, plugin: Path | None, capture: Path, mode: str) -> list[str]:
        if self.folder is not None:
            # 4.4 as root: the plugin goes into the global folder, or out of it
            installed = self.folder / "wmiscope.lua"
            if installed.exists():
                installed.unlink()
            if plugin is not None:
                shutil.copyfile(plugin, installed)
            return [self.tshark, "-r", str(capture), *MODES[mode]]
        lua = ["-X", f"lua_script:{plugin}"] if plugin is not None else []
        return [self.tshark, *lua, "-r", str(capture), *MODES[mode]]

    def cleanup(self) -> None:
        if self.folder is not None and (self.folder / "wmiscope.lua").exists():
            (self.folder / "wmiscope.lua").unlink()


def versions(wanted: list[str]) -> list[Version]:
    out = []
    system = shutil.which("tshark")
    if "4.0" in wanted and system:
        out.append(Version("4.0", system, None))
    if "4.4" in wanted and TSHARK44.exists():
        folder = global_lua_folder(str(TSHARK44))
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            out.append(Version("4.4", str(TSHARK44), folder))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=float, default=200.0, help="size of the mix corpus in MB (default 200)")
    ap.add_argument("--capture", help="time this capture instead of building the corpus")
    ap.add_argument("--keep", help="write the corpus here and keep it")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians count (default 3)")
    ap.add_argument("--modes", default="r,fields,V", help="which of r, fields, V (default all)")
    ap.add_argument("--versions", default="4.0,4.4", help="which of 4.0, 4.4 (default both)")
    ap.add_argument("--before", help="another copy of the plugin to time in the same rounds")
    args = ap.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        ap.error(f"unknown mode(s) {unknown}: choose among {sorted(MODES)}")

    tmpdir = None
    if args.capture:
        capture = Path(args.capture)
    else:
        if args.keep:
            capture = Path(args.keep)
        else:
            tmpdir = tempfile.TemporaryDirectory(prefix="wmiscope-plugin-bench-")
            capture = Path(tmpdir.name) / "mix.pcap"
        info = build("mix", capture, int(args.size * 1e6))
        print(f"corpus: {capture} {info['bytes'] / 1e6:.0f} MB, {info['frames']} frames, {info['copies']} copies")
    size_mb = capture.stat().st_size / 1e6

    variants = [("without", None), ("with", PLUGIN)]
    if args.before:
        variants.insert(1, ("before", Path(args.before)))
    tsharks = versions(args.versions.split(","))
    times = {}          # (version, mode, variant) -> [(wall, cpu)]
    print(f"load average at the start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    try:
        for rnd in range(args.rounds):
            for v in tsharks:
                for mode in modes:
                    # the variants' order turns each round, so none always runs first
                    order = variants[rnd % len(variants):] + variants[:rnd % len(variants)]
                    for label, plugin in order:
                        times.setdefault((v.name, mode, label), []).append(run(v.command(plugin, capture, mode)))
                    v.cleanup()
            print(f"round {rnd + 1} done, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    finally:
        for v in tsharks:
            v.cleanup()
        if tmpdir:
            tmpdir.cleanup()

    print(f"\n{size_mb:.0f} MB, medians of {args.rounds} rounds (CPU seconds; ratio = with / without per round)")
    for v in tsharks:
        for mode in modes:
            base = times[(v.name, mode, "without")]
            cells = [f"tshark {v.name} {mode:6s} without {statistics.median(c for _, c in base):6.1f} s"]
            for label, _ in variants[1:]:
                runs = times[(v.name, mode, label)]
                ratio = statistics.median(c / b for (_, c), (_, b) in zip(runs, base))
                wall = statistics.median(w / b for (w, _), (b, _) in zip(runs, base))
                cells.append(f"{label} {statistics.median(c for _, c in runs):6.1f} s "
                             f"ratio {ratio:.2f} CPU, {wall:.2f} wall")
            print("   ".join(cells) + "   (goal <= 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
