"""Updates against the strict fake: full and delta paths, refusals, rollback orders, smoke
failures, resumed and bounded downloads."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.agent import Agent
from edge_agent.recovery import verify_held
from tests.edge_agent.conftest import cycle
from tests.edge_agent.fakes import FakeServer, probe_for

MakeAgent = Callable[..., Agent]


def on_version(a: Agent, vid: int) -> None:
    """The agent's current, state and files all agree on ``vid``, verified."""
    assert a.store.current_vid() == vid
    assert a.state.active == vid
    assert verify_held(a.store.model("model-1"), vid, a.key) is not None
    assert list(a.store.staging.iterdir()) == []


def test_enrollment_is_stored_owner_only_and_reused(fake: FakeServer, make_agent: MakeAgent
                                                    ) -> None:
    a = make_agent()
    for p in (a.store.cred_path, a.store.key_path):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600, p
    assert stat.S_IMODE(os.stat(a.store.root).st_mode) == 0o700
    b = make_agent(enrollment_token="")  # the token is used up: must not be needed again
    assert b.device_id == a.device_id
    assert fake.requests.count(("POST", "/v1/devices/register")) == 1


def test_full_download_then_delta(fake: FakeServer, make_agent: MakeAgent,
                                  models: dict[str, bytes]) -> None:
    a = make_agent()
    fake.publish(1, 1, models["v1"])
    fake.want(1)
    cycle(a)
    on_version(a, 1)
    assert fake.bytes_sent == {"model.onnx": len(models["v1"])}
    assert fake.reports[-1]["ok"] and fake.reports[-1]["phase"] == "done"
    assert fake.reports[-1]["p50_ms"] > 0 and fake.reports[-1]["p95_ms"] >= \
        fake.reports[-1]["p50_ms"]

    fake.publish(2, 2, models["v2"])
    fake.want(2, rollout_id=9)
    cycle(a)
    on_version(a, 2)
    assert a.state.previous == 1 and a.store.model("model-1").held() == [1, 2]
    assert 0 < fake.bytes_sent["delta"] < len(models["v2"])
    assert fake.bytes_sent["model.onnx"] == len(models["v1"])  # nothing full the 2nd time
    rep = fake.reports[-1]
    assert rep["ok"] and rep["rollout_id"] == 9 and rep["bytes_downloaded"] == \
        fake.bytes_sent["delta"]
    assert fake.latency[-1]["version_id"] == 2 and fake.latency[-1]["p50_ms"] > 0
    assert (a.store.current / "model.onnx").read_bytes() == models["v2"]


def test_desired_poll_is_conditional(fake: FakeServer, make_agent: MakeAgent) -> None:
    a = make_agent()
    a.poll()
    etag = a.etag
    a.poll()
    assert a.etag == etag and etag
    fake.want(None, rollout_id=2)
    fake.desired["rollout_id"] = 3
    a.poll()
    assert a.etag != etag


@pytest.mark.parametrize("case", ["bad-signature", "expired", "lower-version"])
def test_manifest_refused(fake: FakeServer, make_agent: MakeAgent, models: dict[str, bytes],
                          case: str) -> None:
    a = make_agent()
    fake.publish(1, 3, models["v1"])
    fake.want(1)
    cycle(a)
    if case == "bad-signature":
        fake.publish(2, 4, models["v2"], signer=Ed25519PrivateKey.generate())
    elif case == "expired":
        fake.publish(2, 4, models["v2"], ttl=60, now=int(time.time()) - 3600)
    else:
        fake.publish(2, 2, models["v2"])
    fake.want(2)
    cycle(a)
    on_version(a, 1)
    rep = fake.reports[-1]
    assert rep["version_id"] == 2 and not rep["ok"] and rep["phase"] == "manifest"
    assert {"bad-signature": "signature", "expired": "expired",
            "lower-version": "below"}[case] in rep["reason"]
    assert "delta" not in fake.bytes_sent
    a.poll()
    a.update()  # a failed version is not retried until the desired state changes
    assert len([r for r in fake.reports if r["version_id"] == 2]) == 1


def _on_v1_then_v2(fake: FakeServer, a: Agent, models: dict[str, bytes]) -> None:
    fake.publish(1, 1, models["v1"])
    fake.publish(2, 2, models["v2"])
    for vid in (1, 2):
        fake.want(vid)
        cycle(a)
    on_version(a, 2)


def test_rollback_order_obeyed(fake: FakeServer, make_agent: MakeAgent,
                               models: dict[str, bytes]) -> None:
    a = make_agent()
    _on_v1_then_v2(fake, a, models)
    sent = dict(fake.bytes_sent)
    fake.want(1, rollout_id=1, rollback_order=fake.rollback_order(1))
    cycle(a)
    on_version(a, 1)
    assert fake.reports[-1]["ok"] and fake.reports[-1]["phase"] == "rollback"
    assert fake.bytes_sent == sent  # the previous version was held: nothing downloaded
    assert a.state.highest == {"model-1": 2}  # the floor stays at the highest accepted


@pytest.mark.parametrize("bad", ["other-device", "other-key", "expired", "other-version",
                                 "missing"])
def test_invalid_rollback_order_refused(fake: FakeServer, make_agent: MakeAgent,
                                        models: dict[str, bytes], bad: str) -> None:
    a = make_agent()
    _on_v1_then_v2(fake, a, models)
    fake.publish(3, 1, models["v1"])  # same number as version 1, another id
    order = {"other-device": lambda: fake.rollback_order(1, device_id=99),
             "other-key": lambda: fake.rollback_order(1, signer=Ed25519PrivateKey.generate()),
             "expired": lambda: fake.rollback_order(1, expires_in=-10),
             "other-version": lambda: fake.rollback_order(3),
             "missing": lambda: None}[bad]()
    fake.want(1, rollback_order=order)
    cycle(a)
    on_version(a, 2)
    rep = fake.reports[-1]
    assert not rep["ok"] and rep["phase"] in ("rollback", "manifest"), rep


def test_smoke_failure_reports_and_stays(fake: FakeServer, make_agent: MakeAgent,
                                         models: dict[str, bytes]) -> None:
    a = make_agent()
    fake.publish(1, 1, models["v1"])
    fake.want(1)
    cycle(a)
    fake.publish(2, 2, models["v2"], probe=probe_for(models["v2"], wrong=True))
    fake.want(2)
    cycle(a)
    on_version(a, 1)
    rep = fake.reports[-1]
    assert not rep["ok"] and rep["phase"] == "smoke" and "differ" in rep["reason"]
    assert a.store.model("model-1").held() == [1]
    assert a.status.startswith("update to 2 failed")


def test_tampered_delta_fails_verification(fake: FakeServer, make_agent: MakeAgent,
                                           models: dict[str, bytes]) -> None:
    a = make_agent()
    fake.publish(1, 1, models["v1"])
    fake.want(1)
    cycle(a)
    fake.publish(2, 2, models["v2"])
    fake.want(2)
    fake._delta({}, b"", 2, 1)  # build it, then flip a payload byte
    blob = bytearray(fake.deltas[(1, 2)])
    blob[-10] ^= 0xFF
    fake.deltas[(1, 2)] = bytes(blob)
    cycle(a)
    on_version(a, 1)
    assert not fake.reports[-1]["ok"] and fake.reports[-1]["phase"] == "verify"


def test_download_resumes_with_range(fake: FakeServer, make_agent: MakeAgent,
                                     models: dict[str, bytes]) -> None:
    a = make_agent()
    fake.publish(1, 1, models["v1"])
    fake.want(1)
    fake.drop_after["model.onnx"] = 10_000
    cycle(a)
    on_version(a, 1)
    assert fake.requests.count(("GET", "/v1/versions/1/model.onnx")) == 2
    assert fake.bytes_sent["model.onnx"] == len(models["v1"])  # resumed, not restarted
    assert fake.reports[-1]["bytes_downloaded"] == len(models["v1"])


def test_download_larger_than_manifest_refused(fake: FakeServer, make_agent: MakeAgent,
                                               models: dict[str, bytes]) -> None:
    a = make_agent()
    v = fake.publish(1, 1, models["v1"])
    v.onnx = v.onnx + b"\0" * 50_000  # the server sends more than the signed size
    fake.want(1)
    cycle(a)
    assert a.store.current_vid() is None
    rep = fake.reports[-1]
    assert not rep["ok"] and rep["phase"] == "download" and "refusing" in rep["reason"]
    assert fake.bytes_sent["model.onnx"] > 0 and rep["bytes_downloaded"] == 0


def test_missing_version_is_reported_not_retried(fake: FakeServer, make_agent: MakeAgent
                                                 ) -> None:
    a = make_agent()
    fake.desired = {**fake.desired, "version_id": 77, "number": 1, "rollout_id": 4}
    cycle(a)
    a.update()
    assert fake.requests.count(("GET", "/v1/versions/77/manifest")) == 1
    rep = fake.reports[-1]
    assert not rep["ok"] and rep["phase"] == "manifest" and "404" in rep["reason"]


def test_transient_errors_are_retried_not_reported(fake: FakeServer, make_agent: MakeAgent,
                                                   models: dict[str, bytes]) -> None:
    from edge_agent.errors import NetworkError

    a = make_agent()
    fake.publish(1, 1, models["v1"])
    fake.want(1)
    fake.fail.add("manifest")
    a.poll()
    with pytest.raises(NetworkError):
        a.update()
    assert fake.reports == [] and list(a.store.staging.iterdir()) == []
    fake.fail.clear()
    cycle(a)
    on_version(a, 1)


def test_rollback_to_a_version_no_longer_held_goes_by_delta(
        fake: FakeServer, make_agent: MakeAgent, models: dict[str, bytes]) -> None:
    a = make_agent()
    for vid in (1, 2, 3):
        fake.publish(vid, vid, models[f"v{vid}"])
        fake.want(vid)
        cycle(a)
    assert a.store.model("model-1").held() == [2, 3]
    fake.want(1, rollback_order=fake.rollback_order(1))
    cycle(a)
    on_version(a, 1)
    assert fake.reports[-1]["ok"] and fake.reports[-1]["phase"] == "rollback"
    assert ("GET", "/v1/versions/1/delta?from=3") in fake.requests
    assert a.state.highest == {"model-1": 3} and a.store.model("model-1").held() == [1, 3]


def wide_mlp(rows_changed: int = 0) -> bytes:
    """x[N, 64] -> MatMul (512 KiB of weights, 8 chunks) -> y[N, 2048]; the first
    ``rows_changed`` rows of the weight differ (a version that shares most chunks)."""
    import numpy as np

    from hadmc_core.hal import onnxwrite as ow

    w = np.random.default_rng(5).standard_normal((64, 2048)).astype(np.float32)
    w[:rows_changed] += 0.5
    return ow.model([ow.node("MatMul", ["x", "w"], ["y"])], [ow.value_info("x", ["N", 64])],
                    [ow.value_info("y", ["N", 2048])], [ow.tensor("w", w)])


@pytest.mark.parametrize("case", ["unknown-id", "another-file"])
def test_a_version_the_server_does_not_know_updates_by_a_delta_of_what_is_held(
        fake: FakeServer, make_agent: MakeAgent, case: str) -> None:
    """The device holds version 1, which this server never saw (restored from a backup,
    moved from another server): either the id is unknown here (404 for the delta from it)
    or it names another file here (the delta's base does not match). The agent sends the
    manifest of what it holds and applies the delta built against it."""
    models = {"v1": wide_mlp(), "v2": wide_mlp(rows_changed=2), "v3": wide_mlp(64)}
    a = make_agent()
    fake.publish(1, 1, models["v1"])
    fake.want(1)
    cycle(a)
    on_version(a, 1)
    if case == "unknown-id":
        del fake.versions[1]
    else:
        fake.publish(1, 1, models["v3"])   # this server's version 1 is another file
    fake.publish(5, 2, models["v2"])
    fake.want(5)
    cycle(a)
    on_version(a, 5)
    assert ("GET", "/v1/versions/5/delta?from=1") in fake.requests
    assert ("POST", "/v1/versions/5/delta") in fake.requests
    held = fake.holder_manifests[-1]   # built from the file held, at the target's chunks
    assert held.files[0].size == len(models["v1"]) and held.chunk_size == 64 * 1024
    assert fake.bytes_sent["model.onnx"] == len(models["v1"])  # the first install only
    assert fake.reports[-1]["ok"] and fake.reports[-1]["phase"] == "done"
    holder = fake.bytes_sent["delta"] - (len(fake.deltas.get((1, 5), b"")))
    assert 0 < holder < len(models["v2"]) // 4, (holder, len(models["v2"]))
    assert (a.store.current / "model.onnx").read_bytes() == models["v2"]


def test_a_server_without_holder_deltas_sends_the_full_file(
        fake: FakeServer, make_agent: MakeAgent, models: dict[str, bytes]) -> None:
    """A server from before the holder delta answers the POST with 405: the agent
    downloads the full file."""
    from tests.edge_agent.fakes import _problem

    a = make_agent()
    fake.publish(1, 1, models["v1"])
    fake.want(1)
    cycle(a)
    del fake.versions[1]
    fake._holder = lambda *_: _problem(405, "Method Not Allowed")  # type: ignore[method-assign]
    fake.publish(5, 2, models["v2"])
    fake.want(5)
    cycle(a)
    on_version(a, 5)
    assert ("POST", "/v1/versions/5/delta") in fake.requests
    assert fake.bytes_sent["model.onnx"] == len(models["v1"]) + len(models["v2"])
