"""The agent never imports torch (nor the server's stack, nor the onnx package): a fresh
interpreter that refuses those imports runs enrollment, profile, latency table, a full and
a delta update, and inference."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ["torch", "torchvision", "onnx", "onnxscript", "fastapi", "sqlalchemy", "celery",
             "cloud_service", "starlette", "redis"]

SCRIPT = textwrap.dedent('''
    import importlib.abc, sys
    FORBIDDEN = set(sys.argv[1].split(","))

    class Guard(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in FORBIDDEN:
                raise ImportError(f"forbidden import on the device: {name}")
            return None

    sys.meta_path.insert(0, Guard())

    import tempfile, pathlib, httpx, numpy as np
    from edge_agent import cli  # noqa: F401  (the entry point imports)
    from edge_agent.agent import Agent
    from edge_agent.optable import operator_table
    from edge_agent.profile import device_profile
    from edge_agent.serve import InferenceServer, ModelRuntime
    from edge_agent.settings import AgentSettings
    from hadmc_core.hal.latency import LayerGeom
    from hadmc_core.hal import parse_profile
    from tests.edge_agent.fakes import TOKEN, FakeServer, mlp_onnx, mock_transport

    parse_profile(device_profile("guarded"))
    table = operator_table(1, [(LayerGeom("conv", 3, 1, 8, 8), 8, 8)])
    assert set(table) == {"conv-k3-s1-8x8|fp32", "conv-k3-s1-8x8|int8", "model|fp32",
                          "model|int8"}, table
    fake = FakeServer()
    fake.publish(1, 1, mlp_onnx(0))
    fake.publish(2, 2, mlp_onnx(0, scale=0.001))
    with tempfile.TemporaryDirectory() as tmp:
        s = AgentSettings(server_url="http://fake", enrollment_token=TOKEN,
                          data_dir=pathlib.Path(tmp), serve_port=0, latency_table=False,
                          smoke_runs=3)
        a = Agent(s, transport=mock_transport(fake))
        a.start()
        a.send_profile()
        for vid in (1, 2):
            fake.want(vid)
            a.poll(); a.update(); a.send_reports()
        assert a.state.active == 2 and "delta" in fake.bytes_sent, fake.reports
        srv = InferenceServer(ModelRuntime(a.store), 0).start()
        r = httpx.post(f"http://127.0.0.1:{srv.port}/v1/infer",
                       json={"input": np.zeros((1, 64)).tolist()})
        assert r.status_code == 200, r.text
        srv.stop()
        a.close()
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
    print("LOADED:" + ",".join(loaded))
''')


def test_agent_code_paths_import_no_torch() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, ",".join(FORBIDDEN)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "LOADED:", proc.stdout
