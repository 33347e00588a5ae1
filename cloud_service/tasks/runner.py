"""Run one job: claim it, run ``hadmc_core.compress``, store the version; shared by the
Celery task and the embedded worker."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, or_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cloud_service.db import get_sessionmaker, session_scope, utcnow
from cloud_service.errors import JobCancelledError
from cloud_service.models import Dataset, Job, Model, ModelVersion
from cloud_service.s3store import make_store
from cloud_service.services.datasets import CORE_TASKS
from cloud_service.services.models import inspect_onnx
from cloud_service.services.plans import line_of
from cloud_service.services.versions import next_number, read_report
from cloud_service.settings import Settings
from cloud_service.storage import ArtifactStore
from cloud_service.tasks.progress import JobProgress

log = logging.getLogger(__name__)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def claim(session: Session, job_id: int, me: str, settings: Settings) -> Job | None:
    """Queued -> running (or take over a running job whose worker stopped heartbeating)."""
    now = utcnow()
    stale = now - timedelta(seconds=settings.job_stale_seconds)
    res = session.execute(
        update(Job).where(Job.id == job_id, or_(
            Job.state == "queued",
            and_(Job.state == "running", Job.heartbeat_at < stale)))
        .values(state="running", attempts=Job.attempts + 1, worker=me, started_at=now,
                heartbeat_at=now, stage="starting", done=0, total=0))
    session.commit()
    if res.rowcount == 0:  # type: ignore[attr-defined]
        return None
    job = session.get(Job, job_id)
    assert job is not None
    if job.attempts > settings.job_max_attempts:
        finish(session, job_id, me, "failed",
               error=f"gave up after {job.attempts - 1} attempts: the worker running it "
                     "stopped (killed or out of memory?)")
        return None
    return job


def finish(session: Session, job_id: int, me: str, state: str, **values: Any) -> bool:
    res = session.execute(update(Job).where(Job.id == job_id, Job.worker == me,
                                            Job.state == "running")
                          .values(state=state, finished_at=utcnow(), **values))
    session.commit()
    return bool(res.rowcount)  # type: ignore[attr-defined]


def execute_job(job_id: int, settings: Settings) -> str:
    """Run ``job_id`` if it can be claimed; returns the final state or 'skipped'."""
    me = worker_name()
    maker = get_sessionmaker(settings.database_url)
    with maker() as s:
        job = claim(s, job_id, me, settings)
        if job is None:
            log.info("job %s not claimable; skipped", job_id, extra={"job_id": job_id})
            return "skipped"
        model, dataset = s.get(Model, job.model_id), s.get(Dataset, job.dataset_id)
    progress = JobProgress(job_id, me, settings)
    progress.start()
    state, values = "failed", dict[str, Any]()
    try:
        version_id = _compress(job, model, dataset, settings, progress, me)  # type: ignore[arg-type]
        state, values = ("succeeded", {"version_id": version_id}) if version_id else ("", {})
    except JobCancelledError:
        state, values = "cancelled", {"error": "cancelled by user"}
    except Exception as e:
        from hadmc_core.errors import HadmcError

        if isinstance(e, HadmcError):
            values = {"error": str(e)}
        else:
            log.exception("job %s crashed", job_id, extra={"job_id": job_id})
            values = {"error": f"internal error: {type(e).__name__}: {e}"}
    finally:
        progress.stop()
    if state and state != "succeeded":
        with maker() as s:
            finish(s, job_id, me, state, **progress.final(), **values)
    log.info("job %s %s", job_id, state or "lost to another worker", extra={"job_id": job_id})
    return state or "skipped"


def _load_model(model: Model, data: Any, store: ArtifactStore, tmp: Path) -> Any:
    """The base model as a LoadedModel: an uploaded ONNX file (checked again: one file, read
    as data), or safetensors of the built-in architecture stored with it. Never a factory:
    nothing uploaded is imported or unpickled."""
    from hadmc_core.models import ArchSpec
    from hadmc_core.prepare import load_for
    from hadmc_core.sources import load

    if model.format == "onnx":
        path = store.link_as(model.artifact_hash, tmp, "model.onnx")
        inspect_onnx(path)
        return load_for(str(path), data, allow=("onnx",))
    spec = ArchSpec(**(model.arch or {}))
    return load(spec.arch, weights=store.path(model.artifact_hash), allow=("zoo",),
                in_channels=spec.in_channels, num_classes=spec.num_classes, stem=spec.stem,
                width=spec.width, input_shape=(spec.in_channels, *data.image_size))


def _load_inputs(model: Model, dataset: Dataset, store: ArtifactStore, tmp: Path,
                 task: str = "classify", settings: Settings | None = None
                 ) -> tuple[Any, Any, str | None]:
    """The model, the dataset fitted to its input, and the line that says how (or None)."""
    from cloud_service.services import datasets as datasets_svc
    from hadmc_core.data import load_dataset
    from hadmc_core.prepare import fit

    if task == "detect" and settings is not None:  # COCO / YOLO archive or built-in scenes
        onnx_path = store.path(model.artifact_hash) if model.format == "onnx" else None
        data = datasets_svc.load_detection_data(dataset=dataset, store=store,
                                                settings=settings, tmp=tmp,
                                                onnx_path=onnx_path)
    elif dataset.builtin:
        data = load_dataset(dataset.builtin)
    else:
        path = store.link_as(dataset.artifact_hash or "", tmp, "data.npz")
        classes = (model.arch or {}).get("num_classes") if model.format != "onnx" else None
        data = load_dataset(str(path), num_classes=classes)
    loaded = _load_model(model, data, store, tmp)
    data, note = fit(loaded, data, CORE_TASKS[task])
    return loaded, data, note


def _compress(job: Job, model: Model, dataset: Dataset, settings: Settings,
              progress: JobProgress, me: str) -> int | None:
    from cloud_service.tasks.targets import built_for, plan
    from hadmc_core.compress import compress
    from hadmc_core.config import PipelineConfig
    from hadmc_core.report import write_json

    store = make_store(settings)
    with session_scope(settings.database_url) as s:
        target = plan(s, job)
    with tempfile.TemporaryDirectory(dir=store.root / "tmp", prefix="job-") as tmp:
        progress("load", 0, 1)
        loaded, data, note = _load_inputs(model, dataset, store, Path(tmp), job.task, settings)
        if note:
            log.info("job %s: %s", job.id, note, extra={"job_id": job.id})
            progress.lines.append(note)
        cfg = PipelineConfig.from_dict(job.config)
        result = compress(loaded, data, target.profile, Path(tmp) / "out", cfg, progress,
                          device_table=target.device_table,
                          latency_correction=target.correction,
                          device_tables=target.device_tables or None,
                          task=CORE_TASKS[job.task],
                          **_update_of(job, settings, store, Path(tmp)))
        rep = result.report
        rep["target"] = {**target.info, "latency_source": rep.get("latency_source"),
                         "backend": rep.get("backend")}
        final = rep["compressed"]
        if final.get("device_table_ms"):  # what the p50s devices report are paired with
            rep["target"]["table_ms"] = final["device_table_ms"]
            rep["target"]["table_precision"] = final.get("table_precision")
        write_json(result.out_dir / "report.json", rep)
        build = built_for(target, str(rep.get("backend")), result.out_dir / "model.onnx")
        onnx_hash, onnx_size = store.ingest_file(result.out_dir / "model.onnx")
        report_hash, _ = store.ingest_file(result.out_dir / "report.json")
        png = result.out_dir / "report.png"
        png_hash = store.ingest_file(png)[0] if png.exists() else None
    summary = {**rep.get("summary", {}), "accuracy": rep["compressed"].get("accuracy"),
               "latency_ms": rep["compressed"].get("latency_ms"),
               "size_bytes": rep["compressed"].get("size_bytes"),
               "message": result.message, "report_png_hash": png_hash, "task": job.task,
               "latency_source": rep.get("latency_source"), "target": rep["target"],
               **({"dataset_fit": note} if note else {})}
    version_id = _store_version(job, settings, me, progress, onnx_hash=onnx_hash,
                                onnx_size=onnx_size, report_hash=report_hash, summary=summary,
                                met=result.met, built_for=build)
    if version_id is not None:
        publish_version(version_id, settings, store)
    return version_id


def _update_of(job: Job, settings: Settings, store: ArtifactStore, tmp: Path
               ) -> dict[str, Any]:
    """``compress()``'s arguments for a job that keeps a version's plan (``update_of``)."""
    if job.update_of_id is None:
        return {}
    from hadmc_core.plan import PlanError, from_report

    with session_scope(settings.database_url) as s:
        version = s.get(ModelVersion, job.update_of_id)
        if version is None:
            raise PlanError(f"version {job.update_of_id} (update_of) no longer exists")
        report = read_report(store=store, version=version)
        onnx_hash = version.onnx_hash
    (tmp / "update-of").mkdir(exist_ok=True)
    artifact = store.link_as(onnx_hash, tmp / "update-of", "model.onnx")
    plan = from_report(report, artifact, f"version {job.update_of_id}")
    return {"update_of": plan, "allow_restructure": job.allow_restructure}


def publish_version(version_id: int, settings: Settings, store: ArtifactStore) -> None:
    """Store the new version's signed manifest and probe. A failure only logs: the API
    computes them on first request instead."""
    from cloud_service.security import ensure_signing_key
    from cloud_service.services.publish import publish

    try:
        key = ensure_signing_key(settings.signing_key_file)
        with session_scope(settings.database_url) as s:
            ver = s.get(ModelVersion, version_id)
            if ver is not None:
                publish(session=s, store=store, version=ver, key=key)
    except Exception as e:  # the version exists either way; never fail the job for this
        log.warning("version %s: manifest/probe not stored at publication (%s); they will "
                    "be computed on first request", version_id, e,
                    extra={"version_id": version_id})


def _store_version(job: Job, settings: Settings, me: str, progress: JobProgress,
                   **fields: Any) -> int | None:
    """Version row + job success in one transaction, only if this worker still owns it."""
    for _ in range(5):  # concurrent versions of one model race for the next number
        with session_scope(settings.database_url) as s:
            try:
                line = line_of(job, s)  # an update continues its version's line
                ver = ModelVersion(model_id=line, job_id=job.id, profile=job.profile,
                                   number=next_number(session=s, model_id=line),
                                   onnx_hash=fields["onnx_hash"], onnx_size=fields["onnx_size"],
                                   report_hash=fields["report_hash"], summary=fields["summary"],
                                   constraints_met=fields["met"], built_for=fields["built_for"])
                s.add(ver)
                s.flush()
            except IntegrityError:
                s.rollback()
                continue
            res = s.execute(update(Job).where(Job.id == job.id, Job.worker == me,
                                              Job.state == "running")
                            .values(state="succeeded", version_id=ver.id, finished_at=utcnow(),
                                    stage="done", **progress.final()))
            if res.rowcount == 0:  # type: ignore[attr-defined]
                s.rollback()  # cancelled or taken over meanwhile: no version
                return None
            return ver.id
    raise RuntimeError("could not allocate a version number")


class EmbeddedWorker(threading.Thread):
    """``hadmc serve`` without a broker: run queued jobs one at a time in this process."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="hadmc-embedded-worker", daemon=True)
        self.settings, self.wake, self.stopping = settings, threading.Event(), threading.Event()

    def next_job(self) -> int | None:
        from sqlalchemy import select

        with get_sessionmaker(self.settings.database_url)() as s:
            return s.scalar(select(Job.id).where(Job.state == "queued").order_by(Job.id)
                            .limit(1))

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                job_id = self.next_job()
                if job_id is not None:
                    execute_job(job_id, self.settings)
                    continue
            except Exception:
                log.exception("embedded worker error")
            self.wake.wait(2.0)
            self.wake.clear()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
