#!/usr/bin/env bash
# The main job, from a fresh machine: install napari-unet, then segment the bundled sample
# images with the bundled model, write labels and overlays to ./demo_output and print metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh "all"
exec .venv/bin/napari-unet demo --out demo_output "$@"
