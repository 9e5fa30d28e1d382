"""Headless Debian Chromium through a real WebDriver (chromedriver), for the HTML report.

The flags keep Chromium off the network (this sandbox has none, and a report must need
none) and out of any profile: a fresh --user-data-dir each time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

CHROMIUM = os.environ.get("WMISCOPE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("WMISCOPE_CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage")


def have_chromium() -> bool:
    return os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)


@contextlib.contextmanager
def chromium_driver(workdir: str | None = None, *, width: int = 1400, height: int = 1000):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="wmiscope-chromium-", dir=workdir)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={profile}")
    opts.add_argument(f"--window-size={width},{height}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
