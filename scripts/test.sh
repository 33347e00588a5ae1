#!/usr/bin/env bash
# Install HAD-MC with its test dependencies into .venv and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system_deps.sh             # Debian packages the tests use (when missing)
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
pip install -q torch==2.13.0            # the CPU build; satisfies every torch requirement
pip install -q -e ".[core,cloud,dev]"
ruff check .
mypy hadmc_core cloud_service edge_agent
lint-imports                            # import rules: [tool.importlinter] in pyproject.toml
python -m pytest "$@"
