"""``hadmc keys`` and ``hadmc delta``: round trip, signed, and failures that leave OUT alone."""

import numpy as np
import pytest
from safetensors.numpy import save_file
from typer.testing import CliRunner

from hadmc_core.cli import _register, app
from hadmc_core.delta import SignedManifest


@pytest.fixture
def tmp(tmp_path):
    rng = np.random.default_rng(0)
    w = {"w": rng.standard_normal((128, 128)).astype(np.float32)}
    save_file(w, str(tmp_path / "v1.safetensors"))
    w["w"][:10] += 1e-3
    save_file(w, str(tmp_path / "v2.safetensors"))
    _register()
    return tmp_path


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_keys_diff_apply_signed(tmp):
    res = run("keys", "generate", "-o", tmp / "cli.pem")
    assert res.exit_code == 0, res.output
    assert (tmp / "cli.pem").stat().st_mode & 0o777 == 0o600
    assert run("keys", "generate", "-o", tmp / "cli.pem").exit_code == 2, "never overwrite"
    res = run("delta", "diff", tmp / "v1.safetensors", tmp / "v2.safetensors", "-o",
              tmp / "c.delta", "--sign", tmp / "cli.pem", "--version", 5)
    assert res.exit_code == 0, res.output
    res = run("delta", "apply", tmp / "v1.safetensors", tmp / "c.delta", "-o", tmp / "c.out",
              "--public-key", tmp / "cli.pub", "--min-version", 5)
    assert res.exit_code == 0, res.output
    assert "signature verified" in res.output
    assert (tmp / "c.out").read_bytes() == (tmp / "v2.safetensors").read_bytes()


@pytest.mark.parametrize("case", ["wrong-base", "rollback", "corrupt"])
def test_apply_failure_exits_2_and_leaves_out(tmp, case):
    run("keys", "generate", "-o", tmp / "k.pem")
    run("delta", "diff", tmp / "v1.safetensors", tmp / "v2.safetensors", "-o", tmp / "c.delta",
        "--sign", tmp / "k.pem", "--version", 2)
    if case == "corrupt":
        data = bytearray((tmp / "c.delta").read_bytes())
        data[-3] ^= 0xFF
        (tmp / "c.delta").write_bytes(bytes(data))
    (tmp / "out").write_bytes(b"old")
    base = tmp / ("v2.safetensors" if case == "wrong-base" else "v1.safetensors")
    res = run("delta", "apply", base, tmp / "c.delta", "-o", tmp / "out", "--public-key",
              tmp / "k.pub", "--min-version", 3 if case == "rollback" else 1)
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "error:" in res.output
    assert (tmp / "out").read_bytes() == b"old"


def test_manifest_and_device_manifest_diff(tmp):
    run("keys", "generate", "-o", tmp / "k.pem")
    res = run("delta", "manifest", tmp / "v1.safetensors", "--sign", tmp / "k.pem", "-o",
              tmp / "m.json")
    assert res.exit_code == 0, res.output
    assert SignedManifest.from_bytes((tmp / "m.json").read_bytes()).signature
    res = run("delta", "diff", tmp / "m.json", tmp / "v2.safetensors", "--base-manifest", "-o",
              tmp / "d.delta")
    assert res.exit_code == 0, res.output
    res = run("delta", "apply", tmp / "v1.safetensors", tmp / "d.delta", "-o", tmp / "d.out")
    assert res.exit_code == 0, res.output
    assert (tmp / "d.out").read_bytes() == (tmp / "v2.safetensors").read_bytes()
