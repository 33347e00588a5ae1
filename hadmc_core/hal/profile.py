"""Hardware profiles: validated descriptions of target devices (torch-free).

Built-in profiles live as YAML files in ``hadmc_core/hal/profiles/``; each cites the
public datasheet its figures come from. A profile can also be loaded from any YAML or
JSON file with the same fields (see docs/hal.md).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hadmc_core.errors import ConfigError, InputFileError, UnknownNameError

Precision = Literal["fp32", "fp16", "bf16", "int8", "int4"]
PROFILE_DIR = Path(__file__).with_name("profiles")
PROFILE_SUFFIXES = (".yaml", ".yml", ".json")


class HardwareProfile(BaseModel):
    """One target device: what it computes, how fast, and with which runtimes.

    ``peak_gops`` counts one multiply-accumulate as two operations.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str
    isa: Literal["x86_64", "arm64", "other"]
    accelerator: Literal["cpu", "gpu", "npu"]
    cores: int = Field(gt=0)
    memory_gb: float = Field(gt=0)
    peak_gops: dict[Precision, float]
    memory_bandwidth_gbs: float = Field(gt=0)
    precisions: list[Precision] = Field(min_length=1)
    runtimes: list[str] = Field(min_length=1)
    int4_weight_only: bool = False
    channel_multiple: int = Field(default=1, ge=1)
    flags: list[str] = Field(default_factory=list)
    threads: int | None = Field(default=None, gt=0)
    source: str = Field(min_length=1)

    @field_validator("peak_gops")
    @classmethod
    def _positive_peaks(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [p for p, g in v.items() if not g > 0]
        if bad:
            raise ValueError(f"peaks must be > 0 GOPS (got {', '.join(bad)})")
        return v

    @field_validator("precisions")
    @classmethod
    def _float_precision(cls, v: list[str]) -> list[str]:
        if not {"fp32", "fp16"} & set(v):
            raise ValueError("must include fp32 or fp16")
        if len(set(v)) != len(v):
            raise ValueError("lists a precision twice")
        return v

    @model_validator(mode="after")
    def _peak_for_each_precision(self) -> HardwareProfile:
        missing = [p for p in self.precisions if p not in self.peak_gops]
        if missing:
            raise ValueError(f"peak_gops: no peak for supported precision(s) {', '.join(missing)}"
                             f"; add e.g. '{missing[0]}: <GOPS>' under peak_gops")
        return self

    def supports(self, p: Precision | str) -> bool:
        return p in self.precisions

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, width=1000)


def _summarize(e: ValidationError, source: str) -> str:
    """One line per failing field, e.g. ``cores: Field required``."""
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {loc}: {msg}" if loc else f"  {msg}")
    return f"invalid hardware profile {source or '(data)'}:\n" + "\n".join(lines)


def parse_profile(data: object, source: str = "") -> HardwareProfile:
    """Validate a mapping into a profile; ConfigError with one line per bad field."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid hardware profile {source or '(data)'}: "
                          "expected a mapping of fields")
    try:
        return HardwareProfile.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_summarize(e, source)) from e


def _read(path: Path) -> HardwareProfile:
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read hardware profile {path}: {e}") from e
    return parse_profile(data, str(path))


@lru_cache(maxsize=1)
def _builtins() -> dict[str, HardwareProfile]:
    found = {}
    for path in sorted(PROFILE_DIR.glob("*.yaml")):
        prof = _read(path)
        if prof.name != path.stem:
            raise ConfigError(f"built-in profile {path} is named {prof.name!r}; "
                              f"expected {path.stem!r}")
        found[prof.name] = prof
    return found


def builtin_profiles() -> dict[str, HardwareProfile]:
    """Name -> profile for every built-in (fresh copies; callers may modify them)."""
    return {name: p.model_copy(deep=True) for name, p in _builtins().items()}


def list_profiles() -> list[str]:
    return sorted(_builtins())


def load_profile(name_or_path: str) -> HardwareProfile:
    """A built-in profile by name, or one from a .yaml/.yml/.json file."""
    builtins = _builtins()
    if name_or_path in builtins:
        return builtins[name_or_path].model_copy(deep=True)
    path = Path(name_or_path)
    if path.is_file():
        return _read(path)
    if path.suffix.lower() in PROFILE_SUFFIXES:
        raise InputFileError(f"hardware profile file {path} does not exist; built-in names: "
                             f"{', '.join(list_profiles())}")
    raise UnknownNameError("profile", name_or_path, list_profiles())
