#!/usr/bin/env bash
# The main job (README command 1), run after scripts/setup.sh: train a depthwise-ACU
# MobileNetV2 on Fashion-MNIST, then test it; extra arguments go to the CLI.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python train.py fit --config configs/quickstart.yaml "$@"
