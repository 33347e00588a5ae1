"""Start-up recovery: after any crash (SIGKILL included) bring the data directory back to
"each model's ``current`` names a complete version of that model that verifies against
the pinned key", with ``state.json`` agreeing, and ``staging/`` empty. A data directory of
the one-model layout is moved into the per-model one first (``edge_agent.layout``)."""

from __future__ import annotations

import logging

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent import verify
from edge_agent.errors import AgentError, VerifyError
from edge_agent.health import roll_back
from edge_agent.layout import migrate
from edge_agent.store import MANIFEST_FILE, AgentState, ModelStore, Store
from edge_agent.update import finish_switch
from hadmc_core.delta import SignedManifest
from hadmc_core.delta.errors import DeltaError

log = logging.getLogger(__name__)


def verify_held(store: ModelStore, vid: int, key: Ed25519PublicKey) -> SignedManifest | None:
    """The version's manifest if it is signed by ``key``, is of this model, and every file
    matches it. Expiry is not checked: it limits accepting a version, not keeping one."""
    d = store.version_dir(vid)
    try:
        signed = SignedManifest.from_bytes((d / MANIFEST_FILE).read_bytes())
        signed.verify(key)
        if signed.manifest.model != store.key:
            raise VerifyError(f"it is a version of {signed.manifest.model}")
        verify.check_files(d, signed)
    except (OSError, DeltaError, AgentError) as e:
        log.warning("held version %d of %s does not verify: %s", vid, store.key, e,
                    extra={"version_id": vid, "model": store.key})
        return None
    return signed


class _Checked:
    """Verify each held version of one model at most once per start."""

    def __init__(self, store: ModelStore, key: Ed25519PublicKey) -> None:
        self.store, self.key = store, key
        self.seen: dict[int, SignedManifest | None] = {}

    def __call__(self, vid: int | None) -> SignedManifest | None:
        if vid is None:
            return None
        if vid not in self.seen:
            self.seen[vid] = verify_held(self.store, vid, self.key)
        return self.seen[vid]


def _resume_probation(store: Store, st: AgentState, name: str, checked: _Checked) -> None:
    """A probation survives a restart while its version is still the active one; a
    decided failure finishes its rollback; a version that no longer verifies fails it."""
    ms = st.model(name)
    p = ms.probation
    if not p:
        return
    vid = int(p["version_id"])
    if p.get("failed"):
        roll_back(store, st, name, lambda v: checked(v) is not None)
    elif ms.active != vid:
        st.pending_reports.append({"kind": "updates", "body": {
            **p["report"], "ok": False, "phase": "health", "p50_ms": None, "p95_ms": None,
            "reason": "the version on probation did not verify after a restart"}})
        ms.probation = None
    else:
        log.info("%s version %d is still on probation until %s", name, vid, p.get("until"),
                 extra={"version_id": vid, "model": name})


def _recover_model(store: Store, st: AgentState, name: str, key: Ed25519PublicKey) -> None:
    """One model: finish or forget an interrupted switch, make its ``current`` name a
    verified version (the newest of current / active / previous that verifies), and keep
    only its active and previous versions."""
    mstore, ms = store.model(name), st.model(name)
    cur = mstore.current_vid()
    checked = _Checked(mstore, key)
    sw = ms.switching
    if sw and cur == sw.get("version_id") and checked(cur):
        finish_switch(store, st, name)  # the rename happened; the bookkeeping did not
    ms.switching = None
    active = next((v for v in (cur, ms.active, ms.previous) if checked(v)), None)
    if active is None:
        if cur is not None or mstore.current.is_symlink():
            log.warning("no held version of %s verifies; removing its current until an "
                        "update", name)
            mstore.unlink_current()
    elif active != cur:
        log.warning("%s current named %s; switching back to verified version %d", name, cur,
                    active)
        mstore.switch(active)
    if active != ms.active:
        ms.previous = ms.active
        ms.active = active
    if ms.previous == ms.active or not checked(ms.previous):
        ms.previous = None
    _resume_probation(store, st, name, checked)
    signed = checked(ms.active)
    if signed is not None and ms.probation is None:  # a version on probation is not
        m = signed.manifest  # committed yet: the floor waits for its commit
        st.highest[m.model] = max(st.highest.get(m.model, 0), m.version)
    for vid in mstore.held():
        if vid not in (ms.active, ms.previous):
            mstore.remove_version(vid)


def recover(store: Store, key: Ed25519PublicKey) -> AgentState:
    """Move a one-model layout, empty staging, then recover every model (``_recover_model``);
    the primary model's link ``DIR/current`` is made again when missing."""
    store.ensure()
    migrate(store)
    cleaned = store.clean_staging()
    if cleaned:
        log.info("removed %d leftover(s) from staging", cleaned)
    st = store.load_state()
    for name in sorted(set(st.models) | set(store.model_keys())):
        _recover_model(store, st, name, key)
        ms = st.models[name]
        if ms.active is None and ms.previous is None and name != st.primary:
            del st.models[name]  # nothing held: forget it (its directory stays empty)
    if st.primary is None:
        st.primary = next((k for k, ms in st.models.items() if ms.active is not None), None)
    if st.primary is not None and st.primary in st.models:
        store.link_primary(st.primary)
    store.save_state(st)
    return st
