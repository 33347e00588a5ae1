"""Moving a data directory of the one-model layout into the per-model one, at start.

The one-model layout (agents before several models per device)::

    DIR/versions/<vid>/    DIR/current -> versions/<vid>
    DIR/state.json         {"active", "previous", "switching", "probation", "highest", ...}

becomes::

    DIR/models/<name>/versions/<vid>/    DIR/models/<name>/current -> versions/<vid>
    DIR/current -> models/<name>/current   (the same stable path for applications)
    DIR/state.json         {"layout": 2, "primary": <name>, "models": {<name>: {...}}, ...}

where ``<name>`` is the model line of the version it ran (its signed manifest's
``model``). The steps, each of which is a rename or a new link and each safe to repeat:

1. ``models/<name>/current`` -> ``versions/<vid>`` (made once; dangling until step 2);
2. rename ``DIR/versions`` to ``models/<name>/versions`` (all versions in one rename);
3. ``DIR/current`` -> ``models/<name>/current`` (a new link renamed over the old one);
4. ``state.json`` in the new layout, written atomically: only then is it done.

A crash before step 4 leaves the old ``state.json``, so the next start runs the steps again
from where they stopped. Between steps 2 and 3 ``DIR/current`` dangles for the time of one
rename; applications that hold the model file open are not affected.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from pathlib import Path
from typing import Any

from edge_agent.errors import DataDirError
from edge_agent.store import (
    MANIFEST_FILE,
    MODEL_KEY,
    AgentState,
    ModelState,
    Store,
    replace_link,
)
from hadmc_core.delta import SignedManifest
from hadmc_core.delta.errors import DeltaError
from hadmc_core.fsutil import fsync_dir

log = logging.getLogger(__name__)
OLD_VERSIONS = "versions"


def needs_migration(store: Store) -> bool:
    """The directory is (still) in the one-model layout."""
    if (store.root / OLD_VERSIONS).is_dir():
        return True
    d = store.read_state()
    return d is not None and "models" not in d


def migrate(store: Store) -> str | None:
    """Bring a one-model data directory into the per-model layout (nothing when it is
    not one). Returns the name of the model it ran, None when it ran none."""
    if not needs_migration(store):
        return None
    old = store.read_state() or {}
    legacy = store.root / OLD_VERSIONS
    key = _model_of(store, legacy, old)
    if key is None:
        _discard(store, legacy)
    else:
        mdir = store.models / key
        mdir.mkdir(parents=True, exist_ok=True)
        running = _old_current(store) or _int(old.get("active"))
        if running is not None and not (mdir / "current").is_symlink():
            replace_link(mdir, mdir / "current", f"versions/{running}")
        if legacy.is_dir():
            _move_versions(legacy, mdir / "versions", store.staging)
        store.link_primary(key)
    store.save_state(_new_state(old, key))
    log.info("data directory moved to the per-model layout%s",
             f" (model {key})" if key else " (no version held)")
    return key


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _old_current(store: Store) -> int | None:
    """The version ``DIR/current`` names in the one-model layout (``versions/<vid>``)."""
    try:
        parts = Path(os.readlink(store.current)).parts
    except OSError:
        return None
    return int(parts[1]) if len(parts) == 2 and parts[0] == OLD_VERSIONS \
        and parts[1].isdigit() else None


def _model_of(store: Store, legacy: Path, old: dict[str, Any]) -> str | None:
    """The model line the old directory ran: from the manifest of the version ``current``
    named (or the active, previous or any held one), wherever a repeated run left it."""
    vids = [_old_current(store), _int(old.get("active")), _int(old.get("previous"))]
    if legacy.is_dir():
        vids += sorted(int(p.name) for p in legacy.iterdir() if p.name.isdigit())
    places = [legacy, *(store.models / k / "versions" for k in store.model_keys())]
    for vid in vids:
        for place in places if vid is not None else []:
            try:
                model = SignedManifest.from_bytes(
                    (place / str(vid) / MANIFEST_FILE).read_bytes()).manifest.model
            except (OSError, DeltaError, ValueError):
                continue
            if MODEL_KEY.fullmatch(model):
                return model
    for record in (old.get("switching"), old.get("probation")):
        named = record.get("model") if isinstance(record, dict) else None
        if isinstance(named, str) and MODEL_KEY.fullmatch(named):
            return named
    return None


def _move_versions(src: Path, dst: Path, staging: Path) -> None:
    if not dst.exists():
        os.rename(src, dst)
        fsync_dir(dst.parent)
        fsync_dir(src.parent)
        return
    for p in sorted(src.iterdir()):  # a version the new layout already has is left out
        target = dst / p.name if p.name.isdigit() and not (dst / p.name).exists() \
            else staging / f"trash-{p.name}-{uuid.uuid4().hex[:8]}"
        os.rename(p, target)
    fsync_dir(dst)
    src.rmdir()
    fsync_dir(src.parent)


def _discard(store: Store, legacy: Path) -> None:
    """Nothing usable was held: the versions go to staging (emptied next), the link too."""
    if legacy.is_dir():
        os.rename(legacy, store.staging / f"trash-versions-{uuid.uuid4().hex[:8]}")
    if _old_current(store) is not None:
        with contextlib.suppress(FileNotFoundError):
            store.current.unlink()
    fsync_dir(store.root)


def _new_state(old: dict[str, Any], key: str | None) -> AgentState:
    try:
        st = AgentState.from_dict({"highest": old.get("highest"),
                                   "pending_reports": old.get("pending_reports")})
    except (ValueError, TypeError, AttributeError, DataDirError):
        st = AgentState()
    if key is not None:
        def mine(record: Any) -> dict[str, Any] | None:
            return record if isinstance(record, dict) and record.get("model") == key \
                else None

        st.models[key] = ModelState(active=_int(old.get("active")),
                                    previous=_int(old.get("previous")),
                                    switching=mine(old.get("switching")),
                                    probation=mine(old.get("probation")))
        st.primary = key
    return st
