"""The delta benchmark's five scenarios, made from a ResNet-18 trained by ``hadmc train``.

The base is ``hadmc train --arch resnet18 --stem small --width W --epochs 0.2 --lr 0.05`` on
Fashion-MNIST (cached under ~/.cache/hadmc/bench/delta-w<W>/, HADMC_CACHE_DIR):
1. head: retrain only the classifier head (train mode, so BatchNorm statistics drift);
2. last-stage: fine-tune layer4 + head;
3. all: fine-tune every layer on 4k samples at a low learning rate (0.002);
4. int8: INT8 ONNX (ORT static QDQ, per-channel) of the base vs INT8 ONNX of scenario 3;
5. pruned: 30% of channels removed per group (L1 magnitude, torch_pruning through
   hadmc_core.prune; no fine-tune after) vs its base (shapes change).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from hadmc_core.settings import get_settings

ROOT = Path(__file__).resolve().parents[1]
# Trained models outlive the checkout (HADMC_CACHE_DIR, default ~/.cache/hadmc).
CACHE = get_settings().cache_dir / "bench"
BASE_EPOCHS = 0.2


def finetune(model, data, train_filter, samples: int, lr: float) -> None:
    """SGD (momentum 0.9, batch 64) on ``samples`` training images, train mode throughout."""
    import torch
    import torch.nn.functional as F

    for name, p in model.named_parameters():
        p.requires_grad = train_filter(name)
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr,
                          momentum=0.9)
    rng = np.random.default_rng(1)
    idx = rng.permutation(len(data.train))[:samples]
    for i in range(0, samples, 64):
        x = torch.from_numpy(data.train.x[idx[i:i + 64]])
        y = torch.from_numpy(data.train.y[idx[i:i + 64]])
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad = True


def train_base(width: float, path: Path) -> None:
    subprocess.run([sys.executable, "-m", "hadmc_core.cli", "train", "--arch", "resnet18",
                    "--data", "fashion-mnist", "--stem", "small", "--width", f"{width:g}",
                    "--epochs", str(BASE_EPOCHS), "--lr", "0.05", "--quiet", "-o", str(path)],
                   check=True)


PLANS = {
    "1 head": (lambda n: n.startswith("fc."), 2048, 0.01),
    "2 last-stage": (lambda n: n.startswith(("fc.", "layer4.")), 2048, 0.01),
    "3 all": (lambda n: True, 4096, 0.002),
}


def make_scenarios(width: float) -> tuple[Path, dict[str, tuple[Path, Path]]]:
    """(work directory, {scenario: (old, new)}), building what is not cached yet."""
    import copy

    from hadmc_core.data import load_dataset
    from hadmc_core.models import load_model, save_weights

    work = CACHE / f"delta-w{width:g}"
    work.mkdir(parents=True, exist_ok=True)
    data = load_dataset("fashion-mnist")
    base_path = work / "base.safetensors"
    if not base_path.exists():
        train_base(width, base_path)
    base, spec = load_model(base_path)
    out = {}
    for name, (flt, samples, lr) in PLANS.items():
        path = work / f"{name.split()[1]}.safetensors"
        if not path.exists():
            m = copy.deepcopy(base)
            finetune(m, data, flt, samples, lr)
            save_weights(m, path, spec)
        out[name] = (base_path, path)
    out["4 int8"] = (_int8(work, "base", base_path, data), _int8(work, "all", out["3 all"][1],
                                                                  data))
    out["5 pruned"] = (base_path, _pruned(work, base, data, save_weights))
    return work, out


def _int8(work: Path, tag: str, src: Path, data) -> Path:
    import torch

    from hadmc_core.config import QuantizeConfig
    from hadmc_core.models import load_model
    from hadmc_core.onnx_io import export_onnx
    from hadmc_core.quantize import quantize_qdq

    qpath = work / f"{tag}-int8.onnx"
    if not qpath.exists():
        m, _ = load_model(src)
        fp32 = export_onnx(m, torch.from_numpy(data.val.x[:1]), work / f"{tag}-fp32.onnx")
        quantize_qdq(fp32, qpath, data.train, QuantizeConfig(calib_samples=256), True)
    return qpath


def _pruned(work: Path, base, data, save_weights) -> Path:
    import torch

    from hadmc_core import prune
    from hadmc_core.config import PruneConfig

    path = work / "pruned.safetensors"
    if not path.exists():
        example = torch.from_numpy(data.val.x[:1])
        groups, _ = prune.analyze(base, data.train, PruneConfig(importance="l1"), example)
        keep = {g.root: max(4, int(g.channels * 0.7) // 4 * 4) for g in groups}
        save_weights(prune.apply(base, groups, keep, example), path)
    return path


if __name__ == "__main__":
    w, sc = make_scenarios(float(sys.argv[1]) if len(sys.argv) > 1 else 0.25)
    for k, (a, b) in sc.items():
        print(k, a.name, b.name, b.stat().st_size)
