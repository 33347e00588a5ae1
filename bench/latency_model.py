"""How well the latency model predicts what a candidate measures, on this machine.

    python bench/latency_model.py                       # both models, both backends
    python bench/latency_model.py --models resnet18 --backends onnxruntime --rounds 3
    python bench/latency_model.py --quick               # does it run? (a few minutes)

For ResNet-18 and MobileNetV2 from the zoo (small stem, Fashion-MNIST's 1x28x28 input,
weights as built: latency does not depend on the weights' values) and for each backend
(ONNX Runtime, OpenVINO) the script builds the candidates of a compression ladder with the
pipeline's own parts: the latency-aware channel allocation (``search.allocate``) at the
default ladder's rungs, pruning, BatchNorm folding, export, and each rung in FP32, INT8
(every layer) and mixed precision (first and last weight layer kept in FP32, as the
quantization step's first back-off keeps the most sensitive layers). Then, per round:

- **in-graph model** (what a run on this machine uses): a fresh ``LatencyModel`` fitted
  in graph context (``calibrate.fit_latency``: the model at uniform widths under the
  backend's per-node profiler), its estimate of every candidate, and the whole-model
  overhead it fits from the same calibration models (``LatencyModel.fit_overhead``);
- **device table** (what a job for a registered device uses): the table the agent's own
  code measures (``edge_agent.optable.operator_table``, one-layer graphs, for the
  geometries of the model) with the whole-model term it fits from calibration networks of
  the same geometries timed whole (``hadmc_core.hal.wholeterm``); estimate =
  ``graph_stats.model_ms`` of ``LatencyModel(table=...)`` (the pipeline's
  ``Measurer.estimate_ms``), and the plain layer sum beside it;
- **device table, corrected by one deployed version**: the device-table estimate through
  the correction (``hadmc_core.hal.feedback``) from ONE pair, the unpruned FP32
  candidate's (table estimate, smoke-test p50), as if the device had run the base model
  first and reported its p50: the FP32 share of every estimate scaled by that ratio, the
  INT8 share as the table says (no INT8 version reported yet); summarized over the other
  candidates;
- **measured**: every candidate timed whole (``Backend.time_model``: 10 warm-up runs,
  the median of 60) and by the agent's smoke-test timing (``edge_agent.smoke``).

Prediction and measurement are interleaved round by round and each is the median of its
round values, because the machine is shared (2 cores, other processes running): a model
fitted in a quiet minute and measured in a busy one would show the load, not the model.
Results go to bench/results/latency_model.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hadmc_core import backends, calibrate, graph_stats, prune, search  # noqa: E402
from hadmc_core.config import PruneConfig, QuantizeConfig  # noqa: E402
from hadmc_core.data import load_dataset  # noqa: E402
from hadmc_core.fuse import fold_batchnorm  # noqa: E402
from hadmc_core.hal import feedback  # noqa: E402
from hadmc_core.hal.detect import detect_profile  # noqa: E402
from hadmc_core.hal.latency import LatencyModel  # noqa: E402
from hadmc_core.onnx_io import export_onnx  # noqa: E402
from hadmc_core.prepare import prepare  # noqa: E402
from hadmc_core.quantize import use_reduce_range  # noqa: E402

LADDER = PruneConfig().ladder
THREADS = 2
RUNS = 60
#: --quick: two rungs of the ladder, 20 timed runs per candidate
QUICK = False


def build_candidates(name: str, backend: Any, profile: Any, work: Path, data: Any
                     ) -> tuple[list[dict[str, Any]], Any]:
    import torch

    loaded, fitted, _ = prepare(name, data, stem="small")
    model = loaded.module.eval()
    example = torch.zeros(1, *loaded.input_shape)
    cfg = PruneConfig(importance="l1")
    groups, layers = prune.analyze(model, fitted.train, cfg, example)
    reduce_range = use_reduce_range(QuantizeConfig(), profile)
    round_to = profile.channel_multiple
    lat = LatencyModel(profile, measure=True, threads=THREADS, backend=backend,
                       cache_dir=work / "cache")
    calibrate.fit_latency(lat, model, groups, example, fitted.train, ["fp32", "int8"],
                          reduce_range, work, round_to, backend=backend)
    floor = search.floor_fraction(groups, layers, lat, "int8", round_to, cfg.min_keep)
    rungs = sorted({round(floor + r * (1 - floor), 4) for r in LADDER})
    if QUICK:  # the most pruned rung and the unpruned model
        rungs = [rungs[0], rungs[-1]]
    calib = fitted.train.x[:64]
    cands: list[dict[str, Any]] = []
    for i, frac in enumerate(rungs):
        student = model
        if frac < 1.0:
            alloc = search.allocate(groups, layers, lat, frac, "int8", round_to=round_to,
                                    min_keep=cfg.min_keep)
            student = prune.apply(model, groups, alloc.keep, example)
        fused = fold_batchnorm(student, example).model
        fp32 = export_onnx(fused, example, work / f"{name}-{backend.name}-r{i}-fp32.onnx")
        graph = graph_stats.layers(fp32)
        nodes = list(graph)
        cands.append({"id": f"r{i}-fp32", "fraction": frac, "path": fp32, "fp32": fp32,
                      "precisions": {}})
        int8 = backend.quantize_int8(fp32, work / f"{name}-{backend.name}-r{i}-int8.onnx",
                                     calib, reduce_range=reduce_range)
        cands.append({"id": f"r{i}-int8", "fraction": frac, "path": int8, "fp32": fp32,
                      "precisions": {n: "int8" for n in nodes}})
        keep = [nodes[0], nodes[-1]]
        mixed = backend.quantize_int8(fp32, work / f"{name}-{backend.name}-r{i}-mixed.onnx",
                                      calib, keep_fp32=keep, reduce_range=reduce_range)
        cands.append({"id": f"r{i}-mixed", "fraction": frac, "path": mixed, "fp32": fp32,
                      "precisions": {n: "int8" for n in nodes if n not in keep}})
    calib_dir = work / "calibration"
    calib_dir.mkdir()
    ctx = {"calibration": calibrate.calibration_models(
               model, groups, example, fitted.train, ["fp32", "int8"], reduce_range,
               calib_dir, round_to, backend=backend),
           "input_shape": tuple(loaded.input_shape), "geoms": _geoms(cands)}
    return cands, ctx


def _geoms(cands: list[dict[str, Any]]) -> list[tuple[Any, int, int]]:
    """Each distinct layer geometry of the unpruned model with its widths (the operator
    list a device would time for this model)."""
    seen: dict[str, tuple[Any, int, int]] = {}
    for ly in graph_stats.layers(cands[-1]["fp32"]).values():
        seen.setdefault(ly.geom.key, (ly.geom, ly.cin, ly.cout))
    return list(seen.values())


def predict_in_graph(cands: list[dict[str, Any]], ctx: dict[str, Any], backend: Any,
                     profile: Any, work: Path) -> dict[str, tuple[float, float]]:
    """(layer sum, whole-model estimate) per candidate from a model fitted afresh: the
    calibration models profiled again (as ``calibrate.fit_latency`` does; built once)."""
    lat = LatencyModel(profile, measure=True, threads=THREADS, backend=backend,
                       cache_dir=work / "cache")
    whole: list[Any] = []
    lat.fit_in_graph(calibrate.profile(ctx["calibration"], THREADS, backend, whole))
    lat.fit_overhead(whole)
    out = {}
    for c in cands:
        graph = graph_stats.layers(c["fp32"])
        out[c["id"]] = (graph_stats.estimate_ms(lat, graph, c["precisions"]),
                        graph_stats.model_ms(lat, graph, c["precisions"]))
    return out


def predict_table(cands: list[dict[str, Any]], ctx: dict[str, Any], backend: Any,
                  profile: Any) -> tuple[dict[str, tuple[float, float]], dict[str, Any]]:
    """(layer sum, whole-model estimate) per candidate from the table the agent's own code
    measures: one-layer graphs for the model's geometries, and the whole-model term from
    calibration networks of the same geometries timed whole
    (``hadmc_core.hal.wholeterm``); and the term itself. Keeps each candidate's layer
    time per precision under the table (``table_shares``, the last round's), which a
    correction weighs its factors by."""
    from edge_agent.optable import operator_table

    table = operator_table(THREADS, operators=ctx["geoms"], backend=backend)
    lat = LatencyModel(profile, measure=False, table=table, threads=THREADS)
    out = {}
    for c in cands:
        graph = graph_stats.layers(c["fp32"])
        out[c["id"]] = (graph_stats.estimate_ms(lat, graph, c["precisions"]),
                        graph_stats.model_ms(lat, graph, c["precisions"]))
        c["table_shares"] = graph_stats.by_precision(lat, graph, c["precisions"])[0]
    return out, lat.overhead


def measure(cands: list[dict[str, Any]], ctx: dict[str, Any], backend: Any
            ) -> tuple[dict[str, float], dict[str, float]]:
    from edge_agent.smoke import smoke_test

    whole, smoke = {}, {}
    for c in cands:  # one session open at a time
        whole[c["id"]] = backend.time_model(c["path"], ctx["input_shape"], RUNS, 10,
                                            THREADS).median_ms
        smoke[c["id"]] = smoke_test(c["path"], None, RUNS, THREADS, backend=backend).p50_ms
    return whole, smoke


def err(pred: float, meas: float) -> float:
    return 100.0 * (pred - meas) / meas


def summary(errors: list[float]) -> dict[str, float]:
    a = [abs(e) for e in errors]
    return {"median_abs_pct": round(statistics.median(a), 1), "worst_abs_pct": round(max(a), 1)}


def run(name: str, bname: str, rounds: int, data: Any, profile: Any) -> dict[str, Any]:
    backend = backends.get(bname)
    with tempfile.TemporaryDirectory(prefix="hadmc-latbench-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        cands, ctx = build_candidates(name, backend, profile, work, data)
        print(f"{name}/{bname}: {len(cands)} candidates built in "
              f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
        per: dict[str, dict[str, list[float]]] = {
            c["id"]: {k: [] for k in ("sum", "model", "table_sum", "table", "whole",
                                      "smoke")}
            for c in cands}
        loads: list[float] = []
        terms: list[dict[str, Any]] = []
        for r in range(rounds):
            t0 = time.perf_counter()
            pred = predict_in_graph(cands, ctx, backend, profile, work)
            whole, smoke = measure(cands, ctx, backend)
            table, term = predict_table(cands, ctx, backend, profile)
            terms.append(term)
            for cid, v in per.items():
                v["sum"].append(pred[cid][0])
                v["model"].append(pred[cid][1])
                v["table_sum"].append(table[cid][0])
                v["table"].append(table[cid][1])
                v["whole"].append(whole[cid])
                v["smoke"].append(smoke[cid])
            loads.append(os.getloadavg()[0])
            print(f"  round {r + 1}/{rounds}: {time.perf_counter() - t0:.0f} s, load "
                  f"{loads[-1]:.1f}", file=sys.stderr)
    rows = []
    for c in cands:
        med = {k: statistics.median(v) for k, v in per[c["id"]].items()}
        rows.append({"id": c["id"], "fraction": c["fraction"],
                     "layer_sum_ms": round(med["sum"], 4),
                     "predicted_ms": round(med["model"], 4),
                     "measured_ms": round(med["whole"], 4),
                     "error_pct": round(err(med["model"], med["whole"]), 1),
                     "layer_sum_error_pct": round(err(med["sum"], med["whole"]), 1),
                     "table_sum_ms": round(med["table_sum"], 4),
                     "table_ms": round(med["table"], 4), "smoke_ms": round(med["smoke"], 4),
                     "table_sum_error_pct": round(err(med["table_sum"], med["smoke"]), 1),
                     "table_error_pct": round(err(med["table"], med["smoke"]), 1)})
    deployed, factor = _correct_by_deployed(rows, cands)
    return {"model": name, "backend": bname, "rounds": rounds, "load_per_round": loads,
            "candidates": rows, "device_terms": terms,
            "deployed": deployed, "correction_factor": factor,
            "device_table_corrected": summary([r["table_corrected_error_pct"] for r in rows
                                               if r["id"] != deployed]),
            "in_graph": summary([r["error_pct"] for r in rows]),
            "layer_sum": summary([r["layer_sum_error_pct"] for r in rows]),
            "device_table_sum": summary([r["table_sum_error_pct"] for r in rows]),
            "device_table": summary([r["table_error_pct"] for r in rows])}


def _correct_by_deployed(rows: list[dict[str, Any]], cands: list[dict[str, Any]]
                         ) -> tuple[str, float]:
    """Each candidate's device-table estimate corrected by the pair of the unpruned FP32
    candidate (the deployed version: its table estimate, its smoke-test p50) as a job's
    latency model applies it (``LatencyModel.model_ms``: each precision's share of the
    layer time by its factor); adds ``table_corrected_ms`` and its error to every row.
    Returns that candidate's id and the FP32 factor."""
    base = max((c for c in cands if not c["precisions"]), key=lambda c: c["fraction"])
    row = next(r for r in rows if r["id"] == base["id"])
    corr = feedback.correction([feedback.Pair(row["table_ms"], row["smoke_ms"], "fp32",
                                              base["id"])])
    assert corr is not None
    for r, c in zip(rows, cands, strict=True):
        share = c["table_shares"]  # layer ms per precision under the table, median round
        total = sum(share.values()) or 1.0
        scale = sum(corr.factor(p) * v for p, v in share.items()) / total
        r["table_corrected_ms"] = round(r["table_ms"] * scale, 4)
        r["table_corrected_error_pct"] = round(err(r["table_ms"] * scale, r["smoke_ms"]), 1)
    return str(base["id"]), round(corr.factor("fp32"), 4)


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| model | backend | candidates | in-graph model: median / worst abs. error | "
             "layer sum alone | device table + its whole-model term vs smoke test | "
             "device table, layer sum alone | device table + term, corrected by one "
             "deployed version (factor; the others) |",
             "|---|---|---|---|---|---|---|---|"]
    def pair(s: dict[str, float]) -> str:
        return f"{s['median_abs_pct']} % / {s['worst_abs_pct']} %"

    for r in results:
        lines.append(f"| {r['model']} | {r['backend']} | {len(r['candidates'])} | "
                     f"{pair(r['in_graph'])} | {pair(r['layer_sum'])} | "
                     f"{pair(r['device_table'])} | {pair(r['device_table_sum'])} | "
                     f"{pair(r['device_table_corrected'])} (x{r['correction_factor']}) |")
    return "\n".join(lines)


def main() -> None:
    global THREADS, RUNS, QUICK
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=None, help="default resnet18,mobilenetv2 "
                    "(--quick: resnet18)")
    ap.add_argument("--backends", default=None, help="default onnxruntime,openvino "
                    "(--quick: onnxruntime)")
    ap.add_argument("--rounds", type=int, default=None, help="default 3 (--quick: 1)")
    ap.add_argument("--threads", type=int, default=THREADS)
    ap.add_argument("--quick", action="store_true",
                    help="a check that the script runs (a few minutes on 2 cores): ResNet-18 "
                         "on ONNX Runtime, one round, two rungs (6 candidates), 20 timed "
                         "runs per candidate; its figures are not the benchmark's")
    ap.add_argument("--out", type=Path, default=None, help="default "
                    "bench/results/latency_model.json (--quick: latency_model-quick.json)")
    args = ap.parse_args()
    import torch

    QUICK = args.quick
    args.models = args.models or ("resnet18" if QUICK else "resnet18,mobilenetv2")
    args.backends = args.backends or ("onnxruntime" if QUICK else "onnxruntime,openvino")
    args.rounds = args.rounds or (1 if QUICK else 3)
    args.out = args.out or ROOT / "bench/results" / (
        "latency_model-quick.json" if QUICK else "latency_model.json")
    if QUICK:
        RUNS = 20
    THREADS = args.threads
    torch.set_num_threads(THREADS)
    profile = detect_profile()
    data = load_dataset("fashion-mnist")
    results = []
    for name in args.models.split(","):
        for bname in args.backends.split(","):
            results.append(run(name, bname, args.rounds, data, profile))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({
                "machine": {"cpu": platform.processor() or platform.machine(),
                            "cores": os.cpu_count(), "threads": THREADS,
                            "load_at_end": os.getloadavg()},
                "results": results}, indent=1) + "\n")
    print(markdown(results))
    for r in results:
        print(f"\n{r['model']} / {r['backend']}")
        print(f"device whole-model term per round: {r['device_terms']}")
        print(f"corrected by the deployed {r['deployed']}: x{r['correction_factor']}")
        print("| candidate | layer sum ms | predicted ms | measured ms | error % | "
              "table sum ms | table + term ms | smoke ms | table error % | "
              "corrected ms | corrected error % |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for c in r["candidates"]:
            print(f"| {c['id']} | {c['layer_sum_ms']} | {c['predicted_ms']} | "
                  f"{c['measured_ms']} | {c['error_pct']} | {c['table_sum_ms']} | "
                  f"{c['table_ms']} | {c['smoke_ms']} | {c['table_error_pct']} | "
                  f"{c['table_corrected_ms']} | {c['table_corrected_error_pct']} |")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
