#!/usr/bin/env bash
# Create ./.venv with napari-unet and what it needs. Usage: scripts/setup_env.sh [EXTRAS]
#   EXTRAS: pip extras to install, e.g. "all" (default) or "testing,export".
# Picks the CPU build of PyTorch on machines without an NVIDIA GPU. Set TORCH_INDEX_URL to
# PyTorch's CPU wheel index where the default index would otherwise serve a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-all}"
python_bin="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
    "$python_bin" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${pip[@]}" install -U pip setuptools wheel

torch_spec="torch==2.13.0"
if .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "torch $(.venv/bin/python -c 'import torch; print(torch.__version__)') already installed"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${pip[@]}" install "$torch_spec"
elif [ -n "${TORCH_INDEX_URL:-}" ]; then
    "${pip[@]}" install "$torch_spec" --index-url "$TORCH_INDEX_URL"
else
    "${pip[@]}" install "$torch_spec"
fi
# torch is pinned on the same command line so no dependency can swap it for another build.
"${pip[@]}" install -e ".[${extras}]" "torch==$(.venv/bin/python -c 'import torch; print(torch.__version__.split("+")[0])')"
