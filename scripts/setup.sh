#!/usr/bin/env bash
# One-command setup on a fresh machine: Debian's Fashion-MNIST (the embedded dataset) and a
# virtual environment .venv with acuzoo and its pinned dependencies (constraints.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist
fi

python=${PYTHON:-python3}
"$python" -c 'import sys; assert sys.version_info >= (3, 10), "acuzoo needs Python >= 3.10"'
[ -x .venv/bin/python ] || "$python" -m venv .venv
# pip.conf here names local wheel folders; its "Location ... ignored" lines are noise.
pip_install() {
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt "$@" 2>&1 \
    | { grep -v "^WARNING: Location .* is ignored" || true; }
}
# The build needs (pyproject.toml) go into .venv first, so the editable install builds against the
# pinned torch without a second copy in an isolated build environment.
pip_install "setuptools>=77" torch ninja
pip_install --no-build-isolation -e ".[dev]"
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
