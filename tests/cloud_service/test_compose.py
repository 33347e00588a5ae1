"""docker-compose.yml and the Dockerfiles name only paths and commands that exist
(no Docker engine here, so this is what can be checked)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import typer
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def _hadmc_commands() -> dict:
    from hadmc_core.cli import _register, app

    _register()
    group = typer.main.get_command(app)
    return group.commands  # type: ignore[attr-defined]


def _check_command(argv: list[str]) -> None:
    if argv[0] == "hadmc":
        commands = _hadmc_commands()
        assert argv[1] in commands, f"`hadmc {argv[1]}` does not exist"
        cmd = commands[argv[1]]
        if hasattr(cmd, "commands") and len(argv) > 2:
            assert argv[2] in cmd.commands, f"`hadmc {argv[1]} {argv[2]}` does not exist"
        options = {o for p in cmd.params for o in getattr(p, "opts", [])}
        for arg in argv[2:]:
            if arg.startswith("--"):
                assert arg in options, f"`hadmc {argv[1]}` has no option {arg}"
    elif argv[:2] == ["python", "-m"]:
        assert importlib.util.find_spec(argv[2]) is not None, f"no module {argv[2]}"
    else:
        pytest.fail(f"unexpected command {argv}")


@pytest.mark.parametrize("name", [n for n, s in SERVICES.items() if "build" in s])
def test_built_services_name_existing_files_and_commands(name: str) -> None:
    svc = SERVICES[name]
    context = ROOT / svc["build"]["context"]
    dockerfile = context / svc["build"]["dockerfile"]
    assert dockerfile.is_file()
    text = dockerfile.read_text()
    assert re.search(r"^USER (?!root)\w+", text, re.M), "runs as root"
    assert len(re.findall(r"^FROM \S+:\S+", text, re.M)) >= 2, "not multi-stage/pinned"
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
        for src in line.split()[:-1]:
            assert (context / src).exists(), f"{dockerfile.name}: COPY {src} does not exist"
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert cmd is not None
    _check_command(json.loads(cmd.group(1)))
    _check_command(svc["command"])


def test_api_waits_for_migrations_and_env_is_complete() -> None:
    assert SERVICES["migrate"]["command"] == ["hadmc", "db", "upgrade"]
    for name in ("api", "worker"):
        deps = SERVICES[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        from cloud_service.settings import Settings

        fields = {f"HADMC_{k.upper()}" for k in Settings.model_fields}
        assert set(SERVICES[name]["environment"]) <= fields
    assert {"postgres", "redis", "api", "worker", "agent-1", "agent-2"} <= set(SERVICES)
