"""``hadmc-agent`` / ``python -m edge_agent``: one error line and exit 2 on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_agent.agent import Agent
from edge_agent.cli import main
from tests.edge_agent.conftest import cycle
from tests.edge_agent.fakes import FakeServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("argv,env,message", [
    (["run", "--data-dir", "{tmp}/d"], {}, "no server"),
    (["run", "--data-dir", "{tmp}/d", "--server", "http://127.0.0.1:9"], {}, "--enroll-token"),
    (["run", "--data-dir", "{tmp}/d"], {"HADMC_AGENT_SERVER_URL": "ftp://x"}, "server_url"),
    (["run", "--data-dir", "/proc/nope/d", "--server", "http://x", "--enroll-token", "t"], {},
     "cannot use data directory"),
    (["run", "--serve-port", "99999", "--data-dir", "{tmp}/d"], {}, "serve_port"),
    (["status", "--data-dir", "{tmp}/missing"], {}, "does not exist"),
    (["run", "--bogus"], {}, "No such option"),
], ids=["no-server", "no-token", "bad-url", "bad-dir", "bad-port", "status-missing",
        "bad-flag"])
def test_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch, argv: list[str],
                               env: dict[str, str], message: str) -> None:
    for k in [k for k in os.environ if k.startswith("HADMC_AGENT_")]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err


def test_status_reports_the_data_dir(fake: FakeServer, make_agent: Callable[..., Agent],
                                     models: dict[str, bytes],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    a = make_agent()
    fake.publish(1, 1, models["v1"])
    fake.want(1)
    cycle(a)
    assert main(["status", "--data-dir", str(a.store.root)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["device_id"] == a.device_id and out["current"] == 1 and out["active"] == 1
    assert out["held"] == [1] and out["pending_reports"] == 0


def test_python_m_edge_agent_runs_without_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADMC_AGENT_")}
    proc = subprocess.run([sys.executable, "-m", "edge_agent", "--data-dir", str(tmp_path)],
                          env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: not enrolled yet")


def test_busy_inference_port_is_one_line(fake: FakeServer, make_agent: Callable[..., Agent],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    a = make_agent()  # enrolled; now a second start with a port that is taken
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert main(["run", "--data-dir", str(a.store.root), "--server", "http://127.0.0.1:9",
                     "--serve-port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot serve on 127.0.0.1:") and "\n" not in err
