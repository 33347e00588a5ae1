import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from hadmc_core.cli.profile import app
from hadmc_core.errors import ConfigError, InputFileError, UnknownNameError
from hadmc_core.hal import (
    HardwareProfile,
    builtin_profiles,
    detect_cpu_info,
    detect_profile,
    list_profiles,
    load_profile,
)
from hadmc_core.hal.profile import PROFILE_DIR, parse_profile

REQUIRED = ["x86-avx512-vnni", "x86-avx2", "x86-openvino", "arm64-generic", "jetson-orin",
            "ascend-310", "mlu370"]


def _cpuinfo_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def _valid() -> dict:
    return yaml.safe_load(load_profile("x86-avx2").to_yaml())


def test_builtin_names():
    assert list_profiles() == sorted(REQUIRED)
    assert sorted(builtin_profiles()) == list_profiles()


@pytest.mark.parametrize("name", REQUIRED)
def test_builtin_validates_cites_and_round_trips(name):
    prof = load_profile(name)
    assert prof.name == name
    assert all(prof.peak_gops[p] > 0 for p in prof.precisions)
    assert prof.supports(prof.precisions[0]) and not prof.supports("int4")
    assert parse_profile(yaml.safe_load(prof.to_yaml())) == prof
    assert HardwareProfile.model_validate_json(prof.model_dump_json()) == prof
    comments = [ln for ln in (PROFILE_DIR / f"{name}.yaml").read_text().splitlines()
                if ln.startswith("#")]
    assert any("http" in ln for ln in comments), "each built-in cites a datasheet URL"


def test_accelerator_figures_match_datasheets():
    assert load_profile("ascend-310").peak_gops == {"fp16": 8000.0, "int8": 16000.0}
    orin = load_profile("jetson-orin")
    assert orin.accelerator == "gpu" and "tensorrt" in orin.runtimes
    assert load_profile("mlu370").runtimes == ["neuware"]
    avx2 = load_profile("x86-avx2")  # cores x GHz x ops/cycle, as its comment shows
    assert avx2.peak_gops["fp32"] == pytest.approx(2 * 2.25 * 32)


def test_builtin_profiles_returns_copies():
    builtin_profiles()["x86-avx2"].cores = 99
    assert load_profile("x86-avx2").cores == 2


@pytest.mark.parametrize("mutate,expected", [
    (lambda d: d.pop("cores"), "cores: Field required"),
    (lambda d: d.update(precisions=["fp32", "int3"]), "precisions.1:"),
    (lambda d: d.update(precisions=["fp32", "fp16"]), "peak_gops: no peak for supported "
                                                      "precision(s) fp16"),
    (lambda d: d.update(precisions=["int8"]), "precisions: must include fp32 or fp16"),
    (lambda d: d["peak_gops"].update(int8=0), "peak_gops: peaks must be > 0"),
    (lambda d: d.update(memory_bandwidth_gbs=-1), "memory_bandwidth_gbs:"),
    (lambda d: d.update(colour="blue"), "colour: Extra inputs"),
], ids=["missing-field", "unknown-precision", "precision-without-peak", "no-float",
        "zero-peak", "negative-bandwidth", "extra-field"])
def test_invalid_profile_names_the_field(tmp_path, mutate, expected):
    data = _valid()
    mutate(data)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as exc:
        load_profile(str(path))
    assert expected in str(exc.value)
    assert str(path) in str(exc.value).splitlines()[0]


def test_errors_are_one_line_per_field(tmp_path):
    data = _valid()
    del data["cores"], data["source"]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as exc:
        load_profile(str(path))
    lines = str(exc.value).splitlines()[1:]
    assert [ln.split(":")[0].strip() for ln in lines] == ["cores", "source"]


def test_custom_profile_file_loads(tmp_path):
    data = _valid() | {"name": "my-board", "threads": 1}
    path = tmp_path / "board.yml"
    path.write_text(yaml.safe_dump(data))
    prof = load_profile(str(path))
    assert prof.name == "my-board" and prof.threads == 1


@pytest.mark.parametrize("content", ["- just\n- a list\n", "cores: [unclosed\n"],
                         ids=["not-a-mapping", "bad-yaml"])
def test_unreadable_profile_file(tmp_path, content):
    path = tmp_path / "p.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=str(path)):
        load_profile(str(path))


def test_unknown_profile_lists_valid_names():
    with pytest.raises(UnknownNameError) as exc:
        load_profile("tpu-v9")
    assert exc.value.valid == list_profiles()
    assert "unknown profile 'tpu-v9'" in str(exc.value) and "jetson-orin" in str(exc.value)


def test_missing_profile_file(tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        load_profile(str(tmp_path / "gone.yaml"))


@pytest.fixture(scope="module")
def detected() -> HardwareProfile:
    return detect_profile("here")


def test_detect_describes_this_machine(detected):
    info = detect_cpu_info()
    assert detected.name == "here" and detected.accelerator == "cpu"
    assert detected.cores == info["cores"] >= 1
    assert detected.memory_bandwidth_gbs > 0 and "int8" in detected.precisions
    assert detected.peak_gops["int8"] >= detected.peak_gops["fp32"] > 0
    assert detected.source.startswith("detected on ")
    assert set(detected.flags) <= set(info["flags"])
    assert parse_profile(yaml.safe_load(detected.to_yaml())) == detected
    json.dumps(info)  # the agent sends it as JSON


@pytest.mark.skipif("avx2" not in _cpuinfo_flags(), reason="needs an x86-64 CPU with AVX2")
def test_detect_avx2_machine(detected):
    assert detected.isa == "x86_64" and {"avx2", "fma"} <= set(detected.flags)
    assert detected.channel_multiple == 8
    # cores x GHz x ops/cycle: 32 with AVX2 FMA (2 pipes x 8 lanes x 2), 64 with AVX-512
    ops_per_cycle = detected.peak_gops["fp32"] / (detected.cores * detect_cpu_info()["ghz"])
    assert round(ops_per_cycle) in (32, 64)


def test_cli_list():
    res = CliRunner().invoke(app, ["list"])
    assert res.exit_code == 0, res.output
    for name in REQUIRED:
        assert name in res.output
    assert "16000" in res.output  # Ascend 310 INT8 GOPS


def test_cli_show_builtin_and_file(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["show", "jetson-orin"])
    assert res.exit_code == 0
    assert parse_profile(yaml.safe_load(res.stdout)) == load_profile("jetson-orin")
    path = tmp_path / "p.yaml"
    path.write_text(res.stdout)
    res = runner.invoke(app, ["show", str(path)])
    assert res.exit_code == 0 and yaml.safe_load(res.stdout)["accelerator"] == "gpu"


def test_cli_show_errors(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["show", "nope"])
    assert res.exit_code == 2 and "unknown profile 'nope'" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_valid() | {"precisions": ["fp32", "int3"]}))
    res = runner.invoke(app, ["show", str(bad)])
    assert res.exit_code == 2 and "precisions.1" in res.output


def test_cli_detect_writes_file(tmp_path):
    path = tmp_path / "sub" / "me.yaml"
    res = CliRunner().invoke(app, ["detect", "--name", "me", "--out", str(path)])
    assert res.exit_code == 0, res.output
    assert load_profile(str(path)).name == "me"
    assert yaml.safe_load(res.stdout)["name"] == "me"
    assert not list(path.parent.glob(".*.tmp"))
