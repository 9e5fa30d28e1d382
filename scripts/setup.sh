#!/usr/bin/env bash
# Sets up everything wmiscope needs on a fresh Debian machine with Python 3.11:
# tshark, and Chromium with chromedriver for the HTML report's browser test (through
# apt, only when missing), a virtual environment in .venv with wmiscope and its test
# dependencies. Safe to run again; quiet when all is there.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if [ -z "${APT_UPDATED:-}" ]; then $SUDO apt-get update -qq; APT_UPDATED=1; fi
    $SUDO apt-get install -y -qq "$@" >/dev/null
}

if ! command -v tshark >/dev/null 2>&1; then
    echo "setup: installing tshark (apt)" >&2
    # wireshark-common asks whether non-root users may capture; the default (no) is fine.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | $SUDO debconf-set-selections 2>/dev/null || true
    apt_install tshark
fi

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    # The HTML report's browser test drives Debian's Chromium headless through chromedriver.
    echo "setup: installing chromium and chromium-driver (apt)" >&2
    apt_install chromium chromium-driver
fi

# setcap: the live-capture test gives a throw-away user dumpcap's capture rights the
# way wireshark-common does (file capabilities), to capture as an unprivileged user.
if ! command -v setcap >/dev/null 2>&1 && [ ! -x /usr/sbin/setcap ] && [ ! -x /sbin/setcap ]; then
    apt_install libcap2-bin
fi

PY=${PYTHON:-python3}
if ! command -v "$PY" >/dev/null 2>&1; then
    apt_install python3 python3-venv python3-pip
fi
"$PY" - <<'PYV' || { echo "setup: wmiscope needs Python 3.11 or newer" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PYV
if [ ! -x .venv/bin/python ]; then
    if ! "$PY" -m venv .venv >/dev/null 2>&1; then
        rm -rf .venv
        apt_install python3-venv
        "$PY" -m venv .venv
    fi
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
# An editable install leaves the project's own modules uncompiled, and with
# PYTHONDONTWRITEBYTECODE set (as in some workplaces) every run would compile them from
# source again: about 0.3 s of each start. Byte code written once here is read by every
# run (a stale .pyc is ignored, so editing the sources stays safe); a wheel install
# gets the same from pip.
.venv/bin/python -m compileall -q wmiscope formats dissectors >/dev/null

# Wireshark 4.4 (Debian trixie) unpacked into .tshark44/, beside the system's 4.0: the
# Wireshark plugin's tests run under both. Not fatal: without it those tests skip and say why.
bash scripts/tshark44.sh || echo "setup: Wireshark 4.4 could not be fetched; its plugin tests will skip" >&2
