"""Strategy ``evolution``: Optuna's NSGA-II sampler over kept channels per group and, when
the run chooses precisions, FP32 or INT8 per layer.

Two objectives, the proxy and the estimated latency, with the latency target as Optuna's
constraint (``estimate - target <= 0``), so the population moves along the whole front
while the answer is the feasible plan of least proxy (the fastest one when none is
feasible). The first generation starts from uniform plans (every group at the same step
of its choices, every layer INT8), the smallest first, so a reachable target is always met;
they count toward the budget like any trial.
"""

from __future__ import annotations

from typing import Any

from hadmc_core.search.registry import register
from hadmc_core.search.space import Budget, Plan, Problem

#: the smallest plan first: it meets the target whenever any plan does
UNIFORM_STEPS = (0.0, 0.5, 0.25, 0.75, 1.0)


def _decode(pb: Problem, params: dict[str, Any]) -> tuple[dict[str, int], dict[str, str] | None]:
    keep = {g.root: pb.choices[g.root][params[f"k:{g.root}"]] for g in pb.groups}
    if not pb.chooses_precision:
        return keep, None
    return keep, {n: params[f"p:{n}"] for n in pb.order}


@register("evolution")
def evolution(problem: Problem, target_ms: float, budget: Budget) -> Plan:
    import optuna

    pb = problem
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.NSGAIISampler(
        population_size=max(8, min(50, budget.trials // 8)), seed=budget.seed)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    for step in UNIFORM_STEPS[:max(1, budget.trials // 10)]:
        seed: dict[str, Any] = {f"k:{g.root}": round(step * (len(pb.choices[g.root]) - 1))
                                for g in pb.groups}
        seed.update({f"p:{n}": "int8" for n in pb.order if pb.chooses_precision})
        study.enqueue_trial(seed)
    plans: list[tuple[float, float, dict[str, int], dict[str, str] | None]] = []

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        params: dict[str, Any] = {
            f"k:{g.root}": trial.suggest_int(f"k:{g.root}", 0, len(pb.choices[g.root]) - 1)
            for g in pb.groups}
        if pb.chooses_precision:
            params.update({f"p:{n}": trial.suggest_categorical(f"p:{n}", pb.precision_choices)
                           for n in pb.order})
        keep, prec = _decode(pb, params)
        ms, px = pb.evaluate(keep, prec)
        trial.set_constraint("latency", ms - target_ms)
        plans.append((ms, px, keep, prec))
        return px, ms

    study.optimize(objective, n_trials=budget.trials, timeout=budget.seconds)
    ok = [p for p in plans if p[0] <= target_ms + 1e-9]
    best = min(ok, key=lambda p: p[1]) if ok else min(plans, key=lambda p: p[0])
    return pb.plan(best[2], best[3], "evolution")
