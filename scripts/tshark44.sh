#!/usr/bin/env bash
# Wireshark 4.4 beside the system's 4.0, without installing it: Debian trixie's tshark
# packages (and their library closure, trixie's libc included) are downloaded with apt into
# a private folder and unpacked there with dpkg -x. Nothing outside the folder changes.
#
#   bash scripts/tshark44.sh            fetch into .tshark44/ (quiet and quick when already there)
#   .tshark44/tshark -v                 run it (a wrapper that starts tshark through trixie's loader)
#
# Why the loader: libwireshark18 needs glibc >= 2.38 and bookworm has 2.36, so tshark is
# started through the private ld-linux. As root Wireshark ignores WIRESHARK_*_DIR and finds
# its data and plugin folders from its program path, which is then the loader's: the loader
# is copied into the private usr/bin/ so that those folders resolve inside the tree (its
# global Lua plugin folder is where a plugin goes to be loaded as root).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${TSHARK44_DIR:-$PWD/.tshark44}
ROOTFS=$DEST/root
if [ -x "$DEST/tshark" ] && [ -f "$DEST/.complete" ]; then
    exit 0
fi
echo "setup: fetching Wireshark 4.4 (Debian trixie packages) into $DEST" >&2
rm -rf "$DEST"
mkdir -p "$DEST/apt/lists/partial" "$DEST/apt/cache/archives/partial" "$DEST/debs" "$ROOTFS"
: > "$DEST/apt/status"

# the same archive and keyring as the system's own sources, suite trixie
URI=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
KEYRING=$(awk '/^Signed-By:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
URI=${URI:-http://deb.debian.org/debian}
KEYRING=${KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}
echo "deb [signed-by=$KEYRING] $URI trixie main" > "$DEST/apt/sources.list"
APT=(-o "Dir::Etc::sourcelist=$DEST/apt/sources.list" -o "Dir::Etc::sourceparts=-"
     -o "Dir::State::Lists=$DEST/apt/lists" -o "Dir::Cache=$DEST/apt/cache"
     -o "Dir::State::status=$DEST/apt/status" -o "APT::Architecture=amd64" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")

apt-get "${APT[@]}" update -qq >/dev/null
PKGS=$(apt-cache "${APT[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
           --no-replaces --no-enhances --no-pre-depends tshark \
       | grep -v '^ ' | grep -v '^<' | sort -u \
       | grep -vE '^(debconf|debconf-2.0|cdebconf|install-info|dpkg|perl-base|libc-bin|tzdata|adduser|passwd)$')
(cd "$DEST/debs" && apt-get "${APT[@]}" download -qq $PKGS >/dev/null)
for deb in "$DEST"/debs/*.deb; do
    dpkg -x "$deb" "$ROOTFS"
done

LOADER=$ROOTFS/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
[ -e "$LOADER" ] || LOADER=$ROOTFS/lib64/ld-linux-x86-64.so.2
cp -L "$LOADER" "$ROOTFS/usr/bin/ld-linux-x86-64.so.2"
# extcap helpers would start through the system's loader and fail noisily
[ -d "$ROOTFS/usr/lib/x86_64-linux-gnu/wireshark/extcap" ] && \
    mv "$ROOTFS/usr/lib/x86_64-linux-gnu/wireshark/extcap" "$ROOTFS/usr/lib/x86_64-linux-gnu/wireshark/extcap.off"
LIBS="$ROOTFS/usr/lib/x86_64-linux-gnu:$ROOTFS/lib/x86_64-linux-gnu"
GCONV=$(dirname "$(find "$ROOTFS" -name gconv-modules -print -quit 2>/dev/null || echo "$ROOTFS/usr/lib/x86_64-linux-gnu/gconv/x")")
cat > "$DEST/tshark" <<EOF
#!/bin/sh
# tshark 4.4 from Debian trixie, unpacked privately by scripts/tshark44.sh
GCONV_PATH="$GCONV" exec "$ROOTFS/usr/bin/ld-linux-x86-64.so.2" --library-path "$LIBS" "$ROOTFS/usr/bin/tshark" "\$@"
EOF
chmod +x "$DEST/tshark"
rm -rf "$DEST/debs" "$DEST/apt/cache"
"$DEST/tshark" -v >/dev/null 2>&1 || { echo "setup: the private tshark 4.4 does not start" >&2; exit 1; }
touch "$DEST/.complete"
