"""The agent's data directory (docs/protocol.md, docs/agent.md) and its crash-safe changes.

One directory per model, ``models/<name>/`` (the name is the model line signed manifests
carry), each with its own ``versions/<vid>/`` and ``current`` link. Invariants: a version
directory appears only by renaming a complete, verified staging directory, and is never
modified afterwards; each ``current`` is a symlink replaced in one ``rename``;
``state.json`` is written to a temp file, fsynced and renamed. So a SIGKILL at any point
leaves every model's ``current`` naming either its old or its new complete version, and
``recover`` (at every start) only has to empty ``staging/`` and reconcile ``state.json``.
A data directory of the one-model layout is moved into this one first
(``edge_agent.layout``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.errors import DataDirError, EnrollmentError, SwitchError
from hadmc_core.fsutil import fsync_dir, write_atomic  # also this module's names

log = logging.getLogger(__name__)
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
PROBE_FILE = "probe.npz"
#: ``state.json``'s layout: 2 = one directory per model under ``models/``.
LAYOUT = 2


@dataclass
class Credentials:
    device_id: int
    credential: str
    server_url: str = ""


#: A model's name on the device: its model line as signed manifests name it (the server's
#: ``model-<id>``); a directory name under ``models/`` and a path segment of the URL.
MODEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def check_key(key: str) -> str:
    if not isinstance(key, str) or not MODEL_KEY.fullmatch(key):
        raise DataDirError(f"{key!r} is not a usable model name (letters, digits, '_.-')")
    return key


@dataclass
class ModelState:
    """One model's versions: what ``models/<name>/current`` names and what it goes back to."""

    active: int | None = None
    previous: int | None = None
    #: Set just before ``current`` is switched; ``recover`` completes or drops it.
    switching: dict[str, Any] | None = None
    #: The active version while its health window runs (``edge_agent.health``): committed
    #: at the end of the window, or rolled back to ``previous``.
    probation: dict[str, Any] | None = None
    #: The server's id and name of the model (from the desired state; None until known).
    model_id: int | None = None
    name: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelState:
        return cls(active=d.get("active"), previous=d.get("previous"),
                   switching=d.get("switching"), probation=d.get("probation"),
                   model_id=d.get("model_id"), name=d.get("name"))


@dataclass
class AgentState:
    """What survives restarts besides the version files."""

    #: Highest accepted version number per model line (the manifest's ``model``).
    highest: dict[str, int] = field(default_factory=dict)
    #: Update reports not yet acknowledged by the server, oldest first.
    pending_reports: list[dict[str, Any]] = field(default_factory=list)
    #: Per model name (``check_key``).
    models: dict[str, ModelState] = field(default_factory=dict)
    #: The first model installed: ``DIR/current`` and ``/v1/infer`` serve it, and it is what
    #: an agent that ran one model had.
    primary: str | None = None
    #: The data directory layout (2: per model; 1: one model, migrated at start).
    layout: int = LAYOUT

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AgentState:
        return cls(highest={str(k): int(v) for k, v in (d.get("highest") or {}).items()},
                   pending_reports=list(d.get("pending_reports") or [])[-50:],
                   models={check_key(k): ModelState.from_dict(v)
                           for k, v in (d.get("models") or {}).items()},
                   primary=d.get("primary"), layout=int(d.get("layout") or 1))

    def model(self, key: str) -> ModelState:
        """The state of model ``key`` (created empty for a new model)."""
        return self.models.setdefault(check_key(key), ModelState())

    # The primary model's versions, as an agent that ran one model had them.
    @property
    def active(self) -> int | None:
        return self.models[self.primary].active if self.primary in self.models else None

    @property
    def previous(self) -> int | None:
        return self.models[self.primary].previous if self.primary in self.models else None

    @property
    def probation(self) -> dict[str, Any] | None:
        return self.models[self.primary].probation if self.primary in self.models else None


class Store:
    """The data directory: credentials, pinned key, state, shared staging, and one
    ``ModelStore`` per model under ``models/``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.models = self.root / "models"
        self.staging = self.root / "staging"
        #: ``DIR/current`` -> ``models/<primary>/current``: the primary model's stable path.
        self.current = self.root / "current"
        self.state_path = self.root / "state.json"
        self.cred_path = self.root / "credentials.json"
        self.key_path = self.root / "server.pub"

    def ensure(self) -> None:
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.root, 0o700)
            self.models.mkdir(exist_ok=True)
            self.staging.mkdir(exist_ok=True)
        except OSError as e:
            raise DataDirError(f"cannot use data directory {self.root}: {e.strerror}; pass "
                               "--data-dir (or HADMC_AGENT_DATA_DIR) with a writable path") from e

    def model(self, key: str) -> ModelStore:
        return ModelStore(self.models / check_key(key), self.staging)

    def model_keys(self) -> list[str]:
        """The models that have a directory."""
        if not self.models.is_dir():
            return []
        return sorted(p.name for p in self.models.iterdir()
                      if p.is_dir() and not p.is_symlink() and MODEL_KEY.fullmatch(p.name))

    # -- credentials and pinned key --------------------------------------------------------
    def load_credentials(self) -> Credentials | None:
        if not self.cred_path.exists():
            return None
        try:
            d = json.loads(self.cred_path.read_text())
            return Credentials(int(d["device_id"]), str(d["credential"]),
                               str(d.get("server_url", "")))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise EnrollmentError(f"{self.cred_path} is unreadable ({e}); delete it and enroll "
                                  "again with a new token") from e

    def save_enrollment(self, creds: Credentials, public_pem: bytes) -> None:
        write_atomic(self.key_path, public_pem, 0o600)
        write_atomic(self.cred_path, json.dumps(asdict(creds)).encode(), 0o600)

    def public_pem(self) -> bytes:
        try:
            return self.key_path.read_bytes()
        except OSError as e:
            raise EnrollmentError(f"pinned server key {self.key_path} is missing; delete "
                                  "credentials.json and enroll again") from e

    # -- state -----------------------------------------------------------------------------
    def read_state(self) -> dict[str, Any] | None:
        """``state.json`` as stored (None when missing or unreadable)."""
        try:
            d = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("state.json unreadable (%s); rebuilding it from the versions held", e)
            return None
        return d if isinstance(d, dict) else None

    def load_state(self) -> AgentState:
        d = self.read_state()
        try:
            return AgentState.from_dict(d) if d is not None else AgentState()
        except (ValueError, TypeError, AttributeError, DataDirError) as e:
            log.warning("state.json unreadable (%s); rebuilding it from the versions held", e)
            return AgentState()

    def save_state(self, state: AgentState) -> None:
        state.layout = LAYOUT
        write_atomic(self.state_path, json.dumps(asdict(state), sort_keys=True).encode())

    # -- staging and the primary link ------------------------------------------------------
    def new_staging(self, label: str) -> Path:
        path = self.staging / f"{label}-{uuid.uuid4().hex[:8]}"
        path.mkdir()
        return path

    def primary_key(self) -> str | None:
        """The model ``DIR/current`` names (None: no link yet)."""
        try:
            parts = Path(os.readlink(self.current)).parts
        except OSError:
            return None
        ok = len(parts) == 3 and parts[0] == "models" and parts[2] == "current"
        return parts[1] if ok and MODEL_KEY.fullmatch(parts[1]) else None

    def current_vid(self) -> int | None:
        """The primary model's current version."""
        key = self.primary_key()
        return self.model(key).current_vid() if key else None

    def link_primary(self, key: str) -> None:
        """Point ``DIR/current`` at ``models/<key>/current`` (one rename of a new link);
        ``DIR/current/model.onnx`` is then the primary model's stable path."""
        if self.primary_key() == key:
            return
        if self.current.exists() and not self.current.is_symlink():
            log.warning("%s is not a link; leaving it (the primary model's path is %s)",
                        self.current, self.model(key).current)
            return
        replace_link(self.root, self.current, f"models/{check_key(key)}/current")

    def clean_staging(self) -> int:
        """Empty ``staging/`` and drop half-made links and temp files; returns the count."""
        n = 0
        for p in list(self.staging.iterdir()):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            n += 1
        for d in [self.root, *(self.models / k for k in self.model_keys())]:
            for p in [*d.glob(".*.tmp-*"), *d.glob(".current.new-*")]:
                p.unlink(missing_ok=True)
                n += 1
        return n


def replace_link(directory: Path, link: Path, target: str) -> None:
    """Make ``link`` (in ``directory``) a symlink to ``target`` by renaming a new link over
    it, then fsync the directory."""
    tmp = directory / f".current.new-{uuid.uuid4().hex[:8]}"
    try:
        os.symlink(target, tmp)
        os.replace(tmp, link)
        fsync_dir(directory)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise SwitchError(f"could not point {link} at {target}: {e}") from e


class ModelStore:
    """One model's files: ``models/<name>/versions/<vid>/`` and the ``current`` link.

    Invariants: a version directory appears only by renaming a complete, verified staging
    directory, and is never modified afterwards; ``current`` is a symlink replaced in one
    ``rename``."""

    def __init__(self, root: Path, staging: Path) -> None:
        self.root, self.staging = root, staging
        self.key = root.name
        self.versions = root / "versions"
        self.current = root / "current"

    def ensure(self) -> None:
        self.versions.mkdir(parents=True, exist_ok=True)

    def version_dir(self, vid: int) -> Path:
        return self.versions / str(int(vid))

    def held(self) -> list[int]:
        if not self.versions.is_dir():
            return []
        return sorted(int(p.name) for p in self.versions.iterdir() if p.name.isdigit())

    def install(self, staged: Path, vid: int) -> Path:
        """Move a complete, verified staging directory into ``versions/<vid>`` (one rename)."""
        for p in staged.iterdir():
            with p.open("rb") as f:
                os.fsync(f.fileno())
        fsync_dir(staged)
        self.ensure()
        target = self.version_dir(vid)
        if target.exists():
            self.remove_version(vid)
        os.rename(staged, target)
        fsync_dir(self.versions)
        return target

    def remove_version(self, vid: int) -> None:
        """Rename out of ``versions/`` first, so a crash leaves debris only in staging."""
        src = self.version_dir(vid)
        if src.exists():
            trash = self.staging / f"trash-{vid}-{uuid.uuid4().hex[:8]}"
            os.rename(src, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def current_vid(self) -> int | None:
        try:
            target = os.readlink(self.current)
        except OSError:
            return None
        name = Path(target).name
        return int(name) if name.isdigit() and Path(target).parent.name == "versions" else None

    def switch(self, vid: int) -> None:
        """Point ``current`` at ``versions/<vid>`` by renaming a new link over it."""
        if not self.version_dir(vid).is_dir():
            raise SwitchError(f"version {vid} of {self.key} is not installed")
        replace_link(self.root, self.current, f"versions/{vid}")

    def unlink_current(self) -> None:
        self.current.unlink(missing_ok=True)
        fsync_dir(self.root)
