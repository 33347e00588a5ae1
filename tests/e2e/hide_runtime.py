"""``python tests/e2e/hide_runtime.py RUNTIME[,RUNTIME] [agent flags]``: ``python -m
edge_agent`` on a device where those runtimes are not installed. The module finder does not
see them, so ``import onnxruntime`` fails and ``importlib.util.find_spec`` answers None, as
in an install of ``hadmc[edge-openvino]`` (no ONNX Runtime) or ``hadmc[edge]`` (no
OpenVINO)."""

from __future__ import annotations

import importlib.machinery
import runpy
import sys
from typing import Any

HIDDEN = set(sys.argv[1].split(","))


class _Hide:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name.split(".")[0] in HIDDEN:
            return None
        return self.inner.find_spec(name, path, target)

    def find_distributions(self, *args: Any, **kwargs: Any) -> Any:
        """Installed packages for ``importlib.metadata``, without the hidden ones."""
        return (d for d in self.inner.find_distributions(*args, **kwargs)
                if (d.metadata["Name"] or "").lower() not in HIDDEN)

    def invalidate_caches(self) -> None:
        self.inner.invalidate_caches()


sys.meta_path[:] = [_Hide(f) if f is importlib.machinery.PathFinder else f
                    for f in sys.meta_path]
sys.argv = [sys.argv[0], *sys.argv[2:]]
runpy.run_module("edge_agent", run_name="__main__", alter_sys=True)
