"""hadmc_core.fsutil: atomic writes on a real file system (file and directory fsynced, the
old file intact after a failure, no temp files left behind)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hadmc_core import fsutil


def _entries(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What os.fsync was called on, in order: "file" or "dir"."""
    kinds: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        kinds.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return kinds


def test_write_atomic_replaces_with_mode_and_syncs_file_then_directory(
        tmp_path: Path, synced: list[str]) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    fsutil.write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert synced == ["file", "dir"]
    assert _entries(tmp_path) == ["state.json"]


def test_write_atomic_mode_0o666_is_what_open_gives(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        fsutil.write_atomic(tmp_path / "a", b"x", mode=0o666)
        (tmp_path / "b").write_bytes(b"x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o644


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "model.bin"
    target.write_bytes(b"old")

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        fsutil.write_atomic(target, b"new" * 1000)
    assert target.read_bytes() == b"old"
    assert _entries(tmp_path) == ["model.bin"]


def test_atomic_path_for_writers_that_take_a_file_name(tmp_path: Path,
                                                       synced: list[str]) -> None:
    target = tmp_path / "w.safetensors"
    target.write_bytes(b"old")
    with fsutil.atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".w.safetensors.tmp-")
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # not visible before the end
    assert target.read_bytes() == b"new"
    assert synced == ["file", "dir"]
    with pytest.raises(RuntimeError), fsutil.atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"new"
    assert _entries(tmp_path) == ["w.safetensors"]


def test_fsync_dir_strict_or_lenient(tmp_path: Path) -> None:
    fsutil.fsync_dir(tmp_path)
    with pytest.raises(FileNotFoundError):
        fsutil.fsync_dir(tmp_path / "missing")
    fsutil.fsync_dir(tmp_path / "missing", strict=False)


def test_a_killed_writer_leaves_old_or_new_never_a_part(tmp_path: Path) -> None:
    """SIGKILL while a writer loops: the file always holds one whole version."""
    target = tmp_path / "f"
    fsutil.write_atomic(target, b"a" * 200_000)
    code = ("import sys; from pathlib import Path; from hadmc_core.fsutil import write_atomic\n"
            "p = Path(sys.argv[1]); print('go', flush=True)\n"
            "while True:\n"
            "    for c in b'bc':\n"
            "        write_atomic(p, bytes([c]) * 200_000)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"go\n"
        for _ in range(50):
            data = target.read_bytes()
            assert len(data) == 200_000 and len(set(data)) == 1
    finally:
        proc.kill()
        proc.wait()
    data = target.read_bytes()
    assert len(data) == 200_000 and len(set(data)) == 1
    assert {p.name for p in tmp_path.iterdir()} - {"f"} <= {
        p.name for p in tmp_path.glob(".f.tmp-*")}


def test_profile_detect_out_writes_the_yaml_atomically(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hadmc_core.cli import _register, app
    from hadmc_core.hal import load_profile

    _register()
    out = tmp_path / "new" / "here.yaml"  # the folder is created
    res = CliRunner().invoke(app, ["profile", "detect", "--name", "here", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert load_profile(str(out)).name == "here"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert _entries(out.parent) == ["here.yaml"]


def test_save_weights_replaces_atomically_and_keeps_the_old_file_on_error(
        tmp_path: Path) -> None:
    from torch import nn

    from hadmc_core.models import read_weights, save_weights

    path = tmp_path / "w.safetensors"
    save_weights(nn.Linear(3, 2), path)
    before = path.read_bytes()
    shared = nn.Module()
    shared.a = nn.Linear(3, 2)
    shared.b = shared.a  # two names, one tensor: safetensors refuses to write it
    with pytest.raises(RuntimeError):
        save_weights(shared, path)
    assert path.read_bytes() == before and _entries(tmp_path) == ["w.safetensors"]
    assert set(read_weights(path)[0]) == {"weight", "bias"}
