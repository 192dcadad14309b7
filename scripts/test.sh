#!/usr/bin/env bash
# The whole test suite, from a fresh machine: display packages, venv, ruff, then pytest under Xvfb.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_display.sh
bash scripts/setup_env.sh "testing,export"
# Lint and format first: a style slip fails CI like a failing test (settings in pyproject.toml).
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python -m pytest "$@"
