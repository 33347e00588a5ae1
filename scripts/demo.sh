#!/usr/bin/env bash
# Install HAD-MC and run the main job end to end on embedded defaults (no Postgres, no
# Redis): train a baseline on real data (Fashion-MNIST), then, through the service,
# compress it for this machine's profile, enroll an edge agent, roll the compressed
# version out to it and classify a test image through the agent.
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
pip install -q -e ".[core,cloud,edge]"
mkdir -p runs
hadmc train --arch resnet18 --width 0.25 --data fashion-mnist --epochs 1 \
  --out runs/resnet18-w025-fmnist.safetensors
python scripts/demo_service.py --weights runs/resnet18-w025-fmnist.safetensors --width 0.25 \
  --data fashion-mnist --max-accuracy-drop 1.0 --workdir runs/service
echo "service state, logs and the agent's data directory: runs/service/"
