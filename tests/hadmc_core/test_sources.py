"""Model sources: built-in architectures, Python factories, ONNX files (converted to PyTorch
when every operator maps, graph-only otherwise)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from hadmc_core.errors import (
    HadmcError,
    InputFileError,
    ModelSourceError,
    UnsupportedOperatorError,
    WeightsMismatchError,
)
from hadmc_core.models import ArchSpec, build_model, save_weights
from hadmc_core.onnx_io import export_onnx
from hadmc_core.sources import LoadedModel, load, onnx_to_torch
from hadmc_core.sources import base as sources_base
from hadmc_core.sources.onnx_graph import OPS


# ---------------------------------------------------------------- models written as users do
def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
            act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), act())


class VGGView(nn.Module):
    """Plain VGG stack; the classifier flattens with ``x.view(x.size(0), -1)``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 16), nn.MaxPool2d(2), conv_bn(16, 32),
                                      nn.MaxPool2d(2), conv_bn(32, 32))
        self.classifier = nn.Sequential(nn.Linear(32 * 4 * 4, 32), nn.ReLU(), nn.Dropout(),
                                        nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(x.view(x.size(0), -1))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1), act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(s))))


class SENet(nn.Module):
    """A residual block with squeeze-and-excitation gating."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.conv1 = conv_bn(16, 32, stride=2)
        self.conv2 = nn.Sequential(nn.Conv2d(32, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32))
        self.se = SqueezeExcite(32)
        self.down = nn.Sequential(nn.Conv2d(16, 32, 1, 2, bias=False), nn.BatchNorm2d(32))
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(self.se(self.conv2(self.conv1(x))) + self.down(x))
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(x.view(x.size(0), -1))


class DepthwiseSiLU(nn.Module):
    """Inverted bottlenecks: expand, depthwise 3x3, SE, project; SiLU everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16, act=nn.SiLU)
        self.expand = conv_bn(16, 64, 1, act=nn.SiLU)
        self.dw = conv_bn(64, 64, 3, groups=64, act=nn.SiLU)
        self.se = SqueezeExcite(64, nn.SiLU)
        self.project = nn.Sequential(nn.Conv2d(64, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.project(self.se(self.dw(self.expand(x))))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ResNeXtMini(nn.Module):
    """Aggregated residual block: 1x1, grouped 3x3 (cardinality 4), 1x1."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 32)
        self.conv1 = conv_bn(32, 32, 1)
        self.conv2 = conv_bn(32, 32, 3, 2, groups=4)
        self.conv3 = nn.Sequential(nn.Conv2d(32, 64, 1, bias=False), nn.BatchNorm2d(64))
        self.shortcut = nn.Sequential(nn.Conv2d(32, 64, 1, 2, bias=False), nn.BatchNorm2d(64))
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(self.conv3(self.conv2(self.conv1(x))) + self.shortcut(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bottleneck = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(),
                                        nn.Conv2d(cin, 4 * growth, 1, bias=False))
        self.conv = nn.Sequential(nn.BatchNorm2d(4 * growth), nn.ReLU(),
                                  nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(self.bottleneck(x))], 1)


class DenseBC(nn.Module):
    """DenseNet-BC: pre-activation dense layers concatenated, a compressing transition."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 3, 1, 1, bias=False), DenseLayer(16, 8), DenseLayer(24, 8),
            nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 16, 1, bias=False), nn.AvgPool2d(2),
            DenseLayer(16, 8), nn.BatchNorm2d(24), nn.ReLU())
        self.out = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.net(x).mean((2, 3)))


class Operators(nn.Module):
    """Upsampling, reflect padding, transposed convs, pooling with padding, many activations."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.c2 = nn.Conv2d(8, 8, 3, dilation=2)
        self.ct = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.c1(x), 0.1)
        x = F.max_pool2d(x, 3, 2, 1, ceil_mode=True)
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = F.pad(x, (1, 2, 0, 1), mode="reflect")
        x = F.hardswish(self.up(x)) + F.hardsigmoid(x.mean((2, 3), keepdim=True))
        x = F.avg_pool2d(F.relu6(self.c2(x)), 3, 2, 1, count_include_pad=False)
        x = self.ct(torch.tanh(x)).mean((2, 3))
        return torch.softmax(self.fc(x), -1)


class Shapes(nn.Module):
    """Channel shuffle, chunk, slicing, permute, LayerNorm, x @ W + b, GELU, pow/sqrt."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, 2, 1)
        self.c2 = nn.Conv2d(8, 8, 3, 1, 1, groups=8)
        self.ln = nn.LayerNorm(16)
        self.w, self.b = nn.Parameter(torch.randn(16, 6)), nn.Parameter(torch.randn(6))
        self.bn = nn.BatchNorm1d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c1(x)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        a, b = x.chunk(2, dim=1)
        x = torch.cat([self.c2(a), F.gelu(b)], 1)[:, :, 1:-1, ::2]
        x = self.ln(x.flatten(2).permute(0, 2, 1))
        x = torch.sqrt(x.pow(2) + 1.0) - x / 3.0
        return self.bn((x @ self.w + self.b).mean(1)).unsqueeze(1).squeeze(1)


class Sequence(nn.Module):
    """1-D convolution, PReLU, split with sizes, ELU, clamp, bilinear resize to a size."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv1d(3, 6, 5, padding=2, stride=2)
        self.p = nn.PReLU(6)
        self.fc = nn.Linear(6 * 7, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.p(self.c(x.flatten(2)[:, :, :28]))
        a, b = torch.split(x, [2, 4], dim=1)
        x = torch.cat([F.elu(a), b.clamp(-1, 2)], 1).unsqueeze(-1)
        x = F.interpolate(x, size=(7, 1), mode="bilinear", align_corners=False)[..., 0]
        return self.fc(x.reshape(x.size(0), -1))


class Activations(nn.Module):
    """Less common activations, reductions, instance norm, expand, gather, bicubic resize."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.InstanceNorm2d(8, affine=True)
        self.acts = nn.ModuleList([nn.Mish(), nn.SELU(), nn.Softplus(), nn.Softsign()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.c(x))
        x = sum(act(x) for act in self.acts) + torch.sin(x) * torch.cos(x) - torch.sign(x)
        x = torch.maximum(x, F.adaptive_max_pool2d(x, 1).expand_as(x) * 0.5)
        x = torch.minimum(x, x.amax((2, 3), keepdim=True) - x.amin((2, 3), keepdim=True))
        x = F.interpolate(x, scale_factor=1.5, mode="bicubic", align_corners=False)
        x = F.interpolate(x, size=(10, 10), mode="bilinear", align_corners=True)
        x = x[:, [0, 2, 4, 6]] + x[:, 1:2].exp()
        return torch.log_softmax(x.sum((2, 3)) / 100.0, 1)


SHAPE = (3, 16, 16)
USER_MODELS = {"vgg-view": VGGView, "se-gating": SENet, "depthwise-silu": DepthwiseSiLU,
               "resnext-groups": ResNeXtMini, "densenet-bc": DenseBC}
OPERATOR_MODELS = {"operators": Operators, "shapes": Shapes, "sequence": Sequence,
                   "activations": Activations}


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("onnx")


def exported(onnx_dir: Path, name: str) -> Path:
    """The ONNX file of ``name`` (a zoo architecture or a model above), exported once."""
    path = onnx_dir / f"{name}.onnx"
    if not path.exists():
        torch.manual_seed(0)
        if name in USER_MODELS or name in OPERATOR_MODELS:
            model, shape = {**USER_MODELS, **OPERATOR_MODELS}[name](), SHAPE
        else:
            model = build_model(ArchSpec(name, in_channels=3, num_classes=10, width=0.5))
            shape = SHAPE
        _randomize_bn(model)
        export_onnx(model.eval(), torch.randn(1, *shape), path)
    return path


def _randomize_bn(model: nn.Module) -> None:
    """Non-trivial running statistics, so a wrong BatchNorm mapping shows."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def runtime_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def max_diff(module: nn.Module, path: Path, batch: int = 3) -> float:
    shape = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    x = np.random.default_rng(0).standard_normal(
        (batch, *(d.dim_value for d in shape[1:]))).astype(np.float32)
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    return float(np.abs(got - runtime_outputs(path, x)).max())


# ---------------------------------------------------------------- converter equivalence
@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2", "densenet", *USER_MODELS,
                                  *OPERATOR_MODELS])
def test_converted_model_computes_what_onnx_runtime_computes(onnx_dir, name):
    module = onnx_to_torch(exported(onnx_dir, name))
    assert max_diff(module, exported(onnx_dir, name), batch=3) < 1e-4


def _w(*shape: int) -> np.ndarray:
    return np.random.default_rng(len(shape)).standard_normal(shape).astype(np.float32)


# Graphs as other tools write them: auto_pad, asymmetric pads, older opsets, attributes
# that torch.onnx does not emit.
HAND_WRITTEN = {
    "conv-same-upper": ([helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER",
                                          strides=[2, 2])], {"w": _w(4, 3, 3, 3)}, 17),
    "conv-asymmetric-pads": ([helper.make_node("Conv", ["x", "w"], ["y"], pads=[0, 1, 2, 1])],
                             {"w": _w(4, 3, 3, 3)}, 17),
    "maxpool-same-lower": ([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3],
                                             strides=[2, 2], auto_pad="SAME_LOWER")], {}, 17),
    "avgpool-include-pad": ([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3],
                                              pads=[1, 0, 1, 2], count_include_pad=1)], {}, 17),
    "pad-edge": ([helper.make_node("Pad", ["x", "p"], ["y"], mode="edge")],
                 {"p": np.array([0, 0, 1, 2, 0, 0, 3, 0], np.int64)}, 17),
    "upsample-opset9": ([helper.make_node("Upsample", ["x", "s"], ["y"])],
                        {"s": np.array([1, 1, 2, 3], np.float32)}, 9),
    "resize-sizes-asymmetric": ([helper.make_node(
        "Resize", ["x", "", "", "sz"], ["y"], mode="nearest", nearest_mode="floor",
        coordinate_transformation_mode="asymmetric")],
        {"sz": np.array([1, 3, 5, 13], np.int64)}, 13),
    "softmax-opset11-axis1": ([helper.make_node("Softmax", ["x"], ["y"], axis=1)], {}, 11),
    "gemm-transposed": ([helper.make_node("Flatten", ["x"], ["f"]),
                         helper.make_node("Gemm", ["f", "b", "c"], ["y"], transB=0, alpha=0.5,
                                          beta=2.0)],
                        {"b": _w(192, 7), "c": _w(7)}, 17),
    "clip-opset6": ([helper.make_node("Clip", ["x"], ["y"], min=-0.5, max=0.5)], {}, 6),
    "transpose-nhwc": ([helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
                        helper.make_node("MatMul", ["t", "m"], ["u"]),
                        helper.make_node("Add", ["u", "bias"], ["y"])],
                       {"m": _w(3, 5), "bias": _w(5)}, 17),
}


@pytest.mark.parametrize("name", HAND_WRITTEN)
def test_hand_written_graph_converts(tmp_path, name):
    nodes, inits, opset = HAND_WRITTEN[name]
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    model = onnx.shape_inference.infer_shapes(model)  # the output's type, as tools write it
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    assert max_diff(onnx_to_torch(path), path, batch=1) < 1e-4


def test_weights_live_in_named_torch_modules(onnx_dir):
    module = onnx_to_torch(exported(onnx_dir, "vgg-view"))
    names = dict(module.named_modules())
    assert isinstance(names["features.0.0"], nn.Conv2d)
    assert isinstance(names["classifier.0"], nn.Linear)
    assert module.meta["onnx_nodes"]["classifier.0"] == "/classifier/classifier.0/Gemm"
    # x.view(x.size(0), -1) became a flatten that survives channel pruning
    assert "torch.flatten(" in module.code and "reshape" not in module.code
    dense = dict(onnx_to_torch(exported(onnx_dir, "densenet-bc")).named_modules())
    assert isinstance(dense["net.1.bottleneck.0"], nn.BatchNorm2d)
    assert dense["net.1.bottleneck.0"].running_var.min() >= 0.5


@pytest.mark.parametrize("name,module_name", [("vgg-view", "features.0.0"),
                                              ("densenet-bc", "net.1.bottleneck.2")])
def test_dynamo_exported_model_converts(tmp_path, capsys, name, module_name):
    """torch.onnx's default (dynamo) exporter names nodes differently and folds otherwise."""
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(USER_MODELS[name]().eval(), (torch.randn(1, *SHAPE),), str(path),
                      dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},))
    module = onnx_to_torch(path)
    assert max_diff(module, path, batch=3) < 1e-4
    assert isinstance(dict(module.named_modules())[module_name], nn.Conv2d)


def test_static_batch_reshape_becomes_flatten(tmp_path):
    path = tmp_path / "static.onnx"
    torch.onnx.export(VGGView().eval(), (torch.randn(1, *SHAPE),), str(path), dynamo=False,
                      input_names=["input"])
    module = onnx_to_torch(path)
    assert "torch.flatten(" in module.code and "reshape" not in module.code
    assert max_diff(module, path, batch=1) < 1e-4


@pytest.mark.parametrize("name", [*USER_MODELS, "resnet18"])
def test_pruning_runs_on_converted_model_and_it_re_exports(onnx_dir, tmp_path, name):
    import torch_pruning as tp

    module = onnx_to_torch(exported(onnx_dir, name))
    shape = SHAPE
    example = torch.randn(1, *shape)
    head = [m for m in module.modules() if isinstance(m, nn.Linear)][-1]
    before = sum(p.numel() for p in module.parameters())
    pruner = tp.pruner.MagnitudePruner(
        module, (example,), importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=0.3, ignored_layers=[head])
    pruner.step()
    after = sum(p.numel() for p in module.parameters())
    assert after < 0.75 * before
    assert module(torch.randn(2, *shape)).shape == (2, 10)
    path = export_onnx(module, example, tmp_path / "pruned.onnx")
    assert max_diff(module, path, batch=2) < 1e-4


# ---------------------------------------------------------------- ONNX source
def test_onnx_source_loads_a_converted_module(onnx_dir):
    m = load(str(exported(onnx_dir, "se-gating")))
    assert isinstance(m, LoadedModel) and m.kind == "onnx" and m.name == "se-gating"
    assert m.module is not None and m.skipped == []
    assert m.input_shape == SHAPE and m.num_outputs == 10
    assert m.onnx_path == exported(onnx_dir, "se-gating")
    assert m.origin == {"kind": "onnx", "file": str(m.onnx_path), "converted": True}


def _graph_model(nodes, inits, in_shape=("N", 3, 8, 8), out_shape=("N", 4),
                 opsets=(("", 17),)) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = 8
    return model


def _conv_then(node: onnx.NodeProto, extra_opsets=()) -> onnx.ModelProto:
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    conv = helper.make_node("Conv", ["x", "w"], ["c"], name="stem/conv", pads=[1, 1, 1, 1])
    return _graph_model([conv, node], {"w": w}, opsets=(("", 17), *extra_opsets))


@pytest.mark.parametrize("node,opsets,op", [
    (helper.make_node("Einsum", ["c"], ["y"], name="head/einsum", equation="nchw->nc"), (),
     "Einsum"),
    (helper.make_node("Pool", ["c"], ["y"], name="head/custom", domain="com.example"),
     (("com.example", 1),), "com.example.Pool"),
], ids=["einsum", "custom-domain"])
def test_unsupported_operator_loads_graph_only_with_op_and_node_named(
        tmp_path, node, opsets, op):
    path = tmp_path / "m.onnx"
    onnx.save(_conv_then(node, opsets), str(path))
    with pytest.raises(UnsupportedOperatorError) as e:
        onnx_to_torch(path)
    assert (e.value.op, e.value.node) == (op, node.name)
    m = load(str(path))
    assert m.module is None and m.onnx_path == path and m.input_shape == (3, 8, 8)
    assert m.origin["converted"] is False
    reason = f"operator {op} is not convertible to PyTorch"
    assert m.skipped == [{"stage": "prune", "reason": reason, "op": op, "node": node.name},
                         {"stage": "distill", "reason": reason, "op": op, "node": node.name}]


def test_conversion_that_differs_from_onnx_runtime_is_not_used(onnx_dir, monkeypatch):
    monkeypatch.setitem(OPS, "Relu", lambda b, n: b.call(torch.sigmoid, n.inputs[0]))
    m = load(str(exported(onnx_dir, "vgg-view")))
    assert m.module is None
    assert "differs from ONNX Runtime" in m.skipped[0]["reason"]


def _with_external_data(tmp_path: Path, location: str) -> Path:
    path = tmp_path / "ext.onnx"
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    model = _graph_model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                          helper.make_node("GlobalAveragePool", ["c"], ["p"]),
                          helper.make_node("Flatten", ["p"], ["y"])], {"w": w})
    onnx.save(model, str(path), save_as_external_data=True, location="w.bin",
              size_threshold=0)
    if location != "w.bin":
        model = onnx.load(str(path), load_external_data=False)
        for entry in model.graph.initializer[0].external_data:
            if entry.key == "location":
                entry.value = location
        onnx.save(model, str(path))
    return path


def test_external_data_beside_the_model_loads(tmp_path):
    m = load(str(_with_external_data(tmp_path, "w.bin")))
    assert m.module is not None and m.num_outputs == 4


@pytest.mark.parametrize("location", ["../w.bin", "/etc/passwd", "sub/../../w.bin"],
                         ids=["parent", "absolute", "climbs-out"])
def test_external_data_outside_the_directory_is_refused(tmp_path, location):
    path = _with_external_data(tmp_path, location)
    with pytest.raises(InputFileError, match="outside the model's directory"):
        load(str(path))


def test_external_data_through_a_symlink_out_of_the_directory_is_refused(tmp_path):
    path = _with_external_data(tmp_path, "w.bin")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.bin"
    (tmp_path / "w.bin").rename(outside)
    (tmp_path / "w.bin").symlink_to(outside)
    with pytest.raises(InputFileError, match="outside the model's directory"):
        load(str(path))


@pytest.mark.parametrize("content", [b"this is not a model", b"\x08\x07\x12\x02hi\x3a\xff"],
                         ids=["text", "truncated"])
def test_broken_onnx_file_is_one_clear_error(tmp_path, content):
    path = tmp_path / "broken.onnx"
    path.write_bytes(content)
    with pytest.raises(InputFileError, match="broken.onnx is not a"):
        load(str(path))


def test_invalid_graph_is_one_clear_error(tmp_path):
    path = tmp_path / "invalid.onnx"
    node = helper.make_node("Relu", ["nowhere"], ["y"])
    onnx.save(_graph_model([node], {}), str(path))
    with pytest.raises(InputFileError, match="is not a valid ONNX model"):
        load(str(path))


def test_truncated_real_model_is_one_clear_error(onnx_dir, tmp_path):
    data = exported(onnx_dir, "vgg-view").read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputFileError):
        load(str(path))


def test_dynamic_spatial_size_needs_the_input_shape(tmp_path):
    path = tmp_path / "dyn.onnx"
    node = helper.make_node("GlobalAveragePool", ["c"], ["p"])
    model = _conv_then(node)
    model.graph.node.append(helper.make_node("Flatten", ["p"], ["y"]))
    model.graph.node[1].output[0] = "p"
    for i, d in enumerate(("N", 3, "H", "W")):
        dim = model.graph.input[0].type.tensor_type.shape.dim[i]
        dim.dim_param = d if isinstance(d, str) else ""
        if isinstance(d, int):
            dim.dim_value = d
    onnx.save(model, str(path))
    with pytest.raises(ModelSourceError, match="dynamic dimension 2"):
        load(str(path))
    assert load(str(path), input_shape=(3, 12, 12)).input_shape == (3, 12, 12)
    with pytest.raises(ModelSourceError, match="dimension 1 = 3"):
        load(str(path), input_shape=(1, 12, 12))


def test_onnx_takes_no_weights_file(onnx_dir, tmp_path):
    with pytest.raises(ModelSourceError, match="carries its own weights"):
        load(str(exported(onnx_dir, "vgg-view")), weights=tmp_path / "w.safetensors")


def test_nothing_in_an_onnx_file_is_executed(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"x); __import__('os').system('touch {marker}') #"
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", payload + "w"], [payload + "c"], name=payload,
                              pads=[1, 1, 1, 1]),
             helper.make_node("Relu", [payload + "c"], ["r"], name="import os\nos.system"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="__class__"),
             helper.make_node("Flatten", ["p"], ["y"], name="forward")]
    graph = _graph_model(nodes, {payload + "w": w})
    graph.graph.input[0].name = "x"
    path = tmp_path / "names.onnx"
    onnx.save(graph, str(path))
    m = load(str(path))
    assert m.module is not None
    m.module(torch.randn(2, 3, 8, 8))
    code = m.module.code
    assert "__import__" not in code and "os.system" not in code and "touch " not in code
    assert all(re.fullmatch(r"[A-Za-z0-9_.]*", name) for name, _ in m.module.named_modules())
    assert not marker.exists()
    # an operator meant to run Python code is just an unknown operator
    py = helper.make_node("PyOp", ["c"], ["y"], name="py", domain="ai.onnx.contrib",
                          code=f"import os; os.system('touch {marker}')")
    onnx.save(_conv_then(py, (("ai.onnx.contrib", 1),)), str(path))
    m = load(str(path))
    assert m.module is None and m.skipped[0]["op"] == "ai.onnx.contrib.PyOp"
    assert not marker.exists()


# ---------------------------------------------------------------- built-in architectures
def test_zoo_name_builds_the_architecture():
    m = load("mobilenetv2", num_classes=7, in_channels=3, width=0.5)
    assert m.kind == "zoo" and m.spec == ArchSpec("mobilenetv2", 3, 7, "small", 0.5)
    assert m.input_shape == (3, 28, 28) and m.num_outputs == 7
    assert m.module(torch.randn(2, 3, 28, 28)).shape == (2, 7)
    assert m.origin["arch"] == "mobilenetv2" and m.origin["weights"] is None


def test_zoo_weights_carry_the_architecture(tmp_path):
    spec = ArchSpec("resnet18", 1, 10, "small", 0.5)
    model = build_model(spec)
    path = tmp_path / "r.safetensors"
    save_weights(model, path, spec)
    for m in (load(str(path)), load("resnet18", weights=path)):
        assert m.spec == spec and m.origin["weights"] == str(path)
        assert torch.equal(m.module.fc.weight, model.fc.weight)
    with pytest.raises(WeightsMismatchError, match="holds weights for resnet18, not densenet"):
        load("densenet", weights=path)
    with pytest.raises(WeightsMismatchError, match=r"fc.weight: file \(10, 256\)"):
        load(str(path), num_classes=12)
    with pytest.raises(ModelSourceError, match="takes 1 input channels"):
        load(str(path), input_shape=(3, 28, 28))


# ---------------------------------------------------------------- factories
FACTORIES = '''
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, width=8, classes=5):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))

def build(width=8, classes=5):
    return Net(width, classes)

def fails(width=8):
    raise ValueError("width must be even")

def wrong():
    return {"not": "a module"}

value = 42
'''


@pytest.fixture(scope="module")
def factory_files(tmp_path_factory) -> tuple[str, Path]:
    """User modules in a directory that is only reachable as the current directory."""
    name = f"user_models_{uuid.uuid4().hex[:8]}"
    root = tmp_path_factory.mktemp("factory")
    (root / f"{name}.py").write_text(FACTORIES)
    (root / f"{name}_broken.py").write_text("raise RuntimeError('needs a GPU')\n")
    (root / f"{name}_marker.py").write_text(
        f"open({str(root / 'imported')!r}, 'w').close()\nimport torch\n"
        "def build():\n    return torch.nn.Identity()\n")
    return name, root


@pytest.fixture
def factory_module(factory_files) -> str:
    return factory_files[0]


@pytest.fixture
def in_factory_dir(factory_files, monkeypatch) -> Path:
    monkeypatch.chdir(factory_files[1])
    return factory_files[1]


def test_factory_builds_with_arguments_and_weights(factory_module, in_factory_dir, tmp_path):
    from safetensors.torch import save_file

    ref = f"{factory_module}:build"
    m = load(ref, model_args={"width": 4, "classes": 3}, input_shape=(3, 8, 8))
    assert m.kind == "factory" and m.num_outputs == 3 and m.input_shape == (3, 8, 8)
    assert m.origin == {"kind": "factory", "factory": ref, "args": {"width": 4, "classes": 3},
                        "weights": None}
    state = {k: torch.randn_like(v) for k, v in m.module.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    m2 = load(ref, model_args={"width": 4, "classes": 3}, input_shape=(3, 8, 8),
              weights=tmp_path / "w.safetensors")
    assert torch.equal(m2.module.conv.weight, state["conv.weight"])
    assert m2.origin["weights"] == str(tmp_path / "w.safetensors")


@pytest.mark.parametrize("suffix,args,message", [
    ("_missing:build", None, "no module named"),
    ("_broken:build", None, "importing .* failed: RuntimeError: needs a GPU"),
    (":nothing", None, "has no attribute 'nothing'"),
    (":value", None, "value is a int, not callable"),
    (":fails", None, "raised ValueError: width must be even"),
    (":build", {"depth": 3}, "raised TypeError: .*unexpected keyword argument 'depth'"),
    (":wrong", None, "returned a dict, not a torch.nn.Module"),
    (":build", {"width": 4}, None),
], ids=["no-module", "import-fails", "no-attribute", "not-callable", "raises",
        "bad-argument", "wrong-return", "runs"])
def test_factory_errors_are_one_clear_error(factory_module, in_factory_dir, suffix, args,
                                            message):
    ref = factory_module + suffix
    if message is None:
        assert load(ref, model_args=args, input_shape=(3, 8, 8)).module is not None
        return
    with pytest.raises(ModelSourceError, match=message) as e:
        load(ref, model_args=args, input_shape=(3, 8, 8))
    assert e.value.__traceback__ is not None and "Traceback" not in str(e.value)


def test_factory_weights_that_do_not_fit_name_the_keys(factory_module, in_factory_dir,
                                                       tmp_path):
    from safetensors.torch import save_file

    save_file({"conv.weight": torch.zeros(8, 3, 3, 3), "extra.bias": torch.zeros(2)},
              str(tmp_path / "w.safetensors"))
    with pytest.raises(WeightsMismatchError) as e:
        load(f"{factory_module}:build", input_shape=(3, 8, 8),
             weights=tmp_path / "w.safetensors")
    text = str(e.value)
    assert "missing keys: conv.bias, fc.bias, fc.weight" in text
    assert "unexpected keys: extra.bias" in text and "check the factory" in text


def test_factory_needs_input_shape_and_a_model_that_runs_on_it(factory_module, in_factory_dir):
    with pytest.raises(ModelSourceError, match="needs its input shape"):
        load(f"{factory_module}:build")
    with pytest.raises(ModelSourceError, match=r"does not run on an input of shape \(1, 5"):
        load(f"{factory_module}:build", input_shape=(5, 8, 8))


def test_allow_keeps_user_code_from_being_imported(factory_module, in_factory_dir):
    with pytest.raises(ModelSourceError, match="not accepted here"):
        load(f"{factory_module}_marker:build", input_shape=(3, 8, 8), allow=("zoo", "onnx"))
    assert not (in_factory_dir / "imported").exists()


# ---------------------------------------------------------------- registry
def test_a_new_source_is_one_registration(monkeypatch):
    def loader(ref, opts):
        return LoadedModel(name=ref, kind="memory", module=nn.Identity(),
                           input_shape=opts.input_shape)

    monkeypatch.setitem(sources_base._SOURCES, "memory",
                        (lambda ref: ref.startswith("mem:"), loader))
    m = load("mem:net", input_shape=(1, 4, 4))  # a factory's form: the new source wins
    assert (m.kind, m.name, m.input_shape) == ("memory", "mem:net", (1, 4, 4))


def test_unknown_reference_is_one_clear_error():
    with pytest.raises(ModelSourceError, match="not a model") as e:
        load("no-such-thing")
    assert isinstance(e.value, HadmcError)
