#!/usr/bin/env bash
# Install HAD-MC and run the main job end to end on embedded defaults:
# train a baseline on real data (Fashion-MNIST), then compress it for this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) \
    || { echo "install Fashion-MNIST: sudo apt-get install dataset-fashion-mnist"; exit 1; }
fi
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
pip install -q torch==2.13.0
pip install -q -e ".[core]"
mkdir -p runs
hadmc train --arch resnet18 --width 0.25 --data fashion-mnist --epochs 1 \
  --out runs/resnet18-w025-fmnist.safetensors
hadmc compress --weights runs/resnet18-w025-fmnist.safetensors --data fashion-mnist \
  --profile local --max-accuracy-drop 1.0 --out runs/compressed --overwrite
echo "report: runs/compressed/report.json, plot: runs/compressed/report.png"
