#!/usr/bin/env bash
# Install a virtual X display with Mesa OpenGL (what napari's Qt tests need on a headless
# Debian/Ubuntu machine). Needs root; does nothing when xvfb-run is already there.
set -euo pipefail
if command -v xvfb-run >/dev/null 2>&1 && [ -e /usr/lib/x86_64-linux-gnu/dri ] ; then
    exit 0
fi
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -q
"${sudo_cmd[@]}" apt-get install -y -q \
    xvfb xauth libgl1-mesa-dri libegl1 libgl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 \
    libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 \
    libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1 libxrender1 libxi6
