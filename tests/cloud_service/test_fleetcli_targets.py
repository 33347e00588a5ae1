"""``hadmc jobs submit`` with a device or a tag as the target, against a real ``hadmc serve``
(the fleet CLI test server: two enrolled devices that report ONNX Runtime, no worker)."""

from __future__ import annotations

from tests.cloud_service.test_fleetcli import Fleet, fleet, one_error_line
from tests.e2e.helpers import ok

__all__ = ["fleet"]  # the module-scoped fixture


def test_jobs_submit_to_a_device_or_by_tag(fleet: Fleet) -> None:
    admin = fleet.server.admin
    model = ok(admin.get("/v1/models"))["data"][0]["id"]
    data = ok(admin.post("/v1/datasets", json={"builtin": "digits"}), 201)["id"]
    a, b = fleet.devices["cam-a"]["id"], fleet.devices["cam-b"]["id"]
    ok(admin.patch(f"/v1/devices/{b}", json={"tags": ["line-7"]}))
    base = ("jobs", "submit", "--model", str(model), "--dataset", str(data))

    job = fleet.json(*base, "--device", str(a))
    assert job["target"] == {"device_ids": [a], "runtime": "onnxruntime-cpu"}
    assert job["profile"] == f"device:{a}" and job["state"] == "queued"
    job = fleet.json(*base, "--tag", "line-7", "--tag", "line-8")
    assert job["target"] == {"device_ids": [b], "runtime": "onnxruntime-cpu",
                             "tags": ["line-7", "line-8"]}

    line = one_error_line(fleet.hadmc(*base, "--tag", "nowhere"), 1)
    assert line.startswith("error: 409 ") and "no usable device has any of the tags" in line
    line = one_error_line(fleet.hadmc(*base, "--device", "99999"), 4)
    assert line.startswith("error: 404 ") and "device 99999 does not exist" in line
    for args in ((), ("--device", str(a), "--profile", "x86-avx2")):
        line = one_error_line(fleet.hadmc(*base, *args), 2)
        assert "give exactly one target" in line
