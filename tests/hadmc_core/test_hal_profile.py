from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from hadmc_core.cli.profile import app
from hadmc_core.errors import ConfigError, UnknownNameError
from hadmc_core.hal import builtin_profiles, detect_profile, list_profiles, load_profile
from hadmc_core.hal.profile import parse_profile

REQUIRED = {"x86-avx512-vnni", "x86-avx2", "arm64-generic", "jetson-orin", "ascend-310",
            "mlu370"}


def test_builtins_present_and_round_trip():
    assert set(list_profiles()) >= REQUIRED
    for name, prof in builtin_profiles().items():
        assert prof.source and all(prof.peak_gops[p] > 0 for p in prof.precisions), name
        assert parse_profile(yaml.safe_load(prof.to_yaml())) == prof


@pytest.mark.parametrize("mutate,field", [
    (lambda d: d.pop("cores"), "cores"),
    (lambda d: d.update(precisions=["fp32", "int3"]), "precisions"),
    (lambda d: d.update(precisions=["fp32", "fp16"]), "peak_gops lacks"),
    (lambda d: d.update(memory_bandwidth_gbs=-1), "memory_bandwidth_gbs"),
    (lambda d: d.update(colour="blue"), "colour"),
], ids=["missing-field", "unknown-precision", "precision-without-peak", "negative", "extra"])
def test_invalid_profile_names_the_field(tmp_path, mutate, field):
    data = yaml.safe_load(load_profile("x86-avx2").to_yaml())
    mutate(data)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=field):
        load_profile(str(path))


def test_unknown_profile_lists_valid_names():
    with pytest.raises(UnknownNameError, match="jetson-orin"):
        load_profile("tpu-v9")


def test_detect_describes_this_machine():
    prof = detect_profile("here")
    assert prof.cores >= 1 and prof.memory_bandwidth_gbs > 0 and "int8" in prof.precisions
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if " avx2" in cpuinfo:
        assert "avx2" in prof.flags and prof.isa == "x86_64"


def test_cli():
    runner = CliRunner()
    res = runner.invoke(app, ["list"])
    assert res.exit_code == 0 and "ascend-310" in res.output
    res = runner.invoke(app, ["show", "jetson-orin"])
    assert res.exit_code == 0 and yaml.safe_load(res.output)["accelerator"] == "gpu"
    res = runner.invoke(app, ["show", "nope"])
    assert res.exit_code == 2 and "unknown profile 'nope'" in res.output
