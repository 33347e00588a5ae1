"""One update (or rollback) attempt: signed manifest → files (held, delta or full) →
verify → smoke test in staging → install → atomic switch → probation (``health``) → report.

Every refusal is an UpdateError whose ``phase`` goes into the update report; transient
network errors (NetworkError) propagate so the loop retries with backoff.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent import verify
from edge_agent.client import Backoff, ServerClient
from edge_agent.errors import (
    DataDirError,
    DownloadError,
    ManifestRejected,
    ServerError,
    UpdateError,
    VerifyError,
)
from edge_agent.health import new_probation, time_held
from edge_agent.settings import AgentSettings
from edge_agent.smoke import (
    RUNTIME_FILE,
    Probe,
    SmokeResult,
    choose_runtime,
    load_probe,
    smoke_test,
)
from edge_agent.store import (
    MANIFEST_FILE,
    MODEL_FILE,
    MODEL_KEY,
    PROBE_FILE,
    AgentState,
    Store,
)
from hadmc_core.delta import SignedManifest, apply_delta, build_manifest
from hadmc_core.delta.errors import BaseMismatchError, DeltaError

log = logging.getLogger(__name__)
DELTA_FILE = "update.delta"


@dataclass
class Attempt:
    """What one attempt is about and what it has done so far (for the report)."""

    version_id: int
    rollout_id: int | None
    #: The model's name (its model line); from the desired entry, confirmed by the manifest.
    model: str | None = None
    phase: str = "manifest"
    bytes_downloaded: int = 0
    rollback: bool = False


def delta_bound(signed: SignedManifest, manifest_bytes: int) -> int:
    """Largest delta a manifest allows (docs/delta.md caps): every chunk's payload at most
    its size + 1/8 + 1 KiB, plus the prefix, header and op table."""
    m = signed.manifest
    return m.size + m.size // 8 + m.n_chunks * (1024 + 4 + 13) + 2 * manifest_bytes + (1 << 20)


class Updater:
    def __init__(self, *, settings: AgentSettings, store: Store, client: ServerClient,
                 key: Ed25519PublicKey, device_id: int, state: AgentState) -> None:
        self.settings, self.store, self.client = settings, store, client
        self.key, self.device_id, self.state = key, device_id, state

    def run(self, desired: dict[str, Any]) -> dict[str, Any]:
        """Try to make ``desired`` (one model's entry of the desired state) the active
        version of its model; returns the update report."""
        model = desired.get("model")
        a = Attempt(int(desired["version_id"]), desired.get("rollout_id"),
                    model if isinstance(model, str) else None)
        staged: Path | None = None
        try:
            signed, raw = self._manifest(a, desired)
            staged = self.store.new_staging(f"v{a.version_id}")
            (staged / MANIFEST_FILE).write_bytes(raw)
            self._files(a, signed, staged)
            result = self._smoke(a, staged, desired.get("runtimes"))
            a.phase = "switch"
            ms = self.state.model(signed.manifest.model)
            for k in ("model_id", "name"):
                if desired.get(k) is not None:
                    setattr(ms, k, desired[k])
            self.store.model(signed.manifest.model).install(staged, a.version_id)
            staged = None
            self.activate(a, signed, result)
            log.info("%s now on version %d (p50 %.3f ms)", a.model, a.version_id,
                     result.p50_ms, extra={"version_id": a.version_id, "model": a.model})
            return self.report(a, ok=True, result=result)
        except (UpdateError, DataDirError, ServerError, OSError) as e:
            # refusals, a 4xx for this version's files, a full disk: report, do not retry
            phase = e.phase if isinstance(e, UpdateError) else a.phase
            reason = str(e) if not isinstance(e, OSError) else f"local I/O error: {e}"
            log.warning("update to version %d failed in %s: %s", a.version_id, phase, reason,
                        extra={"version_id": a.version_id, "model": a.model})
            return self.report(a, ok=False, reason=reason, phase=phase)
        finally:
            if staged is not None:
                shutil.rmtree(staged, ignore_errors=True)

    def _active(self, a: Attempt) -> int | None:
        ms = self.state.models.get(a.model or "")
        return ms.active if ms else None

    # -- phases ----------------------------------------------------------------------------
    def _manifest(self, a: Attempt, desired: dict[str, Any]) -> tuple[SignedManifest, bytes]:
        raw = self.client.get_bytes(f"/v1/versions/{a.version_id}/manifest", "manifest",
                                    verify.MAX_MANIFEST_BYTES)
        signed = verify.read_manifest(raw, self.key, floor=None)
        m = signed.manifest
        if desired.get("number") is not None and m.version != desired["number"]:
            raise ManifestRejected(f"manifest is for version {m.version}, the server asked "
                                   f"for number {desired['number']}")
        if a.model is not None and m.model != a.model:
            raise ManifestRejected(f"manifest is for model {m.model!r}, the server asked for "
                                   f"{a.model!r}")
        if not MODEL_KEY.fullmatch(m.model):
            raise ManifestRejected(f"the manifest names the model {m.model!r}, which is not "
                                   "a usable name on the device")
        a.model = m.model
        floor = self.state.highest.get(m.model)
        if floor is not None and m.version < floor:
            a.phase = "rollback"
            order = desired.get("rollback_order")
            if order is None:
                raise ManifestRejected(f"{m.model} version {m.version} is below the highest "
                                       f"accepted ({floor}) and no signed rollback order "
                                       "names it")
            verify.check_rollback_order(order, self.key, device_id=self.device_id,
                                        model=m.model, version=m.version,
                                        version_id=a.version_id)
            a.rollback = True
        return signed, raw

    def _files(self, a: Attempt, signed: SignedManifest, staged: Path) -> None:
        """Put the version's files into ``staged``, verified against the signed manifest."""
        held = self.store.model(signed.manifest.model).version_dir(a.version_id)
        if held.is_dir():
            a.phase = "verify"
            for name in [f.path for f in signed.manifest.files] + [PROBE_FILE]:
                if (held / name).exists():
                    shutil.copyfile(held / name, staged / name)
        elif self._active(a) is not None:
            try:
                self._delta(a, signed, staged)
            except (ServerError, BaseMismatchError) as e:
                # The server does not know the version held (restored from a backup,
                # moved from another server) or its file differs: a delta against the
                # chunks held, from their manifest.
                log.info("no usable delta from version %s (%s); asking for one against "
                         "the files held", self._active(a), e)
                try:
                    self._holder_delta(a, signed, staged)
                except (ServerError, BaseMismatchError) as e2:
                    log.info("no usable delta (%s); downloading the full file", e2)
                    self._full(a, signed, staged)
        else:
            self._full(a, signed, staged)
        a.phase = "verify"
        verify.check_files(staged, signed)
        self._probe(a, staged)

    def _delta(self, a: Attempt, signed: SignedManifest, staged: Path) -> None:
        base = self._active(a)
        a.phase = "download"
        dest = staged / DELTA_FILE
        a.bytes_downloaded += self._download(
            f"/v1/versions/{a.version_id}/delta?from={base}", dest, "delta",
            delta_bound(signed, len(signed.to_bytes())))
        self._apply(a, signed, staged, dest)

    def _holder_delta(self, a: Attempt, signed: SignedManifest, staged: Path) -> None:
        """``POST /v1/versions/{id}/delta`` with the manifest of the held version's files,
        built here at the target's chunk size (what the device really holds)."""
        held = self._held_file(a, signed)
        manifest = build_manifest(held, chunk_size=signed.manifest.chunk_size)
        a.phase = "download"
        dest = staged / DELTA_FILE
        s = self.settings
        a.bytes_downloaded += self.client.download(
            f"/v1/versions/{a.version_id}/delta", dest, what="delta",
            max_bytes=delta_bound(signed, len(signed.to_bytes())),
            attempts=s.download_attempts, backoff=Backoff(s.backoff_base_seconds, 30.0),
            json_body=manifest.to_bytes())
        self._apply(a, signed, staged, dest)

    def _held_file(self, a: Attempt, signed: SignedManifest) -> Path:
        base = int(self._active(a) or 0)
        return self.store.model(signed.manifest.model).version_dir(base) / MODEL_FILE

    def _apply(self, a: Attempt, signed: SignedManifest, staged: Path, dest: Path) -> None:
        """Apply the downloaded delta to the held version into ``staged``."""
        a.phase = "verify"
        floor = self.state.highest.get(signed.manifest.model)
        try:
            got = apply_delta(self._held_file(a, signed), dest,
                              staged / MODEL_FILE, public_key=self.key,
                              min_version=None if a.rollback else floor)
        except BaseMismatchError:
            raise
        except DeltaError as e:
            raise VerifyError(f"delta refused: {e}") from e
        finally:
            dest.unlink(missing_ok=True)
        if got.version != signed.manifest.version or got.model != signed.manifest.model:
            raise VerifyError(f"the delta builds {got.model} v{got.version}, not "
                              f"{signed.manifest.model} v{signed.manifest.version}")

    def _full(self, a: Attempt, signed: SignedManifest, staged: Path) -> None:
        files = signed.manifest.files
        if len(files) != 1:
            raise DownloadError(f"the version has {len(files)} files; a full download serves "
                                "model.onnx only, so it needs a delta from a held version")
        a.phase = "download"
        a.bytes_downloaded += self._download(f"/v1/versions/{a.version_id}/model.onnx",
                                             staged / files[0].path, "model.onnx",
                                             files[0].size)

    def _download(self, path: str, dest: Path, what: str, bound: int) -> int:
        s = self.settings
        return self.client.download(path, dest, what=what, max_bytes=bound,
                                    attempts=s.download_attempts,
                                    backoff=Backoff(s.backoff_base_seconds, 30.0))

    def _probe(self, a: Attempt, staged: Path) -> None:
        if (staged / PROBE_FILE).exists():
            return
        a.phase = "download"
        cap = int(self.settings.max_probe_mb * (1 << 20))
        try:
            data = self.client.get_bytes(f"/v1/versions/{a.version_id}/probe", "probe", cap)
        except ServerError as e:
            if e.status != 404:
                raise DownloadError(str(e)) from e
            log.warning("version %d has no probe; the smoke test only loads and runs it",
                        a.version_id)
            return
        (staged / PROBE_FILE).write_bytes(data)

    def _smoke(self, a: Attempt, staged: Path, runtimes: Any) -> SmokeResult:
        """Smoke-test with the runtime the version was built for (the first of the desired
        entry's ``runtimes`` installed here), recorded in the staged directory so that
        serving and health checks use it too."""
        a.phase = "smoke"
        probe: Probe | None = None
        if (staged / PROBE_FILE).exists():
            probe = load_probe((staged / PROBE_FILE).read_bytes())
        names = [str(r) for r in runtimes] if isinstance(runtimes, list) else None
        runtime = choose_runtime(names)
        (staged / RUNTIME_FILE).write_text(runtime.name + "\n")
        return smoke_test(staged / MODEL_FILE, probe, self.settings.smoke_runs,
                          self.settings.threads, runtime)

    # -- switch and report -----------------------------------------------------------------
    def activate(self, a: Attempt, signed: SignedManifest, result: SmokeResult) -> None:
        """Record the intent, switch the model's ``current`` in one rename, then record the
        outcome. ``recover`` finishes or forgets the intent after a crash in between. With
        a health window the version goes on probation (``edge_agent.health``) and only a
        ``probation`` report goes out now; the success report waits for the commit."""
        s, st, m = self.settings, self.state, signed.manifest
        ms, mstore = st.model(m.model), self.store.model(m.model)
        report = self.report(a, ok=True, result=result)
        sw: dict[str, Any] = {"version_id": a.version_id, "model": m.model,
                              "version": m.version}
        if s.health_window_seconds > 0:
            baseline = time_held(mstore, ms.active, s.smoke_runs, s.threads) \
                if s.health_max_latency_ratio > 0 else None
            sw["probation"] = new_probation(
                report=report, model=m.model, version=m.version, previous=ms.active,
                window=s.health_window_seconds, baseline_p50=baseline,
                p95_ms=result.p95_ms, p99_ms=result.p99_ms, rollback=a.rollback)
            sw["reports"] = [{"kind": "updates", "body": {**report, "phase": "probation"}}]
        else:
            sw["reports"] = [{"kind": "updates", "body": report},
                             {"kind": "latency", "body": {"version_id": a.version_id,
                                                          "p50_ms": result.p50_ms,
                                                          "p99_ms": result.p99_ms}}]
        ms.switching = sw
        self.store.save_state(st)
        mstore.switch(a.version_id)
        finish_switch(self.store, st, m.model)

    def report(self, a: Attempt, *, ok: bool, result: SmokeResult | None = None,
               reason: str | None = None, phase: str | None = None) -> dict[str, Any]:
        return {"version_id": a.version_id, "model": a.model, "rollout_id": a.rollout_id,
                "ok": ok,
                "phase": ("rollback" if a.rollback else "done") if ok else (phase or a.phase),
                "reason": None if ok else (reason or "")[:1000],
                "p50_ms": result.p50_ms if result else None,
                "p95_ms": result.p95_ms if result else None,
                "bytes_downloaded": a.bytes_downloaded}


def finish_switch(store: Store, st: AgentState, key: str) -> None:
    """After the model's ``current`` names the new version: active/previous, probation or
    floor, queued reports, and only the model's two versions kept. A version on probation
    raises the anti-rollback floor only when it is committed. The first model installed
    becomes the primary one (``DIR/current``)."""
    ms = st.model(key)
    sw = ms.switching
    if not sw:
        return
    vid = int(sw["version_id"])
    if ms.active != vid:
        ms.previous = ms.active
    ms.active = vid
    ms.probation = sw.get("probation")
    if ms.probation is None:
        st.highest[sw["model"]] = max(st.highest.get(sw["model"], 0), int(sw["version"]))
    st.pending_reports.extend(sw.get("reports", []))
    ms.switching = None
    st.primary = st.primary or key
    store.save_state(st)
    if st.primary == key:
        store.link_primary(key)
    mstore = store.model(key)
    for old in mstore.held():
        if old not in (ms.active, ms.previous):
            mstore.remove_version(old)
