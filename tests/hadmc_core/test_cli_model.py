"""``hadmc compress --model``: an ONNX file or a factory from outside the zoo, end to end on
digits, and every bad model input as one error line with exit code 2 and nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from hadmc_core.cli import _register, app
from hadmc_core.data.adapt import adapt
from tests.hadmc_core.factory_models import small_cnn

_register()
runner = CliRunner()
FACTORY = "tests.hadmc_core.factory_models"
#: Every stage once, in seconds on digits. Pruning is uniform: a
#: latency-guided rung on layers of a few microseconds, timed on this machine, may find
#: nothing worth removing (so whether the stage runs would depend on the CPU).
FAST = {"prune": {"uniform_ratio": 0.5, "calib_batches": 2},
        "distill": {"epochs": 1, "samples": None, "batch_size": 64},
        "quantize": {"keep_ladder": [0], "calib_samples": 64, "sensitivity_samples": 32},
        "measure": {"runs": 5, "warmup": 2, "in_graph": False}, "max_candidates": 1}


class RGBNet(nn.Module):
    """Written here, not from the zoo: takes 3x10x10 images, so digits (1x8x8) are fitted."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 12, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(12)
        self.conv2 = nn.Conv2d(12, 24, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(24)
        self.fc = nn.Linear(24 * 5 * 5, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.flatten(1))


class EinsumNet(nn.Module):
    """Any image size, pooled with an einsum: the Einsum node does not convert to PyTorch,
    so the graph is compressed on its own."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(torch.relu(self.conv(x)))
        return torch.einsum("nchw->nc", y) / (y.shape[2] * y.shape[3])


def _train(make, split, epochs: float = 10) -> nn.Module:  # type: ignore[no-untyped-def]
    from hadmc_core.train import TrainConfig, fit

    torch.manual_seed(0)
    model = make()
    fit(model, split, TrainConfig(epochs=epochs, batch_size=64, lr=0.05))
    return model.eval()


def _export(model: nn.Module, shape: tuple[int, ...], path: Path,
            spatial: bool = False) -> Path:
    dynamic = {0: "n", 2: "h", 3: "w"} if spatial else {0: "n"}
    torch.onnx.export(model.eval(), (torch.zeros(1, *shape),), str(path), dynamo=False,
                      input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": dynamic, "logits": {0: "n"}})
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("models")
    fitted, _ = adapt(digits, (3, 10, 10))
    cnn = _train(lambda: small_cnn(1, 10, 8), digits.train)
    save_file(dict(cnn.state_dict()), str(root / "cnn.safetensors"),
              metadata={"input_shape": "1,8,8"})
    save_file(dict(small_cnn(1, 10, 16).state_dict()), str(root / "wide.safetensors"))
    (root / "fast.json").write_text(json.dumps(FAST))
    (root / "bad.onnx").write_bytes(b"this is not a protobuf at all")
    return {"rgb": _export(_train(RGBNet, fitted.train), (3, 10, 10), root / "rgb.onnx"),
            "five": _export(RGBNet(classes=5), (3, 10, 10), root / "five.onnx"),
            "flat": _export(nn.Sequential(nn.Linear(64, 10)), (64,), root / "flat.onnx"),
            "einsum": _export(_train(EinsumNet, digits.train, 3), (1, 8, 8),
                              root / "einsum.onnx", spatial=True),
            "cnn": root / "cnn.safetensors", "wide": root / "wide.safetensors",
            "config": root / "fast.json", "bad": root / "bad.onnx", "root": root}


def _compress(files: dict[str, Path], out: Path, *model: str) -> tuple[int, str]:
    res = runner.invoke(app, ["compress", *model, "--data", "digits", "--profile", "x86-avx2",
                              "--config", str(files["config"]), "--max-accuracy-drop", "100",
                              "--out", str(out), "--quiet"])
    return res.exit_code, res.output


def test_onnx_model_from_outside_the_zoo_compresses_on_fitted_digits(files, digits, tmp_path):
    out = tmp_path / "out"
    code, output = _compress(files, out, "--model", str(files["rgb"]))
    assert code == 0, output
    assert ("dataset images 1x8x8 padded to 1x10x10 and replicated to 3 channels to fit the "
            "model's input 3x10x10") in " ".join(output.split())
    assert {p.name for p in out.iterdir()} == {"model.onnx", "report.json", "report.png"}
    rep = json.loads((out / "report.json").read_text())
    assert rep["model"]["kind"] == "onnx" and rep["model"]["file"] == str(files["rgb"])
    assert rep["arch"] is None and rep["baseline"]["accuracy"] > 70
    assert rep["data_adaptation"]["to"] == [3, 10, 10] and rep["data_adaptation"]["message"] == (
        "dataset images 1x8x8 padded to 1x10x10 and replicated to 3 channels to fit the "
        "model's input 3x10x10")
    assert {"prune", "distill", "quantize"} <= set(rep["stages"]["ran"])
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[1:] == [3, 10, 10]
    test = adapt(digits, (3, 10, 10))[0].test
    logits = sess.run(None, {sess.get_inputs()[0].name: test.x})[0]
    acc = 100.0 * float((logits.argmax(1) == test.y).mean())
    assert rep["compressed"]["accuracy"] == pytest.approx(acc, abs=1e-9)


def test_factory_with_weights_and_shape_from_their_metadata_compresses(files, tmp_path):
    out = tmp_path / "out"
    code, output = _compress(files, out, "--model", f"{FACTORY}:small_cnn", "--model-args",
                             '{"channels": 1, "width": 8}', "--weights", str(files["cnn"]))
    assert code == 0, output
    assert "fit the model's input" not in output  # digits are already 1x8x8
    rep = json.loads((out / "report.json").read_text())
    assert rep["model"]["kind"] == "factory"
    assert rep["model"]["factory"] == f"{FACTORY}:small_cnn"
    assert rep["model"]["args"] == {"channels": 1, "width": 8}
    assert rep["baseline"]["accuracy"] > 70 and (out / "model.onnx").stat().st_size > 0


def test_graph_only_onnx_with_dynamic_image_size_takes_the_dataset_size(files, tmp_path):
    out = tmp_path / "out"
    code, output = _compress(files, out, "--model", str(files["einsum"]))
    assert code == 0, output
    assert "fit the model's input" not in output  # its height and width are the dataset's
    rep = json.loads((out / "report.json").read_text())
    assert rep["model"]["kind"] == "onnx" and rep["model"]["converted"] is False
    skipped = {s["stage"]: s for s in rep["stages"]["skipped"]}
    assert {"prune", "distill"} <= set(skipped) and skipped["prune"]["op"] == "Einsum"
    assert "quantize" in rep["stages"]["ran"]
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"x": np.zeros((3, 1, 8, 8), np.float32)})[0].shape == (3, 10)


def _factory(files: dict[str, Path], name: str = "small_cnn", *more: str) -> list[str]:
    return ["--model", f"{FACTORY}:{name}", *more]


BAD = {
    "onnx-not-protobuf": (lambda f: ["--model", str(f["bad"])],
                          "is not a readable ONNX model"),
    "onnx-missing": (lambda f: ["--model", str(f["root"] / "nope.onnx")],
                     "ONNX file not found"),
    "onnx-with-weights": (lambda f: ["--model", str(f["rgb"]), "--weights", str(f["cnn"])],
                          "an ONNX file carries its own weights"),
    "onnx-shape-not-the-graph's": (lambda f: ["--model", str(f["rgb"]), "--input-shape",
                                              "3,12,12"], "dimension 2 = 10 in the graph"),
    "onnx-five-classes": (lambda f: ["--model", str(f["five"])],
                          "dataset labels go up to 9 but the model has 5 classes"),
    "onnx-not-images": (lambda f: ["--model", str(f["flat"])],
                        "the model takes inputs of shape (64,)"),
    "factory-module-missing": (lambda f: ["--model", "tests.hadmc_core.nowhere:build",
                                          "--input-shape", "1,8,8"],
                               "no module named 'tests.hadmc_core.nowhere'"),
    "factory-import-fails": (lambda f: ["--model", "tests.hadmc_core.factory_broken:build",
                                        "--input-shape", "1,8,8"],
                             "RuntimeError: this module needs the camera driver"),
    "factory-raises": (lambda f: _factory(f, "refuses", "--input-shape", "1,8,8"),
                       "raised ValueError: width must be a power of two, got 8"),
    "factory-no-attribute": (lambda f: _factory(f, "nothing", "--input-shape", "1,8,8"),
                             "has no attribute 'nothing'"),
    "factory-without-shape": (lambda f: _factory(f),
                              "needs its input shape (channels, height, width), e.g. 1,8,8"),
    "factory-weights-do-not-fit": (
        lambda f: _factory(f, "small_cnn", "--weights", str(f["wide"]), "--input-shape",
                           "1,8,8"),
        "weights do not fit the architecture: shape mismatch: features.0.bias"),
    "factory-five-classes": (lambda f: _factory(f, "small_cnn", "--model-args",
                                                '{"classes": 5}', "--input-shape", "1,8,8"),
                             "dataset labels go up to 9 but the model has 5 classes"),
    "factory-unknown-argument": (lambda f: _factory(f, "small_cnn", "--model-args",
                                                    '{"depth": 5}', "--input-shape", "1,8,8"),
                                 "unexpected keyword argument 'depth'"),
    "two-channels-from-one": (lambda f: _factory(f, "small_cnn", "--model-args",
                                                 '{"channels": 2}', "--input-shape", "2,8,8"),
                              "dataset images have 1 channel(s) but the model takes 2"),
    "input-shape-not-c-h-w": (lambda f: _factory(f, "small_cnn", "--input-shape", "1,eight,8"),
                              "--input-shape '1,eight,8' is not C,H,W"),
    "model-args-not-json": (lambda f: _factory(f, "small_cnn", "--model-args", "{width: 2}",
                                               "--input-shape", "1,8,8"),
                            "model arguments are not valid JSON"),
    "model-args-not-an-object": (lambda f: _factory(f, "small_cnn", "--model-args", "[2]",
                                                    "--input-shape", "1,8,8"),
                                 "model arguments must be a JSON object"),
    "arch-and-model-disagree": (lambda f: ["--arch", "resnet18", "--model", str(f["rgb"])],
                                "name two models"),
    "width-of-an-onnx-model": (lambda f: ["--model", str(f["rgb"]), "--width", "0.5"],
                               "stem and width are options of a built-in architecture"),
    "no-model": (lambda f: [], "name the model: --model"),
    "not-a-model": (lambda f: ["--model", "vgg-16"], "'vgg-16' is not a model"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_model_input_is_one_line_exit_2_and_nothing_written(case, files, tmp_path):
    make, expected = BAD[case]
    out = tmp_path / "out"
    code, output = _compress(files, out, *make(files))
    assert code == 2, output
    assert "Traceback" not in output
    text = " ".join(output.split())
    assert text.startswith("error: ") and expected in text, output
    assert len(output.strip().splitlines()) == 1, output
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_a_config_that_is_not_a_json_object_is_one_line(files, tmp_path):
    (tmp_path / "list.json").write_text("[1, 2]")
    res = runner.invoke(app, ["compress", "--model", str(files["rgb"]), "--data", "digits",
                              "--config", str(tmp_path / "list.json"),
                              "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "list.json must be a JSON object, not list" in " ".join(res.output.split())


def test_the_command_line_prints_one_line_on_stderr_for_a_factory_that_raises(tmp_path):
    hadmc = Path(sys.executable).parent / "hadmc"
    res = subprocess.run([str(hadmc), "compress", "--model", f"{FACTORY}:refuses",
                          "--input-shape", "1,8,8", "--data", "digits", "--profile",
                          "x86-avx2", "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).parents[2])
    assert res.returncode == 2, res.stderr
    assert res.stdout == ""
    assert res.stderr.strip() == (f"error: {FACTORY}:refuses raised ValueError: width must be "
                                  "a power of two, got 8")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option", ["--arch", "--model"])
def test_arch_and_model_both_name_a_built_in_architecture(option, tmp_path):
    from hadmc_core.models import ArchSpec, build_model, save_weights

    spec = ArchSpec("densenet", 1, 10, "small", 0.25)
    weights = tmp_path / "densenet.safetensors"
    save_weights(build_model(spec), weights, spec)
    res = runner.invoke(app, ["compress", option, "resnet18", "--weights", str(weights),
                              "--data", "digits", "--profile", "x86-avx2",
                              "--out", str(tmp_path / "out"), "--quiet"])
    assert res.exit_code == 2, res.output
    assert "holds weights for densenet, not resnet18" in " ".join(res.output.split())
