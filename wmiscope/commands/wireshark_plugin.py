"""wmiscope wireshark-plugin: write the Lua plugin generated from the interface table."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

PLUGIN_NAME = "wmiscope.lua"


def add_arguments(p) -> None:
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write the plugin here (default: standard output, unless --install)")
    p.add_argument("--install", action="store_true",
                   help="copy the plugin into the personal Lua plugins folder that `tshark -G folders` reports")


def personal_plugin_folder() -> Path | None:
    """The "Personal Lua Plugins" folder of the tshark on PATH, or None without tshark."""
    tshark = shutil.which("tshark")
    if not tshark:
        return None
    out = subprocess.run([tshark, "-G", "folders"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        m = re.match(r"Personal Lua Plugins:\s*(.+)", line)
        if m:
            return Path(m.group(1).strip())
    return None


def run(args) -> int:
    from wmiscope.wireshark_plugin import render

    text = render()
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    elif not args.install:
        sys.stdout.write(text)
    if args.install:
        folder = personal_plugin_folder()
        if folder is None:
            print("wmiscope: tshark is not on PATH: copy the plugin by hand into the folder "
                  "that Wireshark's About > Folders calls Personal Lua Plugins", file=sys.stderr)
            return 1
        folder.mkdir(parents=True, exist_ok=True)
        (folder / PLUGIN_NAME).write_text(text, encoding="utf-8")
        print(f"installed {folder / PLUGIN_NAME}", file=sys.stderr)
    return 0
