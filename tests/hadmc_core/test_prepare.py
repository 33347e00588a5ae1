"""hadmc_core.prepare: what a model reference leaves open is taken from the dataset or the
weights, then the dataset is fitted to the model."""

from __future__ import annotations

import pytest
from safetensors.torch import save_file

from hadmc_core.errors import ConfigError, HadmcError
from hadmc_core.models import ArchSpec, build_model, save_weights
from hadmc_core.prepare import load_for, parse_model_args, parse_shape, prepare
from tests.hadmc_core.factory_models import small_cnn

FACTORY = "tests.hadmc_core.factory_models:small_cnn"


def test_built_in_name_alone_is_built_for_the_dataset(digits):
    loaded = load_for("densenet", digits, width=0.25)
    assert loaded.kind == "zoo" and loaded.input_shape == (1, 8, 8)
    assert (loaded.spec.in_channels, loaded.spec.num_classes, loaded.spec.width) == (1, 10, 0.25)


def test_built_in_weights_keep_their_architecture_and_the_images_follow(digits, tmp_path):
    spec = ArchSpec("densenet", 3, 10, "small", 0.25)
    weights = tmp_path / "rgb.safetensors"
    save_weights(build_model(spec), weights, spec)
    loaded, data, note = prepare(str(weights), digits)
    assert loaded.spec == spec and loaded.input_shape == (3, 8, 8)
    assert data.train.x.shape[1:] == (3, 8, 8)
    assert note == ("dataset images 1x8x8 replicated to 3 channels to fit the model's input "
                    "3x8x8")


def test_weights_without_metadata_are_built_for_the_dataset(digits, tmp_path):
    weights = tmp_path / "plain.safetensors"
    save_file(dict(build_model(ArchSpec("densenet", 1, 10, "small", 0.25)).state_dict()),
              str(weights))
    loaded = load_for("densenet", digits, weights=weights, width=0.25)
    assert loaded.spec == ArchSpec("densenet", 1, 10, "small", 0.25)


def test_factory_input_shape_from_the_weights_metadata(digits, tmp_path):
    weights = tmp_path / "f.safetensors"
    save_file(dict(small_cnn(3).state_dict()), str(weights), metadata={"input_shape": "3x16x16"})
    loaded, data, note = prepare(FACTORY, digits, weights=weights, model_args={"channels": 3})
    assert loaded.input_shape == (3, 16, 16) and data.val.x.shape[1:] == (3, 16, 16)
    assert note is not None and "resized to 1x16x16 and replicated to 3 channels" in note


def test_factory_metadata_that_is_not_a_shape_is_refused(digits, tmp_path):
    weights = tmp_path / "f.safetensors"
    save_file(dict(small_cnn().state_dict()), str(weights), metadata={"input_shape": "big"})
    with pytest.raises(ConfigError, match="input shape in the metadata of .* 'big' is not"):
        load_for(FACTORY, digits, weights=weights)


def test_model_output_that_does_not_fit_is_refused_before_fitting_images(digits):
    with pytest.raises(HadmcError, match="labels go up to 9 but the model has 4 classes"):
        prepare(FACTORY, digits, model_args={"classes": 4, "channels": 3},
                input_shape=(3, 8, 8))


@pytest.mark.parametrize("text,shape", [("3,32,32", (3, 32, 32)), ("3x32x32", (3, 32, 32)),
                                        ("[1, 8, 8]", (1, 8, 8)), (" 1,28,28 ", (1, 28, 28))])
def test_shapes_parse(text, shape):
    assert parse_shape(text) == shape


@pytest.mark.parametrize("text", ["3,32", "3,32,32,1", "0,8,8", "-1,8,8", "a,b,c", ""])
def test_bad_shapes_are_refused(text):
    with pytest.raises(ConfigError, match="is not C,H,W"):
        parse_shape(text)


def test_model_args_are_a_json_object():
    assert parse_model_args('{"width": 2}') == {"width": 2}
    assert parse_model_args(None) is None
    with pytest.raises(ConfigError, match="must be a JSON object"):
        parse_model_args('"width"')
