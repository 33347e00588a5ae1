"""Detect jobs over REST: the task comes from (and must agree with) the model and the dataset,
max_map_drop is the detect job's drop constraint, and the task shows on the job (API and
page) and on a published detector's version."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from tests.cloud_service.test_detect_datasets import OCTET, coco_members, make_zip, yolo_members
from tests.edge_agent.detect_onnx import detector_onnx


@pytest.fixture(scope="module")
def detector(client: TestClient, auth: dict) -> dict:
    r = client.post("/v1/models", params={"name": "det", "format": "onnx"},
                    content=detector_onnx(0), headers={**auth, **OCTET})
    assert r.status_code == 201, r.text
    assert r.json()["details"]["task"] == "detect"
    return r.json()


@pytest.fixture(scope="module")
def coco(client: TestClient, auth: dict) -> dict:
    r = client.post("/v1/datasets/upload", params={"name": "c", "kind": "coco"},
                    content=make_zip(coco_members()), headers={**auth, **OCTET})
    assert r.status_code == 201, r.text
    return r.json()


def submit(client: TestClient, auth: dict, model: dict, dataset: dict, **body: object):  # type: ignore[no-untyped-def]
    return client.post("/v1/jobs", json={"model_id": model["id"], "dataset_id": dataset["id"],
                                         "profile": "x86-avx2", **body}, headers=auth)


def test_detect_job_is_queued_with_its_task_and_map_constraint(
        client: TestClient, auth: dict, detector: dict, coco: dict) -> None:
    r = submit(client, auth, detector, coco, task="detect", constraints={"max_map_drop": 1.5})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["task"] == "detect"
    assert job["config"]["constraints"]["max_accuracy_drop"] == 1.5
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth).json()["task"] == "detect"
    form_like = submit(client, auth, detector, coco, constraints={"max_accuracy_drop": 2.0})
    assert form_like.status_code == 202, form_like.text  # the dashboard's form sends this
    assert form_like.json()["config"]["constraints"]["max_accuracy_drop"] == 2.0

    page = client.get("/ui/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    token = auth["Authorization"].split()[1]
    assert client.post("/ui/login", data={"csrf": csrf, "token": token},
                       follow_redirects=False).status_code == 303
    html = client.get(f"/ui/jobs/{job['id']}").text
    assert re.search(r'data-field="task">\s*object detection', html), html[:2000]


def test_the_task_defaults_to_the_pair(client: TestClient, auth: dict, detector: dict,
                                       coco: dict, tiny_model: dict, digits: dict) -> None:
    assert submit(client, auth, detector, coco).json()["task"] == "detect"
    r = client.post("/v1/datasets", json={"builtin": "fashion-mnist-scenes"}, headers=auth)
    assert r.status_code == 201, r.text
    assert submit(client, auth, detector, r.json()).json()["task"] == "detect"
    yolo = client.post("/v1/datasets/upload", params={"name": "y", "kind": "yolo"},
                       content=make_zip(yolo_members()), headers={**auth, **OCTET}).json()
    assert submit(client, auth, detector, yolo).json()["task"] == "detect"
    assert submit(client, auth, tiny_model, digits).json()["task"] == "classify"


@pytest.mark.parametrize("pair,body,words", [
    ("classifier+coco", {}, "is a classification model but dataset {d} is a detection "
                            "dataset (coco)"),
    ("detector+digits", {}, "is a detection model but dataset {d} is a classification "
                            "dataset (digits)"),
    ("detector+coco", {"task": "classify"}, "task 'classify' does not fit"),
    ("detector+coco", {"constraints": {"max_accuracy_drop": 1.0, "max_map_drop": 1.0}},
     "give max_map_drop or max_accuracy_drop, not both"),
    ("classifier+digits", {"constraints": {"max_map_drop": 1.0}},
     "constraint max_map_drop is for detect jobs; a classify job takes max_accuracy_drop"),
    ("detector+coco", {"task": "segment"}, "classify"),
], ids=["classifier-on-coco", "detector-on-digits", "task-disagrees", "both-on-detect",
        "map-on-classify", "unknown-task"])
def test_mismatched_task_is_one_422(client: TestClient, auth: dict, detector: dict,
                                    coco: dict, tiny_model: dict, digits: dict, pair: str,
                                    body: dict, words: str) -> None:
    m, d = pair.split("+")
    model = {"classifier": tiny_model, "detector": detector}[m]
    dataset = {"coco": coco, "digits": digits}[d]
    r = submit(client, auth, model, dataset, **body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    detail = r.json()["detail"]
    text = detail if isinstance(detail, str) else str(detail)
    assert words.format(d=dataset["id"]) in text, text


def test_a_published_detector_version_says_detect(client: TestClient, auth: dict,
                                                  detector: dict) -> None:
    r = client.post(f"/v1/models/{detector['id']}/versions", params={"profile": "x86-avx2"},
                    content=detector_onnx(0, scale=0.1), headers={**auth, **OCTET})
    assert r.status_code == 201, r.text
    assert r.json()["task"] == "detect"
    assert client.get(f"/v1/versions/{r.json()['id']}", headers=auth).json()["task"] == "detect"
