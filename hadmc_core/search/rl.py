"""Strategy ``rl``: a PPO agent (Stable-Baselines3) that walks the layers in forward order,
as AMC (width) and HAQ (precision) do, and picks for each layer the width ratio of the
group it is the root of and, when the run chooses precisions, FP32 or INT8.

One episode builds one plan (one evaluated candidate); eight environments step together, so
each PPO update learns from eight episodes. An action is two numbers in [0, 1]:
the step of the group's channel choices and the precision (above 0.5: FP32). As in AMC,
the action is limited so the target stays reachable: the width is the largest choice at
or below the asked one whose estimate (groups not yet decided at their floors, layers not
yet decided in INT8) meets the target, and FP32 is refused where it would not. The reward,
at the end of the episode, is minus the plan's proxy over the proxy of the smallest plan.
The answer is the episode's plan of least proxy.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any

import numpy as np

from hadmc_core.search.registry import register
from hadmc_core.search.space import Budget, Plan, Problem

OBS = 15
ENVS = 8  # episodes per PPO update, stepped together


class _Best:
    """Episodes finished by all environments and the plan of least proxy among them."""

    def __init__(self) -> None:
        self.episodes = 0
        self.plan: tuple[float, dict[str, int], dict[str, str] | None] | None = None


class _Walk:
    """The episode's state machine, kept apart from gymnasium so it reads plainly."""

    def __init__(self, pb: Problem, target_ms: float, best: _Best) -> None:
        self.pb, self.target, self.record = pb, target_ms, best
        roots = {g.root for g in pb.groups}
        steps: list[tuple[str | None, str | None]] = [
            (n, n if n in roots else None) for n in pb.order]
        steps += [(None, r) for r in sorted(roots - set(pb.order))]
        self.steps = [(n, r) for n, r in steps if r is not None or pb.chooses_precision]
        self.cheap = "int8" if pb.chooses_precision else pb.precision
        self.worst = max(pb.worst_proxy(), 1e-12)
        self.share = {n: pb.layer_ms(n, pb.full, pb.precision) / max(pb.full_ms, 1e-12)
                      for n in pb.order}
        self.reset()

    def reset(self) -> np.ndarray:
        self.t, self.prev = 0, (1.0, 0.0)
        self.keep = dict(self.pb.floor)
        self.prec = {n: self.cheap for n in self.pb.order}
        return self.obs()

    def obs(self) -> np.ndarray:
        pb = self.pb
        if self.t >= len(self.steps):
            return np.zeros(OBS, np.float32)
        lname, root = self.steps[self.t]
        ly = pb.layers[lname] if lname is not None else None
        kind = ly.geom.kind if ly is not None else "conv"
        slack = (self.target - pb.latency(self.keep, self.prec)) / max(pb.full_ms, 1e-12)
        feats = [
            self.t / len(self.steps),
            kind == "conv", kind == "dwconv", kind == "linear",
            (ly.geom.k if ly else 1) / 7, (ly.geom.stride if ly else 1) / 2,
            math.log2(ly.cin if ly else 1) / 10, math.log2(ly.cout if ly else 1) / 10,
            math.log2((ly.geom.h * ly.geom.w if ly else 1) + 1) / 12,
            root is not None, len(pb.choices[root]) / 64 if root else 0.0,
            self.share.get(lname, 0.0) if lname else 0.0, slack, *self.prev]
        return np.asarray(feats, np.float32)

    def act(self, a0: float, a1: float) -> None:
        pb = self.pb
        lname, root = self.steps[self.t]
        if root is not None:
            choices = pb.choices[root]
            idx = int(round(min(max(a0, 0.0), 1.0) * (len(choices) - 1)))
            while idx > 0:
                if pb.latency({**self.keep, root: choices[idx]}, self.prec) <= self.target:
                    break
                idx -= 1
            self.keep[root] = choices[idx]
        if lname is not None and pb.chooses_precision and a1 > 0.5:
            self.prec[lname] = "fp32"
            if pb.latency(self.keep, self.prec) > self.target:
                self.prec[lname] = "int8"
        self.prev = (float(a0), float(a1))
        self.t += 1

    def finish(self) -> float:
        """Evaluate the episode's plan; the reward."""
        prec = self.prec if self.pb.chooses_precision else None
        _ms, px = self.pb.evaluate(self.keep, prec)
        self.record.episodes += 1
        if self.record.plan is None or px < self.record.plan[0]:
            self.record.plan = (px, dict(self.keep), dict(prec) if prec is not None else None)
        return -px / self.worst


def _env(walk: _Walk) -> Any:
    import gymnasium as gym

    class Env(gym.Env):  # type: ignore[misc]
        observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS,), np.float32)
        action_space = gym.spaces.Box(0.0, 1.0, (2,), np.float32)

        def reset(self, *, seed: int | None = None, options: dict | None = None
                  ) -> tuple[np.ndarray, dict]:
            super().reset(seed=seed)
            return walk.reset(), {}

        def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
            walk.act(float(action[0]), float(action[1]))
            done = walk.t >= len(walk.steps)
            return walk.obs(), walk.finish() if done else 0.0, done, False, {}

    return Env()


@register("rl")
def rl(problem: Problem, target_ms: float, budget: Budget) -> Plan:
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import DummyVecEnv

    best = _Best()
    walks = [_Walk(problem, target_ms, best) for _ in range(ENVS)]
    if not walks[0].steps:
        return problem.plan(problem.floor, None, "rl")
    horizon = len(walks[0].steps)
    deadline = None if budget.seconds is None else time.perf_counter() + budget.seconds

    class Stop(BaseCallback):  # type: ignore[misc]
        def _on_step(self) -> bool:
            over_time = deadline is not None and time.perf_counter() > deadline
            return best.episodes < budget.trials and not (over_time and best.plan)

    envs = DummyVecEnv([functools.partial(_env, w) for w in walks])
    agent = PPO("MlpPolicy", envs, n_steps=horizon, batch_size=horizon * ENVS, n_epochs=4,
                learning_rate=1e-3, gamma=1.0, gae_lambda=0.95, seed=budget.seed,
                device="cpu", verbose=0,
                policy_kwargs={"net_arch": [64, 64], "log_std_init": -1.0})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 64-unit MLP: more threads only wait on each other
    try:
        agent.learn(total_timesteps=budget.trials * horizon + 1, callback=Stop())
    finally:
        torch.set_num_threads(threads)
    assert best.plan is not None
    return problem.plan(best.plan[1], best.plan[2], "rl")
