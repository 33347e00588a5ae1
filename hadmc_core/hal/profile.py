"""Hardware profiles: validated descriptions of target devices (torch-free).

Built-in profiles live as YAML files in ``hadmc_core/hal/profiles/``; each cites the
public datasheet its figures come from. A profile can also be loaded from any YAML or
JSON file with the same fields.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hadmc_core.errors import ConfigError, UnknownNameError

Precision = Literal["fp32", "fp16", "bf16", "int8", "int4"]
PROFILE_DIR = Path(__file__).with_name("profiles")


class HardwareProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
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

    @model_validator(mode="after")
    def _consistent(self) -> HardwareProfile:
        missing = [p for p in self.precisions if p not in self.peak_gops]
        if missing:
            raise ValueError(f"peak_gops lacks supported precision(s) {', '.join(missing)}")
        if not {"fp32", "fp16"} & set(self.precisions):
            raise ValueError("precisions must include fp32 or fp16")
        if any(v <= 0 for v in self.peak_gops.values()):
            raise ValueError("peak_gops values must be > 0")
        return self

    def supports(self, p: str) -> bool:
        return p in self.precisions

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _summarize(e: ValidationError, source: str) -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(profile)"
        lines.append(f"{loc}: {err['msg']}")
    return f"invalid hardware profile {source}: " + "; ".join(lines)


def parse_profile(data: object, source: str = "") -> HardwareProfile:
    if not isinstance(data, dict):
        raise ConfigError(f"invalid hardware profile {source}: expected a mapping of fields")
    try:
        return HardwareProfile.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_summarize(e, source)) from e


def _read(path: Path) -> HardwareProfile:
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read hardware profile {path}: {e}") from e
    return parse_profile(data, str(path))


@lru_cache(maxsize=1)
def builtin_profiles() -> dict[str, HardwareProfile]:
    out = {}
    for path in sorted(PROFILE_DIR.glob("*.yaml")):
        prof = _read(path)
        out[prof.name] = prof
    return out


def list_profiles() -> list[str]:
    return sorted(builtin_profiles())


def load_profile(name_or_path: str) -> HardwareProfile:
    """A built-in profile by name, or one from a .yaml/.yml/.json file."""
    builtins = builtin_profiles()
    if name_or_path in builtins:
        return builtins[name_or_path].model_copy(deep=True)
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml", ".json") and path.is_file():
        return _read(path)
    raise UnknownNameError("profile", name_or_path, [*builtins, "<file>.yaml"])
