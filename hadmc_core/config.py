"""Technique configs: small versioned dataclasses that round-trip through JSON.

Every technique of the pipeline is a config dataclass registered here (``register_config``,
under its ``key``) plus a handler in its own module of ``hadmc_core.techniques``, registered
for the config's type. A job switches techniques on or off and tunes them through the
config, and the service stores it: ``PipelineConfig.from_dict(json.loads(cfg.to_json()))``
gives back ``cfg``. A technique registered outside this module is read from the JSON key
its config class names, so a new technique needs no change here. This module is torch-free
(the service validates job configs with it).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from hadmc_core.errors import ConfigError

T = TypeVar("T", bound="TechniqueConfig")
C = TypeVar("C", bound=type["TechniqueConfig"])
CONFIG_VERSION = 1


@dataclass
class TechniqueConfig:
    """Base of every technique config. ``key`` is its name in a pipeline config's JSON;
    ``VERSION`` changes when a field changes meaning."""

    key: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1
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


_CONFIG_TYPES: dict[str, type[TechniqueConfig]] = {}


def register_config(cls: C) -> C:
    """Class decorator: make a technique config readable from ``PipelineConfig`` JSON
    under ``cls.key``."""
    if not cls.key:
        raise ValueError(f"{cls.__name__} needs a non-empty class attribute 'key'")
    known = _CONFIG_TYPES.get(cls.key)
    if known is not None and known.__qualname__ != cls.__qualname__:
        raise ValueError(f"technique key {cls.key!r} is taken by {known.__name__}")
    _CONFIG_TYPES[cls.key] = cls
    return cls


def config_types() -> dict[str, type[TechniqueConfig]]:
    """Registered technique configs by JSON key."""
    return dict(_CONFIG_TYPES)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@register_config
@dataclass
class PruneConfig(TechniqueConfig):
    key: ClassVar[str] = "prune"
    importance: str = "taylor"          # taylor (gradient sensitivity) or l1 (magnitude)
    calib_batches: int = 8              # batches for first-order Taylor importance
    batch_size: int = 64
    min_keep: float = 0.1               # never keep fewer than this fraction per group
    uniform_ratio: float | None = None  # prune every group by this ratio (no search)
    round_to: int | None = None         # channel multiple; None = profile's
    size_weight: float = 1.0            # weight of parameters saved vs latency saved
    search: str = "greedy"              # strategy (hadmc_core.search): greedy, evolution, rl
    search_trials: int = 200            # candidate plans evolution / rl evaluate per rung
    # latency targets tried, most aggressive first: fractions of the latency that pruning
    # can remove (0 = every group at min_keep, 1 = unpruned). The unpruned rung (1.0) is
    # measured after the pruned ones whatever they gave and does not count towards
    # max_candidates: the run's answer is never worse than the unpruned model quantized
    # (hadmc_core.pipeline). Leave 1.0 out to consider pruned models only.
    ladder: list[float] = field(default_factory=lambda: [0.2, 0.3, 0.45, 0.65, 1.0])
    #: when the most aggressive rung so far meets every constraint with its drop bound at
    #: most this fraction of the accuracy limit, a rung halfway to the floor is tried next,
    #: within max_candidates (0: stop at the first rung that meets them)
    descend_below: float = 0.5
    #: how the ladder's fractions become latency targets: "measured" times the model
    #: pruned by the search at a few estimated fractions (whole, at the search precision,
    #: with the run's backend) and places each rung at that fraction of the measured
    #: removable latency; "estimate" uses the latency model's estimate alone. Measured
    #: applies only where the latency is measured on this machine.
    ladder_by: str = "measured"
    #: the order pruned rungs are tried in (``pipeline.Walk``): "bisect" (the middle rung
    #: first, then halving towards the deepest rung that holds) or "aggressive" (the
    #: deepest first, then milder ones until one holds)
    order: str = "bisect"

    def validate(self) -> None:
        _check(self.order in ("bisect", "aggressive"), "prune.order: 'bisect' or 'aggressive'")
        _check(self.ladder_by in ("measured", "estimate"),
               "prune.ladder_by: 'measured' or 'estimate'")
        _check(self.importance in ("taylor", "l1"), "prune.importance: 'taylor' or 'l1'")
        _check(0 < self.min_keep <= 1, "prune.min_keep must be in (0, 1]")
        _check(self.uniform_ratio is None or 0 <= self.uniform_ratio < 1,
               "prune.uniform_ratio must be in [0, 1)")
        _check(bool(self.ladder) and all(0 <= f <= 1 for f in self.ladder),
               "prune.ladder: fractions of the removable latency, in [0, 1]")
        _check(self.search_trials >= 1, "prune.search_trials must be >= 1")
        _check(0 <= self.descend_below <= 1, "prune.descend_below must be in [0, 1]")
        from hadmc_core import search  # torch-free; strategies may be registered by plug-ins

        _check(self.search in search.names(),
               f"prune.search: one of {', '.join(search.names())}, not {self.search!r}")


@register_config
@dataclass
class DistillConfig(TechniqueConfig):
    """Recovery training of a pruned student. ``alpha_kd == beta_feature == 0`` is plain
    fine-tuning with the task's loss (no teacher)."""

    key: ClassVar[str] = "distill"
    epochs: float = 2.0
    samples: int | None = 12000         # fine-tune subset size per epoch (None = all)
    batch_size: int = 128
    lr: float = 0.02
    temperature: float = 4.0
    alpha_kd: float = 0.7               # weight of the KL term (1 - alpha on the task loss)
    beta_feature: float = 1.0           # weight of the feature-alignment term
    feature_stages: int = 2             # align the last N stages (or found feature points)
    device: str = "auto"
    precision: str = "auto"             # bf16 autocast where native (auto), or fp32 / bf16
    #: recovery grows with what pruning removed: epochs x (1 + removed_scale x the fraction
    #: of the model's MACs removed), at most max_epochs
    removed_scale: float = 2.0
    max_epochs: float = 12.0
    #: training images with teacher logits: 0 = the fine-tune subset only, None = all; the
    #: ones beyond the subset get the output terms but no feature term (same step count)
    logit_samples: int | None = 0
    schedule: str = "onecycle"          # learning rate: onecycle, cosine or constant

    def validate(self) -> None:
        _check(self.epochs > 0, "distill.epochs must be > 0")
        _check(self.removed_scale >= 0, "distill.removed_scale must be >= 0")
        _check(self.max_epochs >= self.epochs, "distill.max_epochs must be >= distill.epochs")
        _check(self.logit_samples is None or self.logit_samples >= 0,
               "distill.logit_samples must be >= 0 (0: the subset only) or null (all)")
        _check(self.schedule in ("onecycle", "cosine", "constant"),
               "distill.schedule: onecycle|cosine|constant")
        _check(self.precision in ("auto", "fp32", "bf16"), "distill.precision: auto|fp32|bf16")
        _check(0 <= self.alpha_kd <= 1, "distill.alpha_kd must be in [0, 1]")
        _check(self.temperature > 0, "distill.temperature must be > 0")
        _check(self.feature_stages >= 0, "distill.feature_stages must be >= 0")

    @property
    def plain_finetune(self) -> bool:
        return self.alpha_kd == 0 and self.beta_feature == 0


@register_config
@dataclass
class FuseConfig(TechniqueConfig):
    key: ClassVar[str] = "fuse"
    tolerance: float = 1e-4


@register_config
@dataclass
class QuantizeConfig(TechniqueConfig):
    key: ClassVar[str] = "quantize"
    calib_samples: int = 512
    sensitivity_samples: int = 256
    per_channel: bool = True
    reduce_range: str = "auto"          # auto: on when the profile lacks int8 dot-product
    keep_ladder: list[int] = field(default_factory=lambda: [0, 1, 2, 4, 8])

    def validate(self) -> None:
        _check(self.reduce_range in ("auto", "on", "off"), "quantize.reduce_range: auto|on|off")
        _check(bool(self.keep_ladder) and all(k >= 0 for k in self.keep_ladder),
               "quantize.keep_ladder: counts of layers kept in floating point, >= 0")


@register_config
@dataclass
class Int4Config(TechniqueConfig):
    """INT4 weight-only MatMul (ONNX Runtime ``MatMulNBits``), tried when MatMul/Gemm
    weights are at least ``min_weight_fraction`` of the model's parameter bytes."""

    key: ClassVar[str] = "int4"
    min_weight_fraction: float = 0.25
    block_size: int = 32
    symmetric: bool = True

    def validate(self) -> None:
        _check(0 <= self.min_weight_fraction <= 1, "int4.min_weight_fraction must be in [0, 1]")
        _check(self.block_size >= 16 and self.block_size & (self.block_size - 1) == 0,
               "int4.block_size must be a power of two >= 16")


@register_config
@dataclass
class MeasureConfig(TechniqueConfig):
    key: ClassVar[str] = "measure"
    runs: int = 50
    warmup: int = 10
    threads: int | None = None
    in_graph: bool = True               # fit the latency model to in-model layer times
    #: measure what a user would run instead (FP32 on each CPU runtime, NNCF PTQ INT8 on
    #: OpenVINO) beside the chosen model when the target is this machine (``references``)
    references: bool = True


@dataclass
class Constraints:
    max_accuracy_drop: float = 1.0      # points of the task's metric (top-1 for classification)
    latency_budget_ms: float | None = None
    size_budget_mb: float | None = None
    #: one-sided confidence that a candidate's drop is within max_accuracy_drop, from a
    #: paired bound on the validation split (hadmc_core.decision); 0.5 = point estimate
    confidence: float = 0.95
    #: validation images the decisions use: "auto" (enough for the limit where the training
    #: split can spare them, ``decision.auto_validation_size``), "dataset" (its own split) or
    #: a number (the dataset's split topped up from the end of the training split)
    validation_images: int | str = "auto"
    #: wall seconds the job may take: a pruned rung is tried only when it (at the cost of
    #: the last one), the unpruned rung and the final measurements fit (``pipeline``)
    time_budget_s: float | None = None

    def __post_init__(self) -> None:
        _check(0.5 <= self.confidence < 1, "constraints.confidence must be in [0.5, 1)")
        _check(self.time_budget_s is None or self.time_budget_s > 0,
               "constraints.time_budget_s must be > 0 seconds")
        v = self.validation_images
        _check(v in ("auto", "dataset") or (isinstance(v, int) and not isinstance(v, bool)
                                            and v >= 1),
               f"constraints.validation_images: 'auto', 'dataset' or a number >= 1, not {v!r}")


#: Built-in techniques: attributes of ``PipelineConfig`` (their JSON keys).
BUILTIN = ("prune", "distill", "fuse", "quantize", "int4", "measure")


@dataclass
class PipelineConfig:
    prune: PruneConfig = field(default_factory=PruneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    fuse: FuseConfig = field(default_factory=FuseConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    int4: Int4Config = field(default_factory=Int4Config)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    constraints: Constraints = field(default_factory=Constraints)
    max_candidates: int = 4             # pruned rungs tried at most (the unpruned one is extra)
    seed: int = 0
    version: int = CONFIG_VERSION
    #: techniques registered beyond the built-in ones (JSON: a top-level key each)
    extra: list[TechniqueConfig] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.extra = sorted(self.extra, key=lambda c: c.key)
        keys = [c.key for c in self.extra]
        clash = sorted({k for k in keys if keys.count(k) > 1 or k in BUILTIN})
        if clash:
            raise ConfigError(f"pipeline config: technique(s) {', '.join(clash)} given twice")

    def techniques(self) -> list[TechniqueConfig]:
        """Every technique config (measurement aside), built-in ones first."""
        return [self.prune, self.distill, self.fuse, self.quantize, self.int4, *self.extra]

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: dataclasses.asdict(self)[f.name] for f in dataclasses.fields(self)
               if f.name != "extra"}
        out.update({c.key: c.to_dict() for c in self.extra})
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> PipelineConfig:
        data = dict(data or {})
        types = config_types()
        kw: dict[str, Any] = {k: types[k].from_dict(data.pop(k, None)) for k in BUILTIN}
        extra = [types[k].from_dict(data.pop(k)) for k in list(data)
                 if k in types and k not in BUILTIN]
        cons = data.pop("constraints", None) or {}
        scalars = {"max_candidates", "seed", "version"}
        unknown = sorted(set(data) - scalars)
        if unknown:
            raise ConfigError(f"pipeline config: unknown key(s) {', '.join(unknown)}; valid: "
                              f"{', '.join(sorted({*types, *scalars, 'constraints'}))}")
        try:
            kw["constraints"] = Constraints(**cons)
            cfg = cls(**kw, **data, extra=extra)
        except TypeError as e:
            raise ConfigError(f"pipeline config: {e}") from e
        if cfg.version != CONFIG_VERSION:
            raise ConfigError(f"pipeline config version {cfg.version} is not supported "
                              f"(this HAD-MC reads version {CONFIG_VERSION})")
        return cfg
