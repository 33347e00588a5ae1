"""Dataset images fitted to a model's input: padding, bilinear resizing, channel changes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hadmc_core.data import DataSplits, Split, adapt
from hadmc_core.data.adapt import LUMA
from hadmc_core.errors import DatasetError, DatasetTooLargeError


def splits(c: int, h: int, w: int, n: int = 30, seed: int = 0) -> DataSplits:
    rng = np.random.default_rng(seed)

    def part(k: int) -> Split:
        return Split(rng.standard_normal((k, c, h, w)).astype(np.float32),
                     rng.integers(0, 5, k).astype(np.int64))

    return DataSplits("synthetic", part(n), part(n // 3), part(n // 3), 5)


def test_images_that_fit_are_returned_as_they_are():
    data = splits(1, 8, 8)
    same, line = adapt.adapt(data, (1, 8, 8))
    assert same is data and line is None


def test_28_into_32_is_padded_and_grey_replicated_to_3_channels():
    data = splits(1, 28, 28)
    out, line = adapt.adapt(data, (3, 32, 32))
    assert line == ("dataset images 1x28x28 padded to 1x32x32 and replicated to 3 channels "
                    "to fit the model's input 3x32x32")
    x, src = out.train.x, data.train.x
    assert x.shape == (30, 3, 32, 32) and x.dtype == np.float32
    np.testing.assert_array_equal(x[:, 0, 2:30, 2:30], src[:, 0])
    np.testing.assert_array_equal(x[:, 1], x[:, 0])
    np.testing.assert_array_equal(x[:, 2], x[:, 0])
    # the border repeats the image's edge pixels
    np.testing.assert_array_equal(x[:, 0, 0, 2:30], src[:, 0, 0])
    np.testing.assert_array_equal(x[:, 0, 31, 2:30], src[:, 0, 27])
    assert x[:, 0, 0, 0].tolist() == src[:, 0, 0, 0].tolist()
    np.testing.assert_array_equal(out.val.y, data.val.y)
    assert out.num_classes == 5 and out.name == "synthetic" and len(out.test) == len(data.test)
    assert out.adaptation == {"from": [1, 28, 28], "to": [3, 32, 32],
                              "steps": ["padded to 1x32x32", "replicated to 3 channels"],
                              "restandardized": False, "message": line}
    assert data.adaptation is None


@pytest.mark.parametrize("side,target,how", [
    (8, 10, "padded"), (8, 11, "resized"), (28, 32, "padded"), (28, 36, "resized"),
    (32, 28, "resized")], ids=["8-10", "8-11", "28-32", "28-36", "32-28"])
def test_padding_up_to_a_quarter_per_side_then_resizing(side, target, how):
    _out, line = adapt.adapt(splits(1, side, side), (1, target, target))
    assert f"{how} to 1x{target}x{target}" in line


@pytest.mark.parametrize("hw,target", [((8, 8), (20, 20)), ((8, 12), (24, 13)),
                                       ((32, 32), (16, 16)), ((30, 20), (7, 11))],
                         ids=["up", "up-uneven", "down-by-2", "down-odd"])
def test_resizing_is_bilinear_as_torch_computes_it(hw, target):
    data = splits(1, *hw)
    out, line = adapt.adapt(data, (1, *target))
    assert f"resized to 1x{target[0]}x{target[1]}" in line
    want = F.interpolate(torch.from_numpy(data.train.x), size=target, mode="bilinear",
                         align_corners=False, antialias=target[0] < hw[0])
    np.testing.assert_allclose(out.train.x, want.numpy(), atol=1e-5)


def test_growing_one_axis_and_shrinking_the_other_matches_torch_axis_by_axis():
    data = splits(1, 8, 12)
    out, _ = adapt.adapt(data, (1, 24, 9))
    x = torch.from_numpy(data.train.x)
    rows = F.interpolate(x, size=(24, 12), mode="bilinear", align_corners=False)
    both = F.interpolate(rows, size=(24, 9), mode="bilinear", align_corners=False,
                         antialias=True)
    np.testing.assert_allclose(out.train.x, both.numpy(), atol=1e-5)


def test_rgb_to_grey_is_luminance_standardized_on_the_training_split():
    data = splits(3, 8, 8)
    out, line = adapt.adapt(data, (1, 8, 8))
    assert line == ("dataset images 3x8x8 converted to 1 channel by luminance to fit the "
                    "model's input 1x8x8")
    luma = np.einsum("nchw,c->nhw", data.train.x, LUMA)
    got = out.train.x[:, 0]
    assert abs(float(got.mean())) < 1e-4 and abs(float(got.std()) - 1.0) < 1e-3
    scale = float(got.std() / luma.std())
    np.testing.assert_allclose(got, (luma - luma.mean()) * scale, atol=1e-4)
    # validation and test use the training split's statistics, not their own
    vluma = np.einsum("nchw,c->nhw", data.val.x, LUMA)
    np.testing.assert_allclose(out.val.x[:, 0], (vluma - luma.mean()) * scale, atol=1e-4)


def test_rgb_shrunk_and_made_grey_says_both_in_order():
    _out, line = adapt.adapt(splits(3, 40, 40), (1, 20, 20))
    assert line == ("dataset images 3x40x40 converted to 1 channel by luminance and resized "
                    "to 1x20x20 to fit the model's input 1x20x20")


def test_four_channels_lose_alpha():
    data = splits(4, 8, 8)
    rgb, line = adapt.adapt(data, (3, 8, 8))
    assert "stripped of their fourth (alpha) channel" in line
    np.testing.assert_array_equal(rgb.train.x, data.train.x[:, :3])
    grey, line = adapt.adapt(data, (1, 8, 8))
    assert grey.train.x.shape == (30, 1, 8, 8) and "luminance" in line and "alpha" in line


@pytest.mark.parametrize("have,want", [(1, 2), (3, 4), (2, 3), (3, 2), (1, 4)],
                         ids=["1-2", "3-4", "2-3", "3-2", "1-4"])
def test_channel_changes_without_a_meaning_are_refused(have, want):
    with pytest.raises(DatasetError, match=f"have {have} channel.*takes {want}"):
        adapt.adapt(splits(have, 8, 8), (want, 8, 8))


@pytest.mark.parametrize("shape", [(64,), (1, 8), (1, 8, 8, 8), (1, 0, 8)],
                         ids=["flat", "rank-2", "rank-4", "zero-side"])
def test_a_model_input_that_is_not_an_image_is_refused(shape):
    with pytest.raises(DatasetError, match="channels, height, width"):
        adapt.adapt(splits(1, 8, 8), shape)


def test_an_adapted_dataset_over_the_memory_limit_is_refused():
    with pytest.raises(DatasetTooLargeError, match="over the limit") as e:
        adapt.adapt(splits(1, 8, 8), (3, 224, 224), max_bytes=1 << 20)
    assert e.value.limit == "bytes"


def test_chunks_give_the_same_result_as_one_pass(monkeypatch):
    data = splits(1, 9, 9, n=50)
    whole, _ = adapt.adapt(data, (3, 20, 20))
    monkeypatch.setattr(adapt, "CHUNK", 7)
    parts, _ = adapt.adapt(data, (3, 20, 20))
    np.testing.assert_array_equal(whole.train.x, parts.train.x)


def test_digits_fit_a_32x32_rgb_input(digits):
    out, line = adapt.adapt(digits, (3, 32, 32))
    assert out.train.x.shape[1:] == (3, 32, 32) and "resized to 1x32x32" in line
    assert np.isfinite(out.train.x).all()
