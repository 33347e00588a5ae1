"""The agent's data directory (docs/protocol.md, docs/agent.md) and its crash-safe changes.

Invariants: a ``versions/<vid>/`` directory appears only by renaming a complete, verified
staging directory, and is never modified afterwards; ``current`` is a symlink replaced in
one ``rename``; ``state.json`` is written to a temp file, fsynced and renamed. So a SIGKILL
at any point leaves ``current`` naming either the old or the new complete version, and
``recover`` (at every start) only has to empty ``staging/`` and reconcile ``state.json``.
"""

from __future__ import annotations

import json
import logging
import os
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


@dataclass
class Credentials:
    device_id: int
    credential: str
    server_url: str = ""


@dataclass
class AgentState:
    """What survives restarts besides the version files."""

    #: Highest accepted version number per model line (the manifest's ``model``).
    highest: dict[str, int] = field(default_factory=dict)
    active: int | None = None
    previous: int | None = None
    #: Update reports not yet acknowledged by the server, oldest first.
    pending_reports: list[dict[str, Any]] = field(default_factory=list)
    #: Set just before ``current`` is switched; ``recover`` completes or drops it.
    switching: dict[str, Any] | None = None
    #: The active version while its health window runs (``edge_agent.health``): committed
    #: at the end of the window, or rolled back to ``previous``.
    probation: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AgentState:
        return cls(highest={str(k): int(v) for k, v in (d.get("highest") or {}).items()},
                   active=d.get("active"), previous=d.get("previous"),
                   pending_reports=list(d.get("pending_reports") or [])[-50:],
                   switching=d.get("switching"), probation=d.get("probation"))


class Store:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.versions = self.root / "versions"
        self.staging = self.root / "staging"
        self.current = self.root / "current"
        self.state_path = self.root / "state.json"
        self.cred_path = self.root / "credentials.json"
        self.key_path = self.root / "server.pub"

    def ensure(self) -> None:
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.root, 0o700)
            self.versions.mkdir(exist_ok=True)
            self.staging.mkdir(exist_ok=True)
        except OSError as e:
            raise DataDirError(f"cannot use data directory {self.root}: {e.strerror}; pass "
                               "--data-dir (or HADMC_AGENT_DATA_DIR) with a writable path") from e

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
    def load_state(self) -> AgentState:
        try:
            return AgentState.from_dict(json.loads(self.state_path.read_text()))
        except FileNotFoundError:
            return AgentState()
        except (OSError, ValueError, TypeError, AttributeError) as e:
            log.warning("state.json unreadable (%s); rebuilding it from the versions held", e)
            return AgentState()

    def save_state(self, state: AgentState) -> None:
        write_atomic(self.state_path, json.dumps(asdict(state), sort_keys=True).encode())

    # -- versions --------------------------------------------------------------------------
    def version_dir(self, vid: int) -> Path:
        return self.versions / str(int(vid))

    def held(self) -> list[int]:
        return sorted(int(p.name) for p in self.versions.iterdir() if p.name.isdigit())

    def new_staging(self, label: str) -> Path:
        path = self.staging / f"{label}-{uuid.uuid4().hex[:8]}"
        path.mkdir()
        return path

    def install(self, staged: Path, vid: int) -> Path:
        """Move a complete, verified staging directory into ``versions/<vid>`` (one rename)."""
        for p in staged.iterdir():
            with p.open("rb") as f:
                os.fsync(f.fileno())
        fsync_dir(staged)
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
            raise SwitchError(f"version {vid} is not installed")
        tmp = self.root / f".current.new-{uuid.uuid4().hex[:8]}"
        try:
            os.symlink(f"versions/{vid}", tmp)
            os.replace(tmp, self.current)
            fsync_dir(self.root)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise SwitchError(f"could not switch current to version {vid}: {e}") from e

    def unlink_current(self) -> None:
        self.current.unlink(missing_ok=True)
        fsync_dir(self.root)

    def clean_staging(self) -> int:
        """Empty ``staging/`` and drop half-made links and temp files; returns the count."""
        n = 0
        for p in list(self.staging.iterdir()):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            n += 1
        for p in self.root.glob(".*.tmp-*"):
            p.unlink(missing_ok=True)
            n += 1
        for p in self.root.glob(".current.new-*"):
            p.unlink(missing_ok=True)
            n += 1
        return n
