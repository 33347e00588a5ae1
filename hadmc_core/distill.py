"""Feature-aligned knowledge distillation to recover a pruned student's accuracy.

Loss = (1 - a) * task.loss(student, y) + a * task.distill_loss(student, teacher, T)
       + b * sum_points MSE(adapter(student_feature / rms_s), teacher_feature / rms_t)
For classification the task's losses are cross-entropy and T^2 * KL(student/T || teacher/T).
``rms_t`` is the root mean square of the teacher's feature on the fine-tune subset (cached,
eval mode), ``rms_s`` the student's on the batch (train mode, not differentiated): both
sides of the feature term are of order 1 whatever the features' magnitude. Dividing the
squared error by E[teacher^2] alone compares the adapter's output, of the student's
train-mode magnitude, with the teacher's eval-mode features: when those are small (a
briefly trained detector's neck outputs have E[teacher^2] ~ 1e-3 while the student's
batch-normalized features are of order 1) the term starts in the hundreds and training
diverges. For classifiers, whose features are of similar magnitude on both sides, the term
is nearly the former one: the adapter is linear, so it absorbs the student's scale.
The alignment points are the model's ``feature_stages()`` when it declares them, else the
feature points the task finds in the traced graph (``hadmc_core.tasks.graph``). Adapters are
1x1 convolutions from the student's (pruned) channels to the teacher's, trained with the
student and dropped afterwards. The teacher's outputs and features on the fine-tune subset
are computed once and reused by every candidate and epoch. With ``logit_samples`` the
teacher's outputs cover more training images than its features (which cost far more
memory): those images take the output terms only, and the step count stays that of the
subset, so the same training sees more distinct images. Uses CUDA when available.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hadmc_core.config import DistillConfig
from hadmc_core.data import Split
from hadmc_core.progress import ProgressFn, no_progress
from hadmc_core.tasks import Task
from hadmc_core.train import TrainConfig, batches, fit, pick_device, use_bf16

log = logging.getLogger(__name__)


def _task(task: Task | None) -> Task:
    from hadmc_core import tasks

    return task or tasks.get("classification")


def stage_names(model: nn.Module, n: int, example: torch.Tensor | None = None,
                task: Task | None = None) -> list[str]:
    """The last ``n`` alignment points: the model's ``feature_stages()`` when it declares
    them, else the task's feature points in the traced graph (needs ``example``)."""
    if n <= 0:
        return []
    declared = getattr(model, "feature_stages", None)
    if callable(declared):
        return list(declared())[-n:]
    if example is None:
        return []
    return _task(task).feature_points(model, example, n)


class _Features:
    """Forward hooks that keep the latest output of the named modules."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        mods = dict(model.named_modules())
        self.out: dict[str, torch.Tensor] = {}
        self.handles = [mods[n].register_forward_hook(self._keep(n)) for n in names]

    def _keep(self, name: str):
        def fn(_m: nn.Module, _i: object, o: torch.Tensor) -> None:
            self.out[name] = o
        return fn

    def close(self) -> None:
        for h in self.handles:
            h.remove()


@dataclass
class TeacherCache:
    """Teacher outputs for a fixed subset, in float16 to halve memory."""

    split: Split
    logits: np.ndarray                  # the teacher's (first) output
    features: dict[str, np.ndarray]
    #: E[teacher feature^2] per point (over the first 512 rows of the subset)
    scale: dict[str, float]
    #: where the points came from: "feature_stages" (declared) or "graph" (found)
    alignment_source: str = "feature_stages"
    #: rows of ``split`` that have features: the first ``n_features`` (the fine-tune subset)
    n_features: int = -1

    def __post_init__(self) -> None:
        if self.n_features < 0:
            self.n_features = len(self.split)


def finetune_subset(data: Split, cfg: DistillConfig, n: int | None = None) -> Split:
    """The fixed fine-tune subset (the same for every candidate); ``n`` rows of the same
    fixed order instead of ``cfg.samples`` when given (a larger set starts with the
    subset)."""
    if n is None:
        n = len(data) if cfg.samples is None else min(cfg.samples, len(data))
    idx = np.random.default_rng(7).permutation(len(data))[:min(n, len(data))]
    return Split(data.x[idx], data.y[idx])


def logit_count(n_data: int, cfg: DistillConfig) -> int:
    """Training images with teacher logits (see ``DistillConfig.logit_samples``)."""
    subset = n_data if cfg.samples is None else min(cfg.samples, n_data)
    if cfg.logit_samples is None:
        return n_data
    return min(n_data, max(subset, cfg.logit_samples))


@torch.no_grad()
def cache_teacher(teacher: nn.Module, data: Split, cfg: DistillConfig,
                  progress: ProgressFn = no_progress, *, task: Task | None = None,
                  points: list[str] | None = None) -> TeacherCache:
    """Teacher outputs at ``points`` (default: ``stage_names``) on the fine-tune subset
    and, for outputs only, up to ``logit_count`` images."""
    n_feat = len(finetune_subset(data, cfg))
    subset = finetune_subset(data, cfg, logit_count(len(data), cfg))
    n = len(subset)
    device = pick_device(cfg.device)
    teacher = teacher.to(device).eval()
    if points is None and cfg.beta_feature > 0:
        example = torch.from_numpy(subset.x[:2]).to(device)
        points = stage_names(teacher, cfg.feature_stages, example, task)
    names = list(points or []) if cfg.beta_feature > 0 else []
    source = "feature_stages" if hasattr(teacher, "feature_stages") else "graph"
    hooks = _Features(teacher, names)
    logits: list[np.ndarray] = []
    feats: dict[str, list[np.ndarray]] = {k: [] for k in names}
    total = (n + 255) // 256
    bf16 = use_bf16(cfg.precision, device)
    for i, (x, _y) in enumerate(batches(subset, 256, shuffle=False)):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = teacher(x.to(device))
        logits.append(out.float().cpu().numpy())
        keep = max(0, min(len(x), n_feat - i * 256))  # rows of this batch in the subset
        for k in names:
            if keep:
                feats[k].append(hooks.out[k][:keep].half().cpu().numpy())
        progress("teacher", i + 1, total)
    hooks.close()
    features = {k: np.concatenate(v) for k, v in feats.items()}
    scale = {k: mean_square(v[:512]) for k, v in features.items()}
    return TeacherCache(subset, np.concatenate(logits), features, scale, source, n_feat)


#: Smallest root mean square a feature is divided by (all-zero features stay zero).
MIN_RMS = 1e-12


def mean_square(x: np.ndarray) -> float:
    """E[x^2] of a feature array, in float64 (float16 squares underflow)."""
    return float(np.mean(np.square(x.astype(np.float64)))) if x.size else 0.0


def _rms(mean_sq: float) -> float:
    return max(float(np.sqrt(mean_sq)), MIN_RMS)


def distill(student: nn.Module, cache: TeacherCache, cfg: DistillConfig,
            progress: ProgressFn = no_progress, stage: str = "distill",
            task: Task | None = None, epochs: float | None = None) -> list[float]:
    """Train ``student`` in place against the cached teacher for ``epochs`` of the
    fine-tune subset (default ``cfg.epochs``); returns the loss curve."""
    task = _task(task)
    device = pick_device(cfg.device)
    student.to(device)
    names = list(cache.features)
    hooks = _Features(student, names)
    with torch.no_grad():
        student.eval()
        student(torch.from_numpy(cache.split.x[:2]).to(device))
    t_rms = {k: _rms(cache.scale[k]) for k in names}  # the feature term's scale (module doc)
    adapters = nn.ModuleDict({
        k.replace(".", "_"): nn.Conv2d(hooks.out[k].shape[1], cache.features[k].shape[1], 1)
        for k in names
    }).to(device)
    # The training loop batches row numbers of the subset, so cached rows line up.
    order_x = torch.from_numpy(cache.split.x)
    ids = Split(np.arange(len(cache.split), dtype=np.float32).reshape(-1, 1, 1, 1),
                cache.split.y)
    t, a, b = cfg.temperature, cfg.alpha_kd, cfg.beta_feature
    n_feat = cache.n_features

    def loss_fn(model: nn.Module, rows: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r = rows.view(-1).long().cpu().numpy()
        x = order_x[r].to(device)
        out = model(x)
        loss = (1 - a) * task.loss(out, y)
        if a > 0:
            tl = torch.from_numpy(cache.logits[r]).to(device)
            loss = loss + a * task.distill_loss(out, tl, t)
        has = r < n_feat  # rows beyond the subset have logits only
        for k in names:
            if b <= 0 or not has.any():
                break
            tf = torch.from_numpy(cache.features[k][r[has]]).to(device).float() / t_rms[k]
            s = hooks.out[k][torch.from_numpy(has).to(device)]
            s_rms = s.detach().float().pow(2).mean().sqrt().clamp_min(MIN_RMS)
            sf = adapters[k.replace(".", "_")](s / s_rms)
            loss = loss + b * F.mse_loss(sf, tf)
        return loss

    # Epochs count passes over the subset: the same steps whatever the logit set's size.
    passes = (cfg.epochs if epochs is None else epochs) * n_feat / max(1, len(cache.split))
    train_cfg = TrainConfig(epochs=passes, batch_size=cfg.batch_size, lr=cfg.lr,
                            weight_decay=5e-4, device=str(device),
                            bf16=use_bf16(cfg.precision, device), schedule=cfg.schedule)
    try:
        return fit(student, ids, train_cfg, loss_fn=loss_fn,
                   extra_params=list(adapters.parameters()), progress=progress, stage=stage)
    finally:
        hooks.close()
        student.cpu().eval()
