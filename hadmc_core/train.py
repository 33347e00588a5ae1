"""Baseline training and evaluation (used by ``hadmc train`` and the recovery stages)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hadmc_core.data import DataSplits, Split
from hadmc_core.progress import ProgressFn, no_progress
from hadmc_core.tasks.classification import (  # noqa: F401  (re-exported for hadmc train)
    NEAR_CHANCE_POINTS,
    chance_accuracy,
    near_chance,
)

log = logging.getLogger(__name__)


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


#: CPU flags of native bfloat16 arithmetic (x86 AVX-512 BF16 / AMX, ARMv8.6 BF16).
BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}


def use_bf16(requested: str, device: torch.device | str) -> bool:
    """Whether to train/infer under bfloat16 autocast. ``auto``: where the hardware has
    native bfloat16 (there it is about twice as fast; elsewhere it would be emulated)."""
    if isinstance(device, str):
        device = pick_device(device)
    if requested != "auto":
        return requested == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    from hadmc_core.hal.latency import cpu_flags

    return bool(BF16_FLAGS & cpu_flags())


def batches(split: Split, batch_size: int, shuffle: bool, seed: int = 0,
            limit: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    n = len(split)
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    if limit is not None:
        order = order[:limit]
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        yield torch.from_numpy(split.x[idx]), torch.from_numpy(split.y[idx])


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 512,
             device: torch.device | None = None) -> float:
    """Top-1 accuracy in percent."""
    device = device or next(model.parameters()).device
    model.eval()
    correct = 0
    for x, y in batches(split, batch_size, shuffle=False):
        correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
    return 100.0 * correct / max(1, len(split))


#: ``hadmc train``'s default length: enough epochs for at least this many optimizer steps
#: (one epoch at least). Fashion-MNIST (430 steps an epoch at batch 128) trains one epoch;
#: digits (10 steps an epoch) ten, to about 98 % top-1 (docs/data.md).
MIN_DEFAULT_STEPS = 100


def default_epochs(num_samples: int, batch_size: int,
                   min_steps: int = MIN_DEFAULT_STEPS) -> int:
    """Whole epochs that give at least ``min_steps`` optimizer steps (one at least)."""
    per_epoch = max(1, math.ceil(num_samples / batch_size))
    return max(1, math.ceil(min_steps / per_epoch))


@dataclass
class TrainConfig:
    epochs: float = 1.0
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "auto"
    bf16: bool = False          # bfloat16 autocast (weights and optimizer stay FP32)
    #: learning-rate schedule: onecycle (warm-up 15 %, then cosine annealing), cosine
    #: (annealing from lr, no warm-up) or constant
    schedule: str = "onecycle"


SCHEDULES = ("onecycle", "cosine", "constant")


def _scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig,
               total: int) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total,
                                                   pct_start=0.15)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _step: 1.0)
    raise ValueError(f"unknown schedule {cfg.schedule!r}; valid: {', '.join(SCHEDULES)}")


LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def ce_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def fit(model: nn.Module, split: Split, cfg: TrainConfig, loss_fn: LossFn = ce_loss,
        extra_params: list[nn.Parameter] | None = None, progress: ProgressFn = no_progress,
        stage: str = "train") -> list[float]:
    """SGD + Nesterov with ``cfg.schedule`` (one-cycle by default) for ``cfg.epochs`` (may
    be fractional).

    Returns the mean loss of each tenth of training (so callers can check it fell).
    """
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad] + list(extra_params or [])
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True,
                          weight_decay=cfg.weight_decay)
    per_epoch = math.ceil(len(split) / cfg.batch_size)
    total = max(1, int(round(cfg.epochs * per_epoch)))
    sched = _scheduler(opt, cfg, total)
    step, losses, window = 0, [], []
    epoch = 0
    while step < total:
        for x, y in batches(split, cfg.batch_size, shuffle=True, seed=cfg.seed + epoch):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                loss = loss_fn(model, x.to(device), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            window.append(float(loss.detach()))
            if step % max(1, total // 10) == 0 or step == total:
                losses.append(float(np.mean(window)))
                window = []
            progress(stage, step, total)
            if step >= total:
                break
        epoch += 1
    model.eval()
    return losses


def fit_detector(model: nn.Module, split: Split, cfg: TrainConfig,
                 progress: ProgressFn = no_progress) -> list[float]:
    """``fit`` with the detection task's loss (``hadmc_core.tasks.detection_loss``)."""
    from hadmc_core import tasks

    task = tasks.get("detect")
    return fit(model, split, cfg, loss_fn=lambda m, x, y: task.loss(m(x), y),
               progress=progress)


def evaluate_detector(model: nn.Module, data: DataSplits, work: Path,
                      backend: str = "onnxruntime") -> dict[str, float]:
    """mAP@0.5 and mAP@0.5:0.95 (points) on validation and test of the model's exported
    graph (NMS included) run by ``backend``, as the pipeline measures it."""
    import torch

    from hadmc_core import backends, tasks
    from hadmc_core.tasks.detection import coco_map

    task = tasks.get("detect")
    path = task.export(model.cpu().eval(), torch.from_numpy(data.val.x[:1]), work / "eval.onnx",
                       data)
    out: dict[str, float] = {}
    for name, split in (("val", data.val), ("test", data.test)):
        m50, m5095 = coco_map(task.predict(backends.get(backend), path, split.x), split.y)
        out[f"{name}_map50"], out[f"{name}_map50_95"] = round(m50, 2), round(m5095, 2)
    return out
