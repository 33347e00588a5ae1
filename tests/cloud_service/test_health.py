from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from cloud_service.app import create_app
from cloud_service.settings import Settings
from tests.cloud_service.conftest import make_settings


def test_healthz_and_readyz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["checks"] == {"database": "ok", "broker": "ok"}


def test_readyz_reports_a_dead_broker(tmp_path: Path, settings: Settings) -> None:
    down = make_settings(tmp_path, database_url=settings.database_url,
                         broker_url="redis://127.0.0.1:1/0")
    with TestClient(create_app(down)) as c:
        r = c.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["database"] == "ok"
    assert r.json()["checks"]["broker"].startswith("error")


def test_metrics(client: TestClient, auth: dict) -> None:
    client.get("/v1/models/424242", headers=auth)
    text = client.get("/metrics").text
    assert 'hadmc_http_requests_total{method="GET",route="/v1/models/{model_id}",status="404"}' \
        in text
    assert "hadmc_http_request_seconds_bucket" in text
    assert "hadmc_jobs" in text


def test_openapi_documents_every_operation(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert op.get("summary"), f"{method} {path} has no summary"
    assert "application/octet-stream" in \
        spec["paths"]["/v1/models"]["post"]["requestBody"]["content"]
