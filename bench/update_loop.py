"""The cloud-edge update loop: what a fine-tuned base costs the devices, with and without
update-aware recompression.

    python bench/update_loop.py [--width 0.25] [--distill-samples 12000] [--out FILE]

1. Base v1: the delta benchmark's ResNet-18 (small stem, Fashion-MNIST;
   ``bench/delta_scenarios.py``), compressed by ``hadmc compress`` -> C1 (the deployed
   version).
2. Base v2: v1 fine-tuned on all layers (4,096 images, learning rate 0.002: the delta
   benchmark's third scenario), compressed twice with the same command and constraints:
   C2 with ``--update-of C1`` (the plan of C1 kept) and C2' without it (chosen afresh).
3. C1, C2 and C2' are published as versions of one model line on a real ``hadmc serve``
   (PostgreSQL, loopback) and the deltas C1 -> C2 and C1 -> C2' are downloaded from it as a
   device would (``GET /v1/versions/{id}/delta?from=``); the bytes are what the server sent
   (response bodies, checked against its ``hadmc_download_bytes_total{kind="delta"}``).
   No agent processes run here: the bytes per device are those of one delta download.
4. Accuracy (test split, from the artifact on ONNX Runtime) and latency (batch 1, 2
   threads, the three artifacts interleaved round by round, median of rounds) are measured
   again here in one run, beside what each report says.

Target: the delta C1 -> C2 at most 10 % of C2's file, C2 within C1's constraints.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HADMC = [sys.executable, "-m", "hadmc_core.cli"]


def compress(weights: Path, out: Path, cfg: Path, args: argparse.Namespace,
             *extra: str) -> dict[str, Any]:
    if args.keep and (out / "report.json").exists():
        rep = json.loads((out / "report.json").read_text())
        rep.update({"_seconds": None, "_exit": None})
        return rep
    if out.exists():
        shutil.rmtree(out)
    t = time.perf_counter()
    model = (["--model", "tests.hadmc_core.nets:ConvNet", "--input-shape", "1,8,8"]
             if args.convnet else [])
    r = subprocess.run([*HADMC, "compress", *model, "--weights", str(weights), "--data", args.data,
                        "--profile", args.profile, "--out", str(out), "--config", str(cfg),
                        "--max-accuracy-drop", str(args.max_accuracy_drop), "--quiet", *extra],
                       capture_output=True, text=True)
    if r.returncode not in (0, 3):
        raise SystemExit(f"hadmc compress failed ({r.returncode}): {r.stderr or r.stdout}")
    rep = json.loads((out / "report.json").read_text())
    rep["_seconds"] = round(time.perf_counter() - t, 1)
    rep["_exit"] = r.returncode
    return rep


def measure(paths: dict[str, Path], data: Any, rounds: int) -> dict[str, dict[str, float]]:
    """Test top-1 from each artifact on ONNX Runtime; latency interleaved round by round."""
    from hadmc_core.backends import resolve

    ort = resolve("onnxruntime")
    shape = tuple(data.test.x.shape[1:])
    acc = {}
    for k, p in paths.items():
        logits = ort.predict(p, data.test.x)[0]
        acc[k] = 100.0 * float((logits.argmax(1) == data.test.y).mean())
    per: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(rounds):
        for k, p in paths.items():
            per[k].append(ort.time_model(p, shape, runs=100, warmup=20, threads=2).median_ms)
    return {k: {"top1": round(acc[k], 2), "latency_ms": round(statistics.median(v), 4)}
            for k, v in per.items()}


def served_deltas(paths: dict[str, Path], args: argparse.Namespace, tmp: Path
                  ) -> dict[str, Any]:
    """Publish C1, C2, C2' on a real `hadmc serve`; download C1 -> C2 and C1 -> C2'."""
    import httpx

    from bench.fleet import start_server
    from bench.service import drop_database

    proc, dbname, auth = start_server(tmp, args.postgres, args.redis, args.port, 1)
    try:
        api = httpx.Client(base_url=f"http://127.0.0.1:{args.port}", headers=auth, timeout=300)
        octet = {"Content-Type": "application/octet-stream"}
        r = api.post("/v1/models", params={"name": "update-loop", "format": "onnx"},
                     content=paths["C1"].read_bytes(), headers=octet)
        r.raise_for_status()
        mid = r.json()["id"]
        ids = {}
        for k in ("C1", "C2", "C2'"):
            r = api.post(f"/v1/models/{mid}/versions", params={"profile": args.profile},
                         content=paths[k].read_bytes(), headers=octet)
            r.raise_for_status()
            ids[k] = r.json()["id"]
        out: dict[str, Any] = {}
        for k in ("C2", "C2'"):
            resp = api.get(f"/v1/versions/{ids[k]}/delta", params={"from": ids["C1"]})
            resp.raise_for_status()
            out[k] = len(resp.content)
        metrics = api.get("/metrics").text
        m = re.search(r'hadmc_download_bytes_total\{kind="delta"\} ([0-9.e+]+)', metrics)
        out["server_delta_bytes_total"] = int(float(m.group(1))) if m else None
        return out
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
        drop_database(args.postgres, dbname)


def small_pair(args: argparse.Namespace) -> tuple[Path, Path]:
    """For a quick run on another dataset (``--data digits``): the same recipe at its
    size: ``hadmc train`` (4 epochs), then all layers fine-tuned at learning rate 0.002 on
    ``--finetune-samples`` images (the delta benchmark's third scenario)."""
    import copy

    from bench.delta_scenarios import finetune
    from hadmc_core.data import load_dataset
    from hadmc_core.models import load_model, save_weights

    work = args.work / (f"base-{args.data}-convnet" if args.convnet
                        else f"base-{args.data}-w{args.width:g}")
    work.mkdir(parents=True, exist_ok=True)
    v1, v2 = work / "base.safetensors", work / "all.safetensors"
    if args.convnet and not v1.exists():
        from safetensors.torch import save_file

        from tests.hadmc_core.nets import ConvNet, trained

        save_file(trained(ConvNet(), load_dataset(args.data), epochs=3).state_dict(), v1,
                  metadata={"input_shape": "1,8,8"})
    if not v1.exists():
        subprocess.run([*HADMC, "train", "--arch", "resnet18", "--data", args.data, "--stem",
                        "small", "--width", f"{args.width:g}", "--epochs", "4", "--lr", "0.05",
                        "--quiet", "-o", str(v1)], check=True)
    if not v2.exists() and args.convnet:
        from safetensors.torch import load_file, save_file

        from tests.hadmc_core.nets import ConvNet

        net = ConvNet()
        net.load_state_dict(load_file(v1))
        finetune(net, load_dataset(args.data), lambda n: True, args.finetune_samples, 0.002)
        save_file(net.state_dict(), v2, metadata={"input_shape": "1,8,8"})
    if not v2.exists():
        data = load_dataset(args.data)
        base, spec = load_model(v1)
        m = copy.deepcopy(base)
        finetune(m, data, lambda n: True, args.finetune_samples, 0.002)
        save_weights(m, v2, spec)
    return v1, v2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--convnet", action="store_true",
                    help="the tests' small ConvNet (tests/hadmc_core/nets.py) instead of "
                         "ResNet-18: a quick run on a loaded machine (with --data digits)")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--profile", default="x86-avx2")
    ap.add_argument("--max-accuracy-drop", type=float, default=1.0)
    ap.add_argument("--distill-samples", type=int, default=12000)
    ap.add_argument("--distill-epochs", type=float, default=2.0)
    ap.add_argument("--max-candidates", type=int, default=4)
    ap.add_argument("--ladder", default="0.2,0.3,0.45,0.65,1.0",
                    help="prune.ladder (the default config's)")
    ap.add_argument("--finetune-samples", type=int, default=4096,
                    help="images of v1's fine-tune into v2 (other datasets than fashion-mnist)")
    ap.add_argument("--keep", action="store_true",
                    help="reuse compressions already in --work (a rerun after a failure)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--port", type=int, default=8793)
    ap.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--work", type=Path, default=Path("/tmp/hadmc-update-loop"))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "update_loop.json")
    args = ap.parse_args()
    import zstandard

    from bench.delta_scenarios import make_scenarios
    from hadmc_core.data import load_dataset
    from hadmc_core.delta import diff

    if args.data == "fashion-mnist" and not args.convnet:
        _work, scenarios = make_scenarios(args.width)
        v1, v2 = scenarios["3 all"]
    else:
        v1, v2 = small_pair(args)
    args.work.mkdir(parents=True, exist_ok=True)
    cfg = args.work / "config.json"
    cfg.write_text(json.dumps({"distill": {"samples": args.distill_samples,
                                           "epochs": args.distill_epochs},
                               "prune": {"ladder": [float(f) for f in args.ladder.split(",")]},
                               "max_candidates": args.max_candidates}))
    reps = {"C1": compress(v1, args.work / "c1", cfg, args)}
    print(f"C1: {reps['C1']['_seconds']} s", flush=True)
    reps["C2"] = compress(v2, args.work / "c2", cfg, args, "--update-of",
                          str(args.work / "c1"))
    print(f"C2 (update_of C1): {reps['C2']['_seconds']} s", flush=True)
    reps["C2'"] = compress(v2, args.work / "c2-fresh", cfg, args)
    seconds = reps["C2'"]["_seconds"]
    print(f"C2' (afresh): {seconds} s", flush=True)
    paths = {"C1": args.work / "c1" / "model.onnx", "C2": args.work / "c2" / "model.onnx",
             "C2'": args.work / "c2-fresh" / "model.onnx"}
    data = load_dataset(args.data)
    measured = measure(paths, data, args.rounds)
    engine = {}
    for k in ("C2", "C2'"):
        blob, stats = diff(paths["C1"], paths[k])
        engine[k] = {"delta_bytes": len(blob), "ops": stats.ops, "op_bytes": stats.op_bytes,
                     "fallback": stats.fallback}
    tmp = Path(f"/tmp/hadmc-update-serve-{uuid.uuid4().hex[:6]}")
    tmp.mkdir(parents=True)
    try:
        served = served_deltas(paths, args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = {}
    for k, p in paths.items():
        r = reps[k]
        size = p.stat().st_size
        row = {"constraints_met": r["constraints"]["met"], "message": r["constraints"]["message"],
               "report_top1": r["compressed"]["accuracy"],
               "report_latency_ms": r["compressed"]["latency_ms"],
               "baseline_top1": r["baseline"]["accuracy"],
               "baseline_latency_ms": r["baseline"]["latency_ms"],
               "params": r["compressed"]["params"], "size_bytes": size,
               "zstd19_bytes": len(zstandard.ZstdCompressor(level=19).compress(p.read_bytes())),
               "int8_layers": sum(d["precision"] == "int8" for d in r["layers"]),
               "seconds": r["_seconds"], "update": r.get("update"), **measured[k]}
        if k != "C1":
            row.update({"delta_from_C1_bytes": engine[k]["delta_bytes"],
                        "served_delta_bytes": served[k],
                        "delta_vs_full": round(served[k] / size, 4),
                        "delta_ops": engine[k]["ops"], "delta_op_bytes": engine[k]["op_bytes"]})
        rows[k] = row
    result = {"command": " ".join(sys.argv), "cpus": os.cpu_count(),
              "model": ("ConvNet (tests/hadmc_core/nets.py)" if args.convnet else
                        f"resnet18 small stem width {args.width:g}") + f", {args.data}",
              "server_delta_bytes_total": served["server_delta_bytes_total"],
              "target_met": (rows["C2"]["delta_vs_full"] <= 0.10
                             and rows["C2"]["constraints_met"]),
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
