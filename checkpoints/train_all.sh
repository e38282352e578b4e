#!/usr/bin/env bash
# How the published checkpoints were trained: each config in checkpoints/configs/, one after the
# other, with the project's own CLI (fit, validate every epoch, then test on the 10,000
# Fashion-MNIST test images). Logs and Lightning checkpoints land in runs/fmnist/<run>/version_N/
# (git-ignored); `python checkpoints/publish.py` then writes checkpoints/<model>.fmnist.safetensors
# and the manifest entries, measured as a timm user would.
#   bash checkpoints/train_all.sh [run ...]     # default: all four, one after the other
# One run at a time on the 2-core machine, 2 threads, with bench/ops.py's allocator settings (without
# them a third of the CPU time went to the kernel, mapping and unmapping large buffers). The MobileNetV2
# pair was trained side by side instead, one thread each (both arms finish together; the manifest's
# "hardware" says which):
#   OMP_NUM_THREADS=1 bash checkpoints/train_all.sh mobilenetv2_conv_100 &
#   OMP_NUM_THREADS=1 bash checkpoints/train_all.sh mobilenetv2_acu_100; wait
# Each run appends "<run> <seconds>" to runs/fmnist_wall_times.txt (fit, validation, the full test).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(mobilenetv2_conv_100 mobilenetv2_acu_100 resnet29_conv3 resnet29_acu)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=$((64 << 30))
python=${PYTHON:-python}
[ -x .venv/bin/python ] && python=.venv/bin/python
mkdir -p runs
for run in "${runs[@]}"; do
  start=$(date +%s)
  "$python" train.py fit --config "checkpoints/configs/fmnist_${run}.yaml" --seed_everything 0
  echo "fmnist_${run} $(( $(date +%s) - start ))" >> runs/fmnist_wall_times.txt
  echo "fmnist_${run}: wall time $(( $(date +%s) - start )) s"
done
