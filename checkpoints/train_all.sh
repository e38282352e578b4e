#!/usr/bin/env bash
# How the published checkpoints were trained: each config in checkpoints/configs/, one after the
# other, with the project's own CLI (fit, validate once at the end, then test on the 10,000
# Fashion-MNIST test images). Logs and Lightning checkpoints land in runs/fmnist/<run>/version_N/
# (git-ignored); `python checkpoints/publish.py` then writes checkpoints/<model>.fmnist.safetensors
# and the manifest entries.
#   bash checkpoints/train_all.sh [run ...]     # default: all four, one after the other
# The published ones ran side by side on 2 CPU cores shared with other jobs, one process per run and
# one thread each (several threads per process were slower on the busy machine):
#   for run in mobilenetv2_conv_100 mobilenetv2_acu_100 resnet29_conv3 resnet29_acu; do
#     OMP_NUM_THREADS=1 bash checkpoints/train_all.sh $run & done; wait
# Each run appends "<run> <seconds>" to runs/fmnist_wall_times.txt (fit + final validation + full test).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(mobilenetv2_conv_100 mobilenetv2_acu_100 resnet29_conv3 resnet29_acu)
mkdir -p runs
for run in "${runs[@]}"; do
  start=$(date +%s)
  python train.py fit --config "checkpoints/configs/fmnist_${run}.yaml"
  echo "fmnist_${run} $(( $(date +%s) - start ))" >> runs/fmnist_wall_times.txt
  echo "fmnist_${run}: wall time $(( $(date +%s) - start )) s"
done
