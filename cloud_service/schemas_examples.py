"""Examples for the OpenAPI document: one realistic value per schema, kept out of
``schemas.py`` so the models stay readable. ``tests/cloud_service/test_openapi.py`` validates
every one against its schema."""

from __future__ import annotations

from typing import Any

from pydantic.config import JsonDict

NOW = "2026-11-25T15:00:00Z"
HASH = "a6aeb1a4f5371758043c41e5a587b99a3a53798bbfa2f7b689233aca4fb52374"
HASH2 = "72b98bf23476c67e6ada7abad0dd396359531fdec911b4a89214e9a70f0670c9"
SIGNATURE = "9f3c" + "0" * 124

ARCH = {"arch": "resnet18", "in_channels": 1, "num_classes": 10, "stem": "small",
        "width": 1.0}
MODEL = {"id": 1, "name": "resnet18-fashion", "format": "safetensors", "arch": ARCH,
         "artifact_hash": HASH, "size_bytes": 44_786_432,
         "details": {"tensors": 122}, "created_at": NOW, "owner_name": "alice"}
DATASET_CREATE = {"builtin": "fashion-mnist", "name": "fashion"}
DATASET = {"id": 1, "name": "fashion", "builtin": "fashion-mnist", "artifact_hash": None,
           "size_bytes": 0, "details": {},
           "created_at": NOW, "owner_name": "alice"}
JOB_CREATE = {"model_id": 1, "dataset_id": 1, "profile": "x86-avx2",
              "constraints": {"max_accuracy_drop": 0.5, "latency_budget_ms": 5.0},
              "config": {"quantize": {"calib_samples": 256}}}
JOB = {"id": 3, "model_id": 1, "dataset_id": 1, "profile": "x86-avx2",
       "config": {"quantize": {"calib_samples": 256}}, "state": "running", "stage": "quantize",
       "done": 12, "total": 40, "timings": {"baseline": 8.2, "prune": 41.7},
       "log_tail": "quantize: layer 12/40 int8", "error": None, "attempts": 1,
       "cancel_requested": False, "version_id": None, "created_at": NOW, "started_at": NOW,
       "finished_at": None, "percent": 30.0, "owner_name": "alice"}
VERSION = {"id": 7, "model_id": 1, "number": 2, "job_id": 3, "profile": "x86-avx2",
           "onnx_hash": HASH, "onnx_size": 11_240_512,
           "summary": {"accuracy_drop_points": 0.31, "speedup": 2.4, "compression": 3.9},
           "constraints_met": True, "created_at": NOW,
           "latency": {"predicted_ms": 1.92, "predicted_source": "device_table",
                       "predicted_model": "device-table+whole-model-term",
                       "measured_p50_ms": 2.07, "measured_p95_ms": 2.31, "devices": 2,
                       "error_pct": -7.2,
                       "per_device": [{"device_id": 5, "p50_ms": 2.01, "p95_ms": 2.2},
                                      {"device_id": 6, "p50_ms": 2.13, "p95_ms": 2.42}]}}
TOKEN_CREATE = {"name": "line-3 cameras", "expires_in_seconds": 86400, "max_uses": 20}
TOKEN = {"id": 2, "name": "line-3 cameras", "max_uses": 20, "uses": 3, "expires_at": NOW,
         "revoked_at": None, "created_at": NOW}
TOKEN_CREATED = {**TOKEN, "uses": 0, "token": "hadmc_e_4n8Qm2VxJc0pTt7yRk5sLw9zHf3bGd1a"}
API_TOKEN_CREATE = {"name": "ci pipeline", "expires_in_days": 90, "role": "viewer"}
API_TOKEN = {"id": 4, "name": "ci pipeline", "role": "viewer",
             "expires_at": "2027-02-23T15:00:00Z", "revoked_at": None, "created_at": NOW}
API_TOKEN_CREATED = {**API_TOKEN, "token": "hadmc_u_Xq7Lm3PzR8vTn2WcKd5Hj0BsYf9gEa4u"}
PROFILE = {"name": "rpi4", "description": "Raspberry Pi 4 Model B 4GB (4 x Cortex-A72)",
           "isa": "arm64", "accelerator": "cpu", "cores": 4, "memory_gb": 4.0,
           "peak_gops": {"fp32": 48.0, "int8": 96.0}, "memory_bandwidth_gbs": 12.8,
           "precisions": ["fp32", "int8"], "runtimes": ["onnxruntime-cpu"],
           "int4_weight_only": True, "channel_multiple": 8, "flags": ["asimd"],
           "threads": None, "source": "Raspberry Pi 4 Model B product brief"}
DEVICE_REGISTER = {"enrollment_token": "hadmc_e_4n8Qm2VxJc0pTt7yRk5sLw9zHf3bGd1a",
                   "name": "camera-17", "profile": None}
DEVICE_REGISTERED = {"device_id": 5,
                     "credential": "hadmc_d_qAbv_Np0PxnDOcrLLAbAeBJY7yR2MiQSoZhu3SY74ds",
                     "manifest_public_key": "-----BEGIN PUBLIC KEY-----\n"
                     "MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n"
                     "-----END PUBLIC KEY-----\n"}
HEARTBEAT = {"current_version_id": 7, "status": "ok",
             "models": [{"model": "model-1", "version_id": 7},
                        {"model": "model-4", "version_id": 12}]}
HEARTBEAT_OLD = {"current_version_id": 7, "status": "ok"}
DEPLOYMENT = {"model_id": 1, "model": "model-1", "current_version_id": 7,
              "previous_version_id": 6, "phase": "done", "updated_at": NOW}
HEARTBEAT_ACK = {"device_id": 5, "last_seen_at": NOW}
LATENCY = {"version_id": 7, "p50_ms": 3.2, "p99_ms": 5.9,
           "operators": {"Conv": [0.41, 0.39], "Gemm": [0.05]}}
DEVICE = {"id": 5, "name": "camera-17", "profile": PROFILE, "latency": None, "status": "ok",
          "current_version_id": 7, "previous_version_id": 6,
          "models": [DEPLOYMENT, {"model_id": 4, "model": "model-4", "current_version_id": 12,
                                  "previous_version_id": None, "phase": "probation",
                                  "updated_at": NOW}],
          "multi_model": True, "tags": ["line-3"],
          "bytes_downloaded": 2_310_144, "last_seen_at": NOW, "created_at": NOW,
          "revoked_at": None, "revoked_by_name": None, "tags_updated_by_name": "alice",
          "tags_updated_at": NOW}
DEVICE_UPDATE = {"tags": ["line-3", "canary"]}
PROBLEM = {"type": "about:blank", "title": "Not found", "status": 404,
           "detail": "model version 99 does not exist"}
SELECTOR = {"tags": ["line-3"]}
ROLLOUT_CREATE = {"version_id": 7, "selector": SELECTOR, "waves": [5, 25, 100],
                  "min_devices_per_wave": 1, "success_threshold": 0.95,
                  "max_failure_rate": 0.2, "max_latency_regression": 0.25,
                  "wave_timeout_seconds": 900, "rollback_on_abort": True,
                  "replace_model": False}
ROLLOUT = {**ROLLOUT_CREATE, "id": 3, "state": "active", "current_wave": 0,
           "wave_started_at": NOW, "created_by": 1, "created_by_name": "alice",
           "created_at": NOW, "updated_at": NOW,
           "finished_at": None, "wave_counts": [{"assigned": 1}, {"pending": 4},
                                                {"pending": 15}]}
ROLLOUT_DEVICE = {"device_id": 5, "wave": 0, "status": "succeeded", "from_version_id": 6,
                  "bytes_sent": 81_234, "p50_ms": 3.2, "p95_ms": 4.8, "reason": None,
                  "updated_at": NOW}
ROLLOUT_EVENT = {"id": 11, "at": NOW, "kind": "advance",
                 "reason": "wave 0: 1 of 1 devices succeeded (100% >= success_threshold 95%)",
                 "details": {"wave": 0, "devices": 1, "succeeded": 1, "failed": 0,
                             "timed_out": 0, "median_latency_regression": -0.04},
                 "by": None}
ROLLOUT_EVENT_BY_USER = {"id": 12, "at": NOW, "kind": "pause",
                         "reason": "pause requested by user alice",
                         "details": {"user_id": 1, "user_name": "alice"}, "by": "alice"}
UPDATE_REPORT = {"version_id": 7, "model": "model-1", "rollout_id": 3, "ok": False,
                 "phase": "verify",
                 "reason": "chunk layer2.weight#3 (xor): hash mismatch", "p50_ms": None,
                 "p95_ms": None, "bytes_downloaded": 81_234}
UPDATE_REPORT_PUBLIC = {"id": 21, "device_id": 5, "version_id": 7, "rollout_id": 3,
                        "ok": False, "phase": "verify",
                        "reason": "chunk layer2.weight#3 (xor): hash mismatch",
                        "created_at": NOW}
ROLLBACK_ORDER = {"order": {"kind": "rollback", "device_id": 5, "model": "model-1",
                            "version": 1, "version_id": 6, "issued": 1764000000,
                            "expires": 1764086400},
                  "signature": SIGNATURE}
DESIRED_MODEL = {"model": "model-1", "model_id": 1, "name": "detector", "version_id": 7,
                 "number": 2, "onnx_hash": HASH, "onnx_size": 11_240_512, "rollout_id": 3,
                 "rollback_order": None, "hold": False}
DESIRED = {"version_id": 7, "model_id": 1, "number": 2, "onnx_hash": HASH,
           "onnx_size": 11_240_512, "rollout_id": 3, "rollback_order": None, "hold": False,
           "models": [DESIRED_MODEL,
                      {"model": "model-4", "model_id": 4, "name": "classifier",
                       "version_id": 12, "number": 1, "onnx_hash": HASH2,
                       "onnx_size": 402_112, "rollout_id": 5, "rollback_order": None,
                       "hold": True}]}
MANIFEST = {"manifest": {
    "format": "hadmc.manifest/1", "model": "model-1", "version": 2, "created": 1764000000,
    "expires": 1766592000, "chunk_size": 65536, "extra": {}, "root": HASH2,
    "files": [{"path": "model.onnx", "format": "onnx", "size": 121, "blake3": HASH,
               "segments": [{"name": "w", "offset": 39, "length": 32, "dtype": "float32",
                             "shape": [4, 2], "chunks": [HASH2]}]}]},
    "signature": SIGNATURE, "key_id": "5f1d2c3b4a596877"}
REPORT = {"schema": "hadmc.report/1", "dataset": "fashion-mnist",
          "summary": {"accuracy_drop_points": 0.31, "speedup": 2.4, "compression": 3.9},
          "constraints": {"max_accuracy_drop": 0.5, "met": True,
                          "message": "all constraints met"},
          "stages_seconds": {"baseline": 8.2, "prune": 41.7, "quantize": 30.1}}
PROFILES = {"data": ["arm64-generic", "jetson-orin", "x86-avx2", "x86-avx512-vnni"]}
HEALTH = {"status": "ok"}
READY = {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}
UNREADY = {"status": "unavailable",
           "checks": {"database": "ok", "broker": "error: ConnectionError"}}
METRICS = ('# HELP hadmc_http_requests_total HTTP requests\n'
           '# TYPE hadmc_http_requests_total counter\n'
           'hadmc_http_requests_total{method="GET",route="/v1/jobs",status="200"} 42.0\n'
           '# HELP hadmc_jobs Jobs by state\n'
           '# TYPE hadmc_jobs gauge\n'
           'hadmc_jobs{state="queued"} 2.0\n'
           '# HELP hadmc_devices Devices (not revoked) by state\n'
           '# TYPE hadmc_devices gauge\n'
           'hadmc_devices{state="online"} 118.0\n'
           'hadmc_devices{state="offline"} 3.0\n')


def examples(*values: Any) -> JsonDict:
    """For ``ConfigDict(json_schema_extra=...)``: the schema's ``examples`` list."""
    return {"examples": list(values)}
