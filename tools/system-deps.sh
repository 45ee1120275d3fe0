#!/usr/bin/env bash
# Debian packages the tests drive for real: tshark (decodes the node's packets),
# GStreamer 1.22 with Python GI (the third-party RTX/ULPFEC peer) and Chromium (the
# WebTransport viewer page, run headless). Installed when missing
# and we are root; otherwise say what to install (the tests then fail naming the tool).
set -euo pipefail
PKGS="tshark gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 chromium"
if command -v tshark >/dev/null 2>&1 && command -v chromium >/dev/null 2>&1 && gst-inspect-1.0 vp8enc rtpulpfecdec >/dev/null 2>&1 \
    && /usr/bin/python3 -c "import gi; gi.require_version('Gst', '1.0')" >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: missing test tools; install (Debian): apt-get install $PKGS" >&2
  exit 0
fi
echo "system-deps: installing $PKGS" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends $PKGS >/dev/null
