"""Model zoo (no torchvision here) and safetensors weight loading."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from hadmc_core.errors import InputFileError, UnknownNameError, WeightsMismatchError
from hadmc_core.fsutil import atomic_path
from hadmc_core.models.densenet import DenseNet
from hadmc_core.models.mobilenetv2 import MobileNetV2
from hadmc_core.models.resnet import ResNet18
from hadmc_core.models.yolo import yolo_n, yolo_s

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": ResNet18,
    "mobilenetv2": MobileNetV2,
    "densenet": DenseNet,
    "yolo-n": yolo_n,   # detectors (task "detect", hadmc_core.models.yolo)
    "yolo-s": yolo_s,
}


@dataclass(frozen=True)
class ArchSpec:
    """Everything needed to rebuild an architecture (stored next to weights)."""

    arch: str
    in_channels: int = 1
    num_classes: int = 10
    stem: str = "small"
    width: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


def build_model(spec: ArchSpec) -> nn.Module:
    if spec.arch not in ARCHITECTURES:
        raise UnknownNameError("architecture", spec.arch, list(ARCHITECTURES))
    return ARCHITECTURES[spec.arch](
        in_channels=spec.in_channels, num_classes=spec.num_classes, stem=spec.stem,
        width=spec.width,
    )


def save_weights(model: nn.Module, path: Path, spec: ArchSpec | None = None) -> None:
    """Write the state dict as safetensors (never pickle), atomically."""
    from safetensors.torch import save_file

    meta = {k: str(v) for k, v in (spec.to_dict() if spec else {}).items()}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(Path(path)) as tmp:
        save_file(state, str(tmp), metadata=meta)


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise InputFileError(
            f"{path} is not a readable safetensors file ({e}); re-export it with "
            "safetensors.torch.save_file"
        ) from e


def spec_from_metadata(meta: dict[str, str]) -> ArchSpec | None:
    if "arch" not in meta:
        return None
    return ArchSpec(arch=meta["arch"], in_channels=int(meta["in_channels"]),
                    num_classes=int(meta["num_classes"]), stem=meta["stem"],
                    width=float(meta["width"]))


ZOO_HINT = "check --arch, --stem, --width, --in-channels and --num-classes"


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], hint: str = ZOO_HINT) -> None:
    """Load strictly; on mismatch list the offending keys and shapes, then ``hint``."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state) if state[k].shape != own[k].shape
    )
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("shape mismatch: " + "; ".join(wrong[:10]))
        if missing:
            parts.append("missing keys: " + ", ".join(missing[:10]))
        if unexpected:
            parts.append("unexpected keys: " + ", ".join(unexpected[:10]))
        more = len(wrong) + len(missing) + len(unexpected) - sum(
            min(10, len(x)) for x in (wrong, missing, unexpected))
        tail = f" (+{more} more)" if more > 0 else ""
        raise WeightsMismatchError(
            "weights do not fit the architecture: " + " | ".join(parts) + tail
            + "; " + hint
        )
    model.load_state_dict(state)


def load_model(path: Path, spec: ArchSpec | None = None) -> tuple[nn.Module, ArchSpec]:
    """Build the architecture (from ``spec`` or the file's metadata) and load weights."""
    state, meta = read_weights(path)
    spec = spec or spec_from_metadata(meta)
    if spec is None:
        raise WeightsMismatchError(
            f"{path} carries no architecture metadata; pass --arch (and its options)")
    model = build_model(spec)
    load_weights(model, state)
    return model, spec
