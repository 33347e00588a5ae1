"""Delta benchmark: our delta vs zstd --patch-from, xdelta3, bsdiff, 64 KiB block hashing.

    nice -n 10 python bench/delta.py [--width 0.25] [--fuzz 2000]

Scenarios are made from a width-reduced ResNet-18 (small stem, width 0.25: 0.7 M
parameters, 2.8 MB) trained here on Fashion-MNIST for a fraction of an epoch (cached under
.hadmc-cache/bench/delta-w<width>/); ``--width 1`` uses the full model:
1. head: retrain only the classifier head (BatchNorm statistics drift in train mode);
2. last-stage: fine-tune layer4 + head;
3. all: fine-tune every layer for a fraction of an epoch at a low learning rate;
4. int8: INT8 ONNX (ORT static QDQ) of the base vs INT8 ONNX of scenario 3;
5. pruned: a pruned architecture (30% of channels removed per group, L1 magnitude, with
   torch_pruning through hadmc_core.prune; no fine-tune after) vs its base (shapes change).
Writes bench/results/delta.json after each scenario and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".hadmc-cache" / "bench"
WORK = CACHE / "delta"
BLOCK = 64 * 1024
TOOL_TIMEOUT = 900


def finetune(model, data, train_filter, samples: int, lr: float) -> None:
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


def train_base(width: float, path: Path, data) -> None:
    """A width-reduced ResNet-18 trained for a fraction of an epoch (SGD, 12k samples)."""
    import torch

    from hadmc_core.models import ArchSpec, build_model, save_weights

    torch.manual_seed(0)
    spec = ArchSpec("resnet18", 1, 10, "small", width=width)
    model = build_model(spec)
    finetune(model, data, lambda n: True, 12288, 0.05)
    save_weights(model, path, spec)


def make_scenarios(width: float) -> dict[str, tuple[Path, Path]]:
    import copy

    import torch

    from hadmc_core import prune
    from hadmc_core.config import PruneConfig, QuantizeConfig
    from hadmc_core.data import load_dataset
    from hadmc_core.models import load_model, save_weights
    from hadmc_core.onnx_io import export_onnx
    from hadmc_core.quantize import quantize_qdq

    global WORK
    WORK = CACHE / f"delta-w{width:g}"
    WORK.mkdir(parents=True, exist_ok=True)
    data = load_dataset("fashion-mnist")
    base_path = WORK / "base.safetensors"
    if width == 1 and (CACHE / "resnet18-fmnist.safetensors").exists():
        base_path = CACHE / "resnet18-fmnist.safetensors"  # bench/compress.py's baseline
    elif not base_path.exists():
        train_base(width, base_path, data)
    base, spec = load_model(base_path)
    out = {}
    plans = {
        "1 head": (lambda n: n.startswith("fc."), 2048, 0.01),
        "2 last-stage": (lambda n: n.startswith(("fc.", "layer4.")), 2048, 0.01),
        "3 all": (lambda n: True, 4096, 0.002),
    }
    tuned = {}
    for name, (flt, samples, lr) in plans.items():
        path = WORK / f"{name.split()[1]}.safetensors"
        if not path.exists():
            m = copy.deepcopy(base)
            finetune(m, data, flt, samples, lr)
            save_weights(m, path, spec)
        tuned[name] = path
        out[name] = (base_path, path)
    example = torch.from_numpy(data.val.x[:1])
    q = {}
    for tag, src in (("base", base_path), ("all", tuned["3 all"])):
        qpath = WORK / f"{tag}-int8.onnx"
        if not qpath.exists():
            m, _ = load_model(src)
            fp32 = export_onnx(m, example, WORK / f"{tag}-fp32.onnx")
            quantize_qdq(fp32, qpath, data.train, QuantizeConfig(calib_samples=256), True)
        q[tag] = qpath
    out["4 int8"] = (q["base"], q["all"])
    pruned_path = WORK / "pruned.safetensors"
    if not pruned_path.exists():
        groups, layers = prune.analyze(base, data.train, PruneConfig(importance="l1"), example)
        keep = {g.root: max(4, int(g.channels * 0.7) // 4 * 4) for g in groups}
        save_weights(prune.apply(base, groups, keep, example), pruned_path)
    out["5 pruned"] = (base_path, pruned_path)
    return out


_PEAK = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
         "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def timed(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one child process (measured by a fresh parent)."""
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", _PEAK, *cmd], check=True, capture_output=True,
                         text=True, timeout=TOOL_TIMEOUT)
    return time.perf_counter() - t, int(res.stdout.strip()) * 1024


def block_hash_bytes(old: Path, new: Path) -> int:
    """The paper's algorithm: send every 64 KiB block whose hash changed (+32 B per hash)."""
    import blake3

    a, b = old.read_bytes(), new.read_bytes()
    changed = 0
    for i in range(0, len(b), BLOCK):
        blk = b[i:i + BLOCK]
        if blake3.blake3(blk).digest() != blake3.blake3(a[i:i + BLOCK]).digest():
            changed += len(blk)
    return changed + 32 * (-(-len(b) // BLOCK))


def run_scenario(name: str, old: Path, new: Path, tmp: Path) -> dict:
    hadmc = [sys.executable, "-m", "hadmc_core.cli"]
    r: dict = {"scenario": name, "new_bytes": new.stat().st_size}
    ours = tmp / "ours.delta"
    r["ours_encode_s"], _ = timed([*hadmc, "delta", "diff", str(old), str(new), "-o",
                                   str(ours), "--sign", str(tmp / "k.pem"), "--version", "2"])
    r["ours"] = ours.stat().st_size
    r["ours_ops"] = _ops(old, new)
    r["ours_apply_s"], r["ours_apply_peak_bytes"] = timed(
        [*hadmc, "delta", "apply", str(old), str(ours), "-o", str(tmp / "out"),
         "--public-key", str(tmp / "k.pub")])
    assert (tmp / "out").read_bytes() == new.read_bytes(), "round trip must be exact"
    zp = tmp / "z.patch"
    r["zstd_patch_encode_s"], _ = timed(["zstd", "-q", "-f", "-19", "--long=27",
                                         f"--patch-from={old}", str(new), "-o", str(zp)])
    r["zstd_patch_from"] = zp.stat().st_size
    timed(["xdelta3", "-f", "-9", "-e", "-s", str(old), str(new), str(tmp / "x.vcdiff")])
    r["xdelta3"] = (tmp / "x.vcdiff").stat().st_size
    timed(["bsdiff", str(old), str(new), str(tmp / "b.patch")])
    r["bsdiff"] = (tmp / "b.patch").stat().st_size
    r["block64k"] = block_hash_bytes(old, new)
    timed(["zstd", "-q", "-f", "-19", "--long=27", str(new), "-o", str(tmp / "full.zst")])
    r["full_zstd"] = (tmp / "full.zst").stat().st_size
    others = [r[k] for k in ("zstd_patch_from", "xdelta3", "bsdiff", "block64k", "full_zstd")]
    r["ours_vs_best_other"] = round(r["ours"] / min(others), 3)
    r["encode_speedup_vs_zstd"] = round(r["zstd_patch_encode_s"] / r["ours_encode_s"], 1)
    return r


def _ops(old: Path, new: Path) -> dict[str, int]:
    from hadmc_core.delta import diff

    return diff(old, new)[1].op_bytes


def manifest_rate(path: Path) -> float:
    """Best of 5 (the machine is shared): chunk hashes + file hash, one read pass."""
    from hadmc_core.delta import build_manifest

    best = 1e9
    for _ in range(5):
        t = time.perf_counter()
        build_manifest(path)
        best = min(best, time.perf_counter() - t)
    return path.stat().st_size / best / 1e9


def fuzz(old: Path, patch: Path, examples: int) -> dict:
    """The longer fuzz run: mutated and truncated deltas end in a DeltaError, nothing else."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from hadmc_core.delta import apply_delta
    from hadmc_core.errors import DeltaError

    original, outcomes = patch.read_bytes(), {"rejected": 0, "applied": 0}
    tmp = patch.with_name("fuzz.delta")

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(st.integers(0, len(original) - 1), st.integers(0, 255)),
                    max_size=6), st.integers(1, len(original)))
    def run(flips, cut):
        data = bytearray(original[:cut])
        for pos, val in flips:
            if pos < len(data):
                data[pos] = val
        tmp.write_bytes(bytes(data))
        out = patch.with_name("fuzz.out")
        try:
            apply_delta(old, tmp, out)
            outcomes["applied"] += 1
            out.unlink()
        except DeltaError:
            outcomes["rejected"] += 1
            assert not out.exists()

    t = time.perf_counter()
    run()
    return {**outcomes, "seconds": round(time.perf_counter() - t, 1)}


def main() -> None:
    from hadmc_core.delta import generate_keys

    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--fuzz", type=int, default=2000)
    args = ap.parse_args()
    scenarios = make_scenarios(args.width)
    tmp = WORK / "tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    generate_keys(tmp / "k.pem")
    res: dict = {"command": " ".join(sys.argv), "width": args.width, "cpu": _cpu(),
                 "cores": os.cpu_count(), "rows": []}
    out = ROOT / "bench" / "results" / "delta.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    for name, (old, new) in scenarios.items():
        print(f"scenario {name} ...", flush=True)
        res["rows"].append(run_scenario(name, old, new, tmp))
        out.write_text(json.dumps(res, indent=2))
    base = scenarios["1 head"][0]
    res["manifest_hash_gbs"] = round(manifest_rate(base), 2)
    res["fuzz"] = fuzz(scenarios["5 pruned"][0], tmp / "ours.delta", args.fuzz)
    out.write_text(json.dumps(res, indent=2))
    print(table(res["rows"]))
    print(f"\nmanifest hashing: {res['manifest_hash_gbs']:.2f} GB/s; fuzz: {res['fuzz']}")


def table(rows: list[dict]) -> str:
    mb = 1e6
    head = ("| scenario | new file MB | ours MB | zstd -19 --patch-from MB | xdelta3 -9 MB | "
            "bsdiff MB | 64 KiB blocks MB | full zstd -19 MB | ours / best other | "
            "encode s (ours / zstd) | apply s | apply peak RSS MB |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [f"| {r['scenario']} | {r['new_bytes'] / mb:.2f} | {r['ours'] / mb:.3f} | "
             f"{r['zstd_patch_from'] / mb:.3f} | {r['xdelta3'] / mb:.3f} | "
             f"{r['bsdiff'] / mb:.3f} | {r['block64k'] / mb:.3f} | {r['full_zstd'] / mb:.3f} | "
             f"{r['ours_vs_best_other']:.2f} | "
             f"{r['ours_encode_s']:.2f} / {r['zstd_patch_encode_s']:.2f} | "
             f"{r['ours_apply_s']:.2f} | {r['ours_apply_peak_bytes'] / mb:.0f} |" for r in rows]
    return "\n".join([head, *lines])


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return ""


if __name__ == "__main__":
    main()
