"""``scripts/system_deps.sh``: what ``scripts/test.sh`` installs with apt-get, only when missing.

Runs the script with a PATH holding only fakes: ``apt-get`` logs its calls (and can fail),
and the tools the script looks for are present or not as each test sets up."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "system_deps.sh"
FMNIST = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
          "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
#: Commands the script looks for on PATH, and the package of each.
TOOLS = {"zstd": "zstd", "xdelta3": "xdelta3", "bsdiff": "bsdiff", "promtool": "prometheus"}
#: Chromium is looked for at its Debian path, which these tests cannot fake.
CHROMIUM = [] if os.access("/usr/bin/chromium", os.X_OK) else ["chromium"]


def _fake(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(0o755)


def _run(tmp: Path, *, tools: tuple[str, ...] = (), dataset: bool = False,
         apt_fails: bool = False) -> tuple[subprocess.CompletedProcess, list[str]]:
    bin_dir, data, log = tmp / "bin", tmp / "fmnist", tmp / "apt.log"
    bin_dir.mkdir(), data.mkdir()
    _fake(bin_dir, "apt-get", f'echo "$DEBIAN_FRONTEND $*" >> {log}\nexit {int(apt_fails)}')
    _fake(bin_dir, "sudo", 'exec "$@"')
    for tool in tools:
        _fake(bin_dir, tool, "exit 0")
    if dataset:
        for name in FMNIST:
            (data / name).write_bytes(b"")
    env = {"PATH": str(bin_dir), "HADMC_FASHION_MNIST_DIR": str(data),
           "HOME": os.environ.get("HOME", "/")}
    res = subprocess.run(["/bin/bash", str(SCRIPT)], env=env, capture_output=True, text=True,
                         timeout=60)
    return res, log.read_text().splitlines() if log.exists() else []


def test_installs_what_is_missing_with_one_update(tmp_path: Path) -> None:
    res, calls = _run(tmp_path, tools=("xdelta3",))
    assert res.returncode == 0, res.stderr
    missing = ["dataset-fashion-mnist", "zstd", "bsdiff", "prometheus", *CHROMIUM]
    assert calls == ["noninteractive update -qq",
                     f"noninteractive install -y -qq {' '.join(missing)}"]


def test_does_nothing_when_everything_is_there(tmp_path: Path) -> None:
    res, calls = _run(tmp_path, tools=tuple(TOOLS), dataset=True)
    if CHROMIUM:
        pytest.skip("/usr/bin/chromium is missing here, so the script installs it")
    assert (res.returncode, res.stdout, res.stderr, calls) == (0, "", "", [])


@pytest.mark.parametrize("dataset", [False, True], ids=["dataset-missing", "tools-missing"])
def test_a_failed_install_says_what_to_run(tmp_path: Path, dataset: bool) -> None:
    res, calls = _run(tmp_path, tools=() if dataset else tuple(TOOLS), dataset=dataset,
                      apt_fails=True)
    assert res.returncode == 1 and len(calls) == 1
    missing = [*TOOLS.values()] if dataset else ["dataset-fashion-mnist"]
    assert f"run 'sudo apt-get install {' '.join([*missing, *CHROMIUM])}'" in res.stderr


def test_the_test_command_installs_system_packages_before_the_tests() -> None:
    lines = (ROOT / "scripts" / "test.sh").read_text().splitlines()
    installs = [i for i, line in enumerate(lines) if line.startswith("bash scripts/system_deps.sh")]
    tests = [i for i, line in enumerate(lines) if line.startswith("python -m pytest")]
    assert installs and tests and installs[0] < tests[0]
