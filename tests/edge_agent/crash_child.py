"""Run one update in this process and SIGKILL it at the point named by ``CRASH_AT``.

Used by test_crash.py: ``python -m tests.edge_agent.crash_child`` with ``HADMC_AGENT_*``
pointing at a loopback fake that wants a new version.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from typing import Any

from edge_agent import client, store, update
from edge_agent.agent import Agent
from edge_agent.settings import AgentSettings


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def after(obj: Any, name: str) -> None:
    orig = getattr(obj, name)

    def wrapped(*a: Any, **kw: Any) -> Any:
        out = orig(*a, **kw)
        die()
        return out

    setattr(obj, name, wrapped)


def before(obj: Any, name: str, when: Any = lambda *a, **kw: True) -> None:
    orig = getattr(obj, name)

    def wrapped(*a: Any, **kw: Any) -> Any:
        if when(*a, **kw):
            die()
        return orig(*a, **kw)

    setattr(obj, name, wrapped)


def arm(point: str) -> None:
    installing = lambda src, dst: "staging" in str(src) and "versions" in str(dst)  # noqa: E731
    {
        "mid-download": lambda: before(client.ServerClient, "_fetch_range",
                                       lambda self, p, dest, *a: dest.exists()),
        "downloaded": lambda: after(client.ServerClient, "_fetch_range"),
        "applied": lambda: after(update, "apply_delta"),
        "smoked": lambda: after(update, "smoke_test"),
        "install-rename": lambda: before(os, "rename", installing),
        "installed": lambda: after(store.ModelStore, "install"),
        "switching": lambda: before(store.ModelStore, "switch"),
        "switched": lambda: after(store.ModelStore, "switch"),
        "pruning": lambda: before(store.ModelStore, "remove_version"),
        "trash": lambda: before(shutil, "rmtree", lambda p, **kw: "trash-" in str(p)),
    }[point]()


def main() -> int:
    a = Agent(AgentSettings(serve_port=0, latency_table=False, smoke_runs=3,
                            backoff_base_seconds=0.01, health_window_seconds=0))
    a.start()
    arm(os.environ["CRASH_AT"])
    a.poll()
    a.update()
    a.send_reports()
    return 0


if __name__ == "__main__":
    sys.exit(main())
