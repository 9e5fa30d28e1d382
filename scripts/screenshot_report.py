#!/usr/bin/env python3
"""Make docs/report-screenshot.png: the HTML report of bundled samples, in headless Chromium.

    .venv/bin/python scripts/screenshot_report.py [--out docs/report-screenshot.png] [CAPTURE ...]

Without CAPTURE it reports four bundled samples of pcaps/ as one capture set (process
creation sealed with Kerberos, a semisynchronous process creation, event-subscription
persistence, an async query): samples of distinct hosts, since a set is one network's
traffic (the wmi-process-create* variants share one connection and its times).
Needs Debian's chromium and chromium-driver (scripts/setup.sh installs them).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from browser_util import chromium_driver  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("captures", nargs="*")
    ap.add_argument("--out", default=str(ROOT / "docs" / "report-screenshot.png"))
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=1900)
    args = ap.parse_args()
    os.chdir(ROOT)      # relative capture names in the page
    captures = args.captures or ["pcaps/wmi-process-create-kerberos-sealed.pcap",
                                 "pcaps/wmi-semisync-execmethod.pcap", "pcaps/wmi-persistence-subscription.pcap",
                                 "pcaps/wmi-async-query-callbacks.pcap"]
    from wmiscope.cli import main as wmiscope

    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "report.html"
        if wmiscope(["report", *captures, "-o", str(page)]) != 0:
            return 1
        with chromium_driver(tmp, width=args.width, height=args.height) as driver:
            driver.get(page.as_uri())
            # open the first process-creation finding so its transcript excerpt shows
            for row in driver.find_elements("css selector", "tr.finding"):
                if "process creation" in row.text:
                    row.click()
                    break
            driver.save_screenshot(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
