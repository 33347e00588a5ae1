import pytest
import torch

from hadmc_core.errors import InputFileError, UnknownNameError, WeightsMismatchError
from hadmc_core.models import ARCHITECTURES, ArchSpec, build_model, load_model, save_weights


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("stem,size", [("small", 28), ("imagenet", 64)])
def test_forward_shapes(arch, stem, size):
    model = build_model(ArchSpec(arch, in_channels=3, num_classes=7, stem=stem)).eval()
    out = model(torch.randn(2, 3, size, size))
    if arch.startswith("yolo"):
        # A detector predicts at strides 8, 16 and 32: one row of 4 box + 7 class values
        # per cell of each level.
        cells = sum((-(-size // s)) ** 2 for s in (8, 16, 32))
        assert out.shape == (2, cells, 4 + 7)
    else:
        assert out.shape == (2, 7)


def test_resnet18_has_imagenet_parameter_count():
    model = build_model(ArchSpec("resnet18", 3, 1000, "imagenet"))
    assert sum(p.numel() for p in model.parameters()) == 11_689_512  # as torchvision's


def test_safetensors_round_trip_keeps_arch(tmp_path):
    spec = ArchSpec("mobilenetv2", 1, 10, "small", 0.5)
    model = build_model(spec)
    save_weights(model, tmp_path / "m.safetensors", spec)
    loaded, spec2 = load_model(tmp_path / "m.safetensors")
    assert spec2 == spec
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_mismatch_lists_keys_and_shapes(tmp_path):
    spec = ArchSpec("resnet18", 1, 10, "small")
    save_weights(build_model(spec), tmp_path / "r.safetensors", spec)
    with pytest.raises(WeightsMismatchError) as e:
        load_model(tmp_path / "r.safetensors", ArchSpec("resnet18", 1, 12, "small"))
    assert "fc.weight: file (10, 512) vs model (12, 512)" in str(e.value)
    with pytest.raises(WeightsMismatchError) as e:
        load_model(tmp_path / "r.safetensors", ArchSpec("densenet", 1, 10, "small"))
    assert "missing keys" in str(e.value) and "unexpected keys" in str(e.value)


def test_truncated_file_is_a_clear_error(tmp_path):
    spec = ArchSpec("densenet", 1, 10, "small", 0.5)
    path = tmp_path / "d.safetensors"
    save_weights(build_model(spec), path, spec)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(InputFileError, match="not a readable safetensors"):
        load_model(path)


def test_unknown_arch_lists_valid_names():
    with pytest.raises(UnknownNameError, match="densenet, mobilenetv2, resnet18"):
        build_model(ArchSpec("vgg", 1, 10))
