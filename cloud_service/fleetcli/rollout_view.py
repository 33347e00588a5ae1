"""How a rollout is printed: its waves with counts by status, its devices and events."""

from __future__ import annotations

from typing import Any

from cloud_service.fleetcli.client import FleetClient
from cloud_service.fleetcli.common import cell, counts, table, when

FINISHED = {"completed": 0, "aborted": 1, "rolled_back": 1}  # state -> exit code


def selector(r: dict[str, Any]) -> str:
    sel = r.get("selector") or {}
    if sel.get("all"):
        return "all devices"
    if sel.get("device_ids"):
        return "devices " + cell(sel["device_ids"])
    if sel.get("tags"):
        return "tags " + cell(sel["tags"])
    return cell(sel)


def devices(r: dict[str, Any]) -> int:
    return sum(sum(w.values()) for w in r.get("wave_counts") or [])


def total(r: dict[str, Any], status: str) -> int:
    return sum(w.get(status, 0) for w in r.get("wave_counts") or [])


def wave(r: dict[str, Any]) -> str:
    return f"{r['current_wave'] + 1}/{len(r['waves'])}"


def headline(r: dict[str, Any]) -> str:
    return (f"rollout {r['id']}  version {r['version_id']}  {r['state']}  wave {wave(r)}  "
            f"{total(r, 'succeeded')}/{devices(r)} succeeded")


def waves_table(r: dict[str, Any]) -> str:
    rows = []
    for i, (pct, by_status) in enumerate(zip(r["waves"], r.get("wave_counts") or [],
                                             strict=False)):
        mark = ">" if i == r["current_wave"] and r["state"] in ("active", "paused") else ""
        rows.append([f"{mark}{i + 1}", f"{pct:g}%", sum(by_status.values()),
                     counts(by_status)])
    return table(["WAVE", "UP TO", "DEVICES", "BY STATUS"], rows,
                 right=["WAVE", "UP TO", "DEVICES"])


def list_table(rows: list[dict[str, Any]]) -> str:
    return table(["ID", "VERSION", "STATE", "WAVE", "DEVICES", "SUCCEEDED", "FAILED",
                  "SELECTOR", "CREATED"],
                 [[r["id"], r["version_id"], r["state"], wave(r), devices(r),
                   total(r, "succeeded"), total(r, "failed"), selector(r),
                   when(r.get("created_at"))] for r in rows],
                 right=["ID", "VERSION", "WAVE", "DEVICES", "SUCCEEDED", "FAILED"])


def details(r: dict[str, Any]) -> list[tuple[str, Any]]:
    return [("id", r["id"]), ("version", r["version_id"]), ("state", r["state"]),
            ("wave", wave(r)), ("selector", selector(r)),
            ("waves", "  ".join(f"{w:g}%" for w in r["waves"])),
            ("min devices per wave", r.get("min_devices_per_wave")),
            ("success threshold", r.get("success_threshold")),
            ("max failure rate", r.get("max_failure_rate")),
            ("max latency regression", r.get("max_latency_regression")),
            ("wave timeout", f"{r.get('wave_timeout_seconds')} s"),
            ("rollback on abort", r.get("rollback_on_abort")),
            ("replace model", r.get("replace_model")),
            ("created", when(r.get("created_at"))),
            ("wave started", when(r.get("wave_started_at"))),
            ("finished", when(r.get("finished_at")))]


def devices_table(rows: list[dict[str, Any]]) -> str:
    return table(["DEVICE", "WAVE", "STATUS", "FROM", "BYTES", "P50 MS", "REASON"],
                 [[d["device_id"], d["wave"] + 1, d["status"], d.get("from_version_id"),
                   d.get("bytes_sent"), d.get("p50_ms"), d.get("reason")] for d in rows],
                 right=["DEVICE", "WAVE", "FROM", "BYTES", "P50 MS"])


def events_table(rows: list[dict[str, Any]]) -> str:
    return table(["AT", "KIND", "REASON"],
                 [[when(e.get("at")), e["kind"], e.get("reason")] for e in rows])


def last_event(api: FleetClient, rollout_id: int) -> dict[str, Any] | None:
    """The rollout's latest decision or action (events are listed oldest first)."""
    path = f"/v1/rollouts/{rollout_id}/events"
    n = api.get(path, limit=1)["count"]
    data = api.get(path, offset=max(n - 1, 0), limit=1)["data"] if n else []
    return data[0] if data else None


def watch_lines(r: dict[str, Any], elapsed: float) -> list[str]:
    return [f"{headline(r)}  ({elapsed:.0f} s)", *waves_table(r).splitlines()]
