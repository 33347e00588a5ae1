"""Technique configs: small dataclasses that round-trip through JSON.

Every technique of the pipeline is a config dataclass registered here plus a handler in
its own module, so a job can switch techniques on or off and the service can store the
config. ``PipelineConfig.from_dict(json.loads(cfg.to_json()))`` gives back ``cfg``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hadmc_core.errors import ConfigError

T = TypeVar("T", bound="TechniqueConfig")
CONFIG_VERSION = 1


@dataclass
class TechniqueConfig:
    enabled: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any] | None) -> T:
        data = dict(data or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown option(s) {', '.join(unknown)}; "
                              f"valid: {', '.join(sorted(names))}")
        try:
            obj = cls(**data)
        except TypeError as e:
            raise ConfigError(f"{cls.__name__}: {e}") from e
        obj.validate()
        return obj

    def validate(self) -> None:
        """Raise ConfigError on an invalid value."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass
class PruneConfig(TechniqueConfig):
    importance: str = "taylor"          # taylor (gradient sensitivity) or l1 (magnitude)
    calib_batches: int = 8              # batches for first-order Taylor importance
    batch_size: int = 64
    min_keep: float = 0.1               # never keep fewer than this fraction per group
    uniform_ratio: float | None = None  # prune every group by this ratio (no search)
    round_to: int | None = None         # channel multiple; None = profile's
    size_weight: float = 1.0            # weight of parameters saved vs latency saved
    # latency targets tried, most aggressive first: fractions of the latency that pruning
    # can remove (0 = every group at min_keep, 1 = unpruned)
    ladder: list[float] = field(default_factory=lambda: [0.2, 0.3, 0.45, 0.65, 1.0])

    def validate(self) -> None:
        _check(self.importance in ("taylor", "l1"), "prune.importance: 'taylor' or 'l1'")
        _check(0 < self.min_keep <= 1, "prune.min_keep must be in (0, 1]")
        _check(self.uniform_ratio is None or 0 <= self.uniform_ratio < 1,
               "prune.uniform_ratio must be in [0, 1)")
        _check(bool(self.ladder) and all(0 <= f <= 1 for f in self.ladder),
               "prune.ladder: fractions of the removable latency, in [0, 1]")


@dataclass
class DistillConfig(TechniqueConfig):
    epochs: float = 2.0
    samples: int | None = 12000         # fine-tune subset size per epoch (None = all)
    batch_size: int = 128
    lr: float = 0.02
    temperature: float = 4.0
    alpha_kd: float = 0.7               # weight of the KL term (1 - alpha on cross-entropy)
    beta_feature: float = 1.0           # weight of the feature-alignment term
    feature_stages: int = 2             # align the last N stages of the architecture
    device: str = "auto"
    precision: str = "auto"             # bf16 autocast where native (auto), or fp32 / bf16

    def validate(self) -> None:
        _check(self.epochs > 0, "distill.epochs must be > 0")
        _check(self.precision in ("auto", "fp32", "bf16"), "distill.precision: auto|fp32|bf16")
        _check(0 <= self.alpha_kd <= 1, "distill.alpha_kd must be in [0, 1]")
        _check(self.temperature > 0, "distill.temperature must be > 0")


@dataclass
class FuseConfig(TechniqueConfig):
    tolerance: float = 1e-4


@dataclass
class QuantizeConfig(TechniqueConfig):
    calib_samples: int = 512
    sensitivity_samples: int = 256
    per_channel: bool = True
    reduce_range: str = "auto"          # auto: on when the profile lacks int8 dot-product
    keep_ladder: list[int] = field(default_factory=lambda: [0, 1, 2, 4, 8])

    def validate(self) -> None:
        _check(self.reduce_range in ("auto", "on", "off"), "quantize.reduce_range: auto|on|off")


@dataclass
class MeasureConfig(TechniqueConfig):
    runs: int = 50
    warmup: int = 10
    threads: int | None = None
    in_graph: bool = True               # fit the latency model to in-model layer times


@dataclass
class Constraints:
    max_accuracy_drop: float = 1.0      # points of top-1
    latency_budget_ms: float | None = None
    size_budget_mb: float | None = None


@dataclass
class PipelineConfig:
    prune: PruneConfig = field(default_factory=PruneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    fuse: FuseConfig = field(default_factory=FuseConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    constraints: Constraints = field(default_factory=Constraints)
    max_candidates: int = 4
    seed: int = 0
    version: int = CONFIG_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> PipelineConfig:
        data = dict(data or {})
        kinds = {"prune": PruneConfig, "distill": DistillConfig, "fuse": FuseConfig,
                 "quantize": QuantizeConfig, "measure": MeasureConfig}
        kw: dict[str, Any] = {k: c.from_dict(data.pop(k, None)) for k, c in kinds.items()}
        cons = data.pop("constraints", None) or {}
        try:
            kw["constraints"] = Constraints(**cons)
            cfg = cls(**kw, **data)
        except TypeError as e:
            raise ConfigError(f"pipeline config: {e}") from e
        if cfg.version != CONFIG_VERSION:
            raise ConfigError(f"pipeline config version {cfg.version} is not supported "
                              f"(this HAD-MC reads version {CONFIG_VERSION})")
        return cfg
