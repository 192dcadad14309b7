#!/usr/bin/env bash
# The whole test suite, from a fresh machine: display packages, venv, then pytest under Xvfb.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_display.sh
bash scripts/setup_env.sh "testing,export"
exec xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python -m pytest "$@"
