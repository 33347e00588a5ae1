from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits():
    from hadmc_core.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def trained_digits_resnet(digits, tmp_path_factory):
    """A small resnet18 trained on digits for a few epochs (seconds), saved to disk."""
    from hadmc_core.models import ArchSpec, build_model, save_weights
    from hadmc_core.train import TrainConfig, fit

    spec = ArchSpec("resnet18", 1, 10, "small", width=0.5)
    model = build_model(spec)
    fit(model, digits.train, TrainConfig(epochs=8, batch_size=64, lr=0.05))
    path = tmp_path_factory.mktemp("weights") / "resnet18-digits.safetensors"
    save_weights(model, path, spec)
    return model, spec, path
