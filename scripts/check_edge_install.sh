#!/usr/bin/env bash
# Prove the edge agent installs and runs without torch:
#   fresh venv → pip install -e ".[edge]" → torch (and onnx) absent → the agent runs.
# Usage: scripts/check_edge_install.sh [VENV_DIR]   (default: a temp dir, removed after)
#        EXTRA=edge-openvino scripts/check_edge_install.sh   (the agent on OpenVINO: no
#        ONNX Runtime either; the smoke test and the latency table run on OpenVINO)
# Uses the pip cache / configured index like any install; about a minute when cached.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ $# -ge 1 ]; then
  VENV=$1
else
  VENV=$(mktemp -d /tmp/hadmc-edge-venv.XXXXXX)
  trap 'rm -rf "$VENV"' EXIT
fi

"$PY" -m venv "$VENV"
EXTRA=${EXTRA:-edge}
case "$EXTRA" in
  edge) RUNTIME=onnxruntime; ABSENT="" ;;
  edge-openvino) RUNTIME=openvino; ABSENT="onnxruntime nncf" ;;
  *) echo "EXTRA must be edge or edge-openvino (got $EXTRA)" >&2; exit 2 ;;
esac
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[$EXTRA]"

fail=0
for mod in torch torchvision onnx fastapi sqlalchemy celery $ABSENT; do
  if "$VENV/bin/python" -c "import $mod" 2>/dev/null; then
    echo "FAIL: '$mod' is importable in the edge install" >&2
    fail=1
  fi
done
[ "$fail" = 0 ] || exit 1

for mod in numpy $RUNTIME httpx blake3 zstandard cryptography; do
  "$VENV/bin/python" -c "import $mod" || { echo "FAIL: edge extra lacks $mod" >&2; exit 1; }
done

# The agent runs: its CLI answers, and bad input is one error line with exit code 2.
"$VENV/bin/hadmc-agent" --help >/dev/null
set +e
out=$("$VENV/bin/hadmc-agent" run --data-dir "$VENV/agent-data" 2>&1)
rc=$?
set -e
if [ "$rc" != 2 ] || [[ "$out" != "error: not enrolled yet"* ]]; then
  echo "FAIL: hadmc-agent run without a server should refuse in one line (rc=$rc): $out" >&2
  exit 1
fi
# Its whole code path (enroll, update, smoke test, inference) runs torch-free.
PYTHONPATH=. RUNTIME=$RUNTIME "$VENV/bin/python" - <<'PY'
import os, sys, tempfile
from pathlib import Path
import numpy as np
from edge_agent.profile import device_profile
from edge_agent.smoke import smoke_test
from edge_agent.optable import operator_table
from hadmc_core import backends
from hadmc_core.hal.latency import LayerGeom, _layer_onnx
runtime = os.environ["RUNTIME"]
assert backends.default().name == runtime, backends.default().name
runtimes = device_profile("ci")["runtimes"]
print("profile:", runtimes)
assert runtimes[0].startswith(runtime + "-"), runtimes
print("table:", operator_table(1, [(LayerGeom("linear"), 64, 8)]))
with tempfile.TemporaryDirectory() as tmp:
    model = Path(tmp) / "m.onnx"
    model.write_bytes(_layer_onnx(LayerGeom("linear"), 64, 8, "int8"))
    print("smoke:", smoke_test(model, None, runs=5))
    # the inference endpoint opens versions the same way (edge_agent.smoke.open_session)
    from edge_agent.serve import ModelRuntime  # noqa: F401  (imports without the other runtime)
    from edge_agent.smoke import choose_runtime, open_session
    sess = open_session(model, 1, choose_runtime([runtime + "-cpu"]))
    assert type(sess).__module__.endswith(runtime), type(sess)
    print("serve:", sess.run({sess.input_names[0]: np.zeros((1, 64), np.float32)})[0].shape)
bad = [m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "fastapi", "nncf")]
assert not bad, bad
PY
echo "OK: edge install ($EXTRA) has no torch and the agent runs on $RUNTIME"
