"""Bad input gives one clear error line and a non-zero exit, never a traceback."""

import numpy as np
import pytest
from typer.testing import CliRunner

from hadmc_core.cli import _register, app
from hadmc_core.models import ArchSpec, build_model, save_weights

_register()
runner = CliRunner()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    spec = ArchSpec("densenet", 1, 10, "small", 0.5)
    path = tmp_path_factory.mktemp("w") / "d.safetensors"
    save_weights(build_model(spec), path, spec)
    return path


def _bad_npz(tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.zeros((40, 8, 8), np.uint8), y=np.full(40, 12))
    return str(tmp_path / "bad.npz")


def _truncated(tmp_path, weights):
    p = tmp_path / "t.safetensors"
    p.write_bytes(weights.read_bytes()[:500])
    return str(p)


CASES = {
    "unknown-profile": (lambda t, w: ["--weights", str(w), "--data", "digits",
                                      "--profile", "tpu-v9"], "unknown profile"),
    "unknown-arch": (lambda t, w: ["--weights", str(w), "--data", "digits", "--arch", "vgg"],
                     "unknown architecture 'vgg'; valid names: densenet, mobilenetv2"),
    "weights-of-another-arch": (lambda t, w: ["--weights", str(w), "--data", "digits",
                                             "--arch", "resnet18"],
                                "holds weights for densenet, not resnet18"),
    "weights-mismatch": (lambda t, w: ["--weights", str(w), "--data", "digits",
                                       "--width", "1.0"],
                         "weights do not fit the architecture: shape mismatch: "),
    "label-range": (lambda t, w: ["--weights", str(w), "--data", _bad_npz(t)],
                    "labels go up to 12"),
    "truncated": (lambda t, w: ["--weights", _truncated(t, w), "--data", "digits"],
                  "not a readable safetensors"),
    "missing-file": (lambda t, w: ["--weights", str(t / "nope.safetensors"), "--data",
                                   "digits"], "not found"),
    "bad-dataset": (lambda t, w: ["--weights", str(w), "--data", "mnist-9000"],
                    "unknown dataset"),
    "time-budget": (lambda t, w: ["--weights", str(w), "--data", "digits",
                                  "--time-budget-s", "0"],
                    "constraints.time_budget_s must be > 0 seconds"),
    "validation-word": (lambda t, w: ["--weights", str(w), "--data", "digits",
                                      "--validation-images", "lots"],
                        "constraints.validation_images: 'auto', 'dataset' or a number"),
    "validation-fewer": (lambda t, w: ["--weights", str(w), "--data", "digits",
                                       "--validation-images", "100"],
                         "fewer than the dataset's own validation split (269 images)"),
    "validation-more-than-training": (lambda t, w: ["--weights", str(w), "--data", "digits",
                                                    "--validation-images", "2000"],
                                      "would take 1731 of the 1257 training images"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_clear_line(case, tmp_path, weights):
    make, expected = CASES[case]
    out = tmp_path / "out"
    args = ["compress", *make(tmp_path, weights), "--out", str(out), "--quiet"]
    if "--profile" not in args:
        args += ["--profile", "x86-avx2"]
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert expected in " ".join(res.output.split())
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_impossible_budget_reports_best_result(trained_digits_resnet, tmp_path):
    _m, _s, weights = trained_digits_resnet
    cfg = tmp_path / "cfg.json"
    cfg.write_text('{"distill": {"epochs": 1, "samples": null}, "max_candidates": 1,'
                   ' "quantize": {"keep_ladder": [0]}}')
    res = runner.invoke(app, ["compress", "--weights", str(weights), "--data", "digits",
                              "--profile", "x86-avx2", "--out", str(tmp_path / "o"),
                              "--latency-budget-ms", "0.000001", "--config", str(cfg),
                              "--quiet"])
    assert res.exit_code == 3, res.output
    assert "constraints not met" in res.output and "budget" in res.output
    assert (tmp_path / "o" / "report.json").exists()
