"""The device side of rollouts: desired version with ETag/304, update reports, tags, bytes
counted per device and rollout, and bad input answered with problem+json 4xx."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cloud_service.settings import Settings
from tests.cloud_service.conftest import make_onnx, publish_onnx
from tests.cloud_service.rollout_helpers import create, desired, fleet, report


@pytest.fixture(scope="module")
def versions(client: TestClient, auth: dict, tiny_model: dict,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    tmp = tmp_path_factory.mktemp("desired")
    w1 = np.random.default_rng(3).standard_normal((64, 64)).astype(np.float32)
    w2 = w1.copy()
    w2[:4] += 1.0
    return tuple(publish_onnx(client, auth, tiny_model["id"],  # type: ignore[return-value]
                              make_onnx(tmp / f"{i}.onnx", w).read_bytes())
                 for i, w in ((1, w1), (2, w2)))


def _abort(client: TestClient, auth: dict, rollout: dict) -> None:
    assert client.post(f"/v1/rollouts/{rollout['id']}/abort", headers=auth).status_code == 200


def test_desired_etag_and_304(client: TestClient, auth: dict,
                              versions: tuple[dict, dict]) -> None:
    v1, v2 = versions
    [dev] = fleet(client, auth, 1, v1["id"])
    url = f"/v1/devices/{dev.id}/desired"
    first = client.get(url, headers=dev.headers)
    assert first.status_code == 200 and first.json()["version_id"] is None
    etag = first.headers["etag"]
    same = client.get(url, headers={**dev.headers, "If-None-Match": etag})
    assert same.status_code == 304 and same.content == b"" and same.headers["etag"] == etag
    r = create(client, auth, v2["id"], [dev], waves=[100])
    changed = client.get(url, headers={**dev.headers, "If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    body = changed.json()
    assert (body["version_id"], body["rollout_id"]) == (v2["id"], r["id"])
    assert (body["onnx_hash"], body["onnx_size"]) == (v2["onnx_hash"], v2["onnx_size"])
    assert client.get(url, headers={**dev.headers, "If-None-Match": f'W/{changed.headers["etag"]}'
                                    }).status_code == 304
    _abort(client, auth, r)


def test_downloads_are_counted_per_device_and_rollout(client: TestClient, auth: dict,
                                                      versions: tuple[dict, dict]) -> None:
    v1, v2 = versions
    [dev] = fleet(client, auth, 1, v1["id"])
    r = create(client, auth, v2["id"], [dev], waves=[100])
    part = client.get(f"/v1/versions/{v2['id']}/model.onnx",
                      headers={**dev.headers, "Range": "bytes=0-99"})
    assert part.status_code == 206 and len(part.content) == 100
    delta = client.get(f"/v1/versions/{v2['id']}/delta", params={"from": v1["id"]},
                       headers=dev.headers)
    assert delta.status_code == 200
    client.get(f"/v1/versions/{v2['id']}/model.onnx", headers=auth)  # a user: not counted
    client.get(f"/v1/versions/{v1['id']}/model.onnx",  # not this rollout's version
               headers={**dev.headers, "Range": "bytes=0-9"})
    total = 100 + len(delta.content)
    assert client.get(f"/v1/devices/{dev.id}", headers=auth).json()["bytes_downloaded"] \
        == total + 10
    rows = client.get(f"/v1/rollouts/{r['id']}/devices", headers=auth).json()["data"]
    assert rows[0]["bytes_sent"] == total
    _abort(client, auth, r)


def test_tags_select_devices(client: TestClient, auth: dict, versions: tuple[dict, dict]
                             ) -> None:
    v1, v2 = versions
    devs = fleet(client, auth, 3, v1["id"])
    for d in devs[:2]:
        r = client.patch(f"/v1/devices/{d.id}", json={"tags": ["line-7", "cam"]}, headers=auth)
        assert r.status_code == 200 and r.json()["tags"] == ["cam", "line-7"]
    r = create(client, auth, v2["id"], [], selector={"tags": ["line-7"]}, waves=[100])
    rows = client.get(f"/v1/rollouts/{r['id']}/devices", headers=auth).json()["data"]
    assert sorted(x["device_id"] for x in rows) == sorted(d.id for d in devs[:2])
    busy = client.post("/v1/rollouts", json={"version_id": v2["id"],
                                             "selector": {"device_ids": [devs[0].id]}},
                       headers=auth)
    assert busy.status_code == 409 and "already in an active rollout" in busy.json()["detail"]
    _abort(client, auth, r)


@pytest.mark.parametrize("change,status", [
    ({"selector": {"tags": ["no-such-tag"]}}, 422),
    ({"selector": {"device_ids": [999999]}}, 422),
    ({"selector": {"all": True, "tags": ["x"]}}, 422),
    ({"selector": {}}, 422),
    ({"selector": {"all": False}}, 422),
    ({"waves": [50, 25, 100]}, 422),
    ({"waves": [10, 50]}, 422),
    ({"waves": [0, 100]}, 422),
    ({"waves": []}, 422),
    ({"version_id": 999999}, 422),
    ({"success_threshold": 2}, 422),
    ({"wave_timeout_seconds": 0}, 422),
    ({"surprise": 1}, 422),
], ids=["empty-tags", "unknown-device", "two-selectors", "no-selector", "all-false",
        "waves-decreasing", "waves-not-100", "wave-zero", "no-waves", "unknown-version",
        "threshold", "timeout", "extra-field"])
def test_create_rejects_bad_input(client: TestClient, auth: dict, versions: tuple[dict, dict],
                                  change: dict, status: int) -> None:
    body = {"version_id": versions[1]["id"], "selector": {"device_ids": [1]}, **change}
    r = client.post("/v1/rollouts", json=body, headers=auth)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("change", [
    {"version_id": 999999}, {"phase": "installing"}, {"ok": "maybe"}, {"p50_ms": -1},
    {"rollout_id": 999999}, {"version_id": None},
], ids=["unknown-version", "bad-phase", "bad-ok", "negative-latency", "unknown-rollout",
        "no-version"])
def test_update_report_rejects_bad_input(client: TestClient, auth: dict,
                                         versions: tuple[dict, dict], change: dict) -> None:
    [dev] = fleet(client, auth, 1, versions[0]["id"])
    body = {"version_id": versions[0]["id"], "ok": True, "phase": "done", **change}
    r = client.post(f"/v1/devices/{dev.id}/updates", json=body, headers=dev.headers)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")


def test_bad_tags_and_unknown_ids(client: TestClient, auth: dict, settings: Settings,
                                  versions: tuple[dict, dict]) -> None:
    [dev] = fleet(client, auth, 1, versions[0]["id"])
    bad = client.patch(f"/v1/devices/{dev.id}", json={"tags": ["has space"]}, headers=auth)
    assert bad.status_code == 422
    assert client.patch("/v1/devices/999999", json={"tags": []}, headers=auth).status_code \
        == 404
    for path in ("", "/devices", "/events"):
        assert client.get(f"/v1/rollouts/999999{path}", headers=auth).status_code == 404
    assert client.get("/v1/rollouts", params={"state": "nope"}, headers=auth).status_code \
        == 422


def test_failed_device_reports_are_kept(client: TestClient, auth: dict,
                                        versions: tuple[dict, dict]) -> None:
    v1, v2 = versions
    [dev] = fleet(client, auth, 1, v1["id"])
    r = create(client, auth, v2["id"], [dev], waves=[100])
    out = report(client, dev, v2["id"], ok=False, phase="smoke", reason="outputs differ")
    assert out["ok"] is False and out["phase"] == "smoke"
    assert desired(client, dev)["version_id"] == v1["id"]
    assert client.get(f"/v1/devices/{dev.id}", headers=auth).json()["current_version_id"] \
        == v1["id"]
    _abort(client, auth, r)


def test_device_cannot_read_another_devices_desired(client: TestClient, auth: dict,
                                                    versions: tuple[dict, dict]) -> None:
    a, b = fleet(client, auth, 2, versions[0]["id"])
    r = client.get(f"/v1/devices/{a.id}/desired", headers=b.headers)
    assert r.status_code == 403


def test_concurrent_creations_take_a_device_once(client: TestClient, auth: dict,
                                                 versions: tuple[dict, dict]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    v1, v2 = versions
    [dev] = fleet(client, auth, 1, v1["id"])
    body = {"version_id": v2["id"], "selector": {"device_ids": [dev.id]}}
    with ThreadPoolExecutor(4) as pool:
        codes = sorted(pool.map(lambda _: client.post("/v1/rollouts", json=body,
                                                      headers=auth).status_code, range(4)))
    assert codes == [201, 409, 409, 409]
    made = client.get("/v1/rollouts", params={"state": "active"}, headers=auth).json()["data"]
    for r in made:
        _abort(client, auth, r)
