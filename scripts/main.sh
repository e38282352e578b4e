#!/usr/bin/env bash
# The main job (README command 1), run after scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python bench/ops.py "$@"
