"""Library settings: the only place hadmc_core reads the environment (prefix ``HADMC_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class CoreSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HADMC_", extra="ignore")

    #: Where Debian's ``dataset-fashion-mnist`` installs the IDX files.
    fashion_mnist_dir: Path = Path("/usr/share/datasets/fashion-mnist")
    #: Cache for latency lookup tables and other derived data.
    cache_dir: Path = Path.home() / ".cache" / "hadmc"
    #: Threads for ONNX Runtime measurements and torch; 0 = all cores.
    threads: int = 0


@lru_cache(maxsize=1)
def get_settings() -> CoreSettings:
    return CoreSettings()
