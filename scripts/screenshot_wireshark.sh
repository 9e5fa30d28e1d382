#!/usr/bin/env bash
# A screenshot of the Wireshark GUI (Debian's `wireshark` package) with the wmiscope plugin,
# on the project's sample of a remote Win32_Process.Create: the ExecMethod request selected,
# its details expanded, the CommandLine in-parameter visible. Runs under Xvfb; installs what
# it needs with apt (wireshark, xvfb, xdotool, imagemagick) when missing.
#
#   bash scripts/screenshot_wireshark.sh [OUT.png]      (default docs/wireshark-plugin.png)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-docs/wireshark-plugin.png}
CAPTURE=${CAPTURE:-pcaps/wmi-process-create.pcap}
FRAME=${FRAME:-14}                    # the ExecMethod request of that sample
PLUGIN=$PWD/wireshark_lua/wmiscope.lua

need=()
for tool in wireshark:wireshark Xvfb:xvfb xdotool:xdotool import:imagemagick; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" != 0 ] && SUDO=sudo
    echo "wireshark-common wireshark-common/install-setuid boolean false" | $SUDO debconf-set-selections 2>/dev/null || true
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

DISP=:${DISPLAY_NUMBER:-97}
Xvfb "$DISP" -screen 0 1600x1200x24 -nolisten tcp >/dev/null 2>&1 &
XVFB=$!
HOME_DIR=$(mktemp -d)
cleanup() { kill "$WS" 2>/dev/null || true; kill "$XVFB" 2>/dev/null || true; rm -rf "$HOME_DIR"; }
trap cleanup EXIT
sleep 2
# a fresh profile: no dialogs, no recent files; the bytes pane hidden so that the details get the room
HOME=$HOME_DIR XDG_CONFIG_HOME=$HOME_DIR/.config DISPLAY=$DISP \
    wireshark -X "lua_script:$PLUGIN" -r "$CAPTURE" -g "$FRAME" -Y wmi \
    -o gui.byte_view_show:FALSE -o "gui.geometry_main_width:1600" -o "gui.geometry_main_height:1200" \
    -o gui.geometry_main_maximized:TRUE -o gui.ask_unsaved:FALSE >/dev/null 2>&1 &
WS=$!
for _ in $(seq 1 60); do
    WID=$(DISPLAY=$DISP xdotool search --onlyvisible --name "wmi-process-create" 2>/dev/null | head -1 || true)
    [ -n "$WID" ] && break
    sleep 1
done
[ -n "${WID:-}" ] || { echo "screenshot: Wireshark's window did not appear" >&2; exit 1; }
sleep 3
X() { DISPLAY=$DISP xdotool "$@" 2>/dev/null; }
# no window manager under Xvfb: place and size the window by hand
X windowmove "$WID" 0 0
X windowsize "$WID" 1600 1200
sleep 2
X windowfocus "$WID"
# the packet details pane: click its last top-level line (the plugin's), then expand it and
# every subtree beneath (Shift+Right)
X mousemove "${DETAILS_X:-200}" "${DETAILS_Y:-700}" click 1
sleep 1
X key End
sleep 1
X key shift+Right
sleep 2
mkdir -p "$(dirname "$OUT")"
DISPLAY=$DISP import -window root "$OUT"
echo "wrote $OUT"
