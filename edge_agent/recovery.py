"""Start-up recovery: after any crash (SIGKILL included) bring the data directory back to
"``current`` names a complete version that verifies against the pinned key", with
``state.json`` agreeing, and ``staging/`` empty."""

from __future__ import annotations

import logging

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent import verify
from edge_agent.errors import AgentError
from edge_agent.health import roll_back
from edge_agent.store import MANIFEST_FILE, AgentState, Store
from edge_agent.update import finish_switch
from hadmc_core.delta import SignedManifest
from hadmc_core.delta.errors import DeltaError

log = logging.getLogger(__name__)


def verify_held(store: Store, vid: int, key: Ed25519PublicKey) -> SignedManifest | None:
    """The version's manifest if it is signed by ``key`` and every file matches it.
    Expiry is not checked: it limits accepting a version, not keeping one."""
    d = store.version_dir(vid)
    try:
        signed = SignedManifest.from_bytes((d / MANIFEST_FILE).read_bytes())
        signed.verify(key)
        verify.check_files(d, signed)
    except (OSError, DeltaError, AgentError) as e:
        log.warning("held version %d does not verify: %s", vid, e, extra={"version_id": vid})
        return None
    return signed


class _Checked:
    """Verify each held version at most once per start."""

    def __init__(self, store: Store, key: Ed25519PublicKey) -> None:
        self.store, self.key = store, key
        self.seen: dict[int, SignedManifest | None] = {}

    def __call__(self, vid: int | None) -> SignedManifest | None:
        if vid is None:
            return None
        if vid not in self.seen:
            self.seen[vid] = verify_held(self.store, vid, self.key)
        return self.seen[vid]


def _resume_probation(store: Store, st: AgentState, checked: _Checked) -> None:
    """A probation survives a restart while its version is still the active one; a
    decided failure finishes its rollback; a version that no longer verifies fails it."""
    p = st.probation
    if not p:
        return
    vid = int(p["version_id"])
    if p.get("failed"):
        roll_back(store, st, lambda v: checked(v) is not None)
    elif st.active != vid:
        st.pending_reports.append({"kind": "updates", "body": {
            **p["report"], "ok": False, "phase": "health", "p50_ms": None, "p95_ms": None,
            "reason": "the version on probation did not verify after a restart"}})
        st.probation = None
    else:
        log.info("version %d is still on probation until %s", vid, p.get("until"),
                 extra={"version_id": vid})


def recover(store: Store, key: Ed25519PublicKey) -> AgentState:
    """Empty staging, finish or forget an interrupted switch, make ``current`` name a
    verified version (the newest of current / active / previous that verifies), and keep
    only the active and previous versions."""
    store.ensure()
    cleaned = store.clean_staging()
    if cleaned:
        log.info("removed %d leftover(s) from staging", cleaned)
    st = store.load_state()
    cur = store.current_vid()
    checked = _Checked(store, key)
    sw = st.switching
    if sw and cur == sw.get("version_id") and checked(cur):
        finish_switch(store, st)  # the rename happened; the bookkeeping did not
    st.switching = None
    active = next((v for v in (cur, st.active, st.previous) if checked(v)), None)
    if active is None:
        if cur is not None or store.current.is_symlink():
            log.warning("no held version verifies; removing current until an update")
            store.unlink_current()
    elif active != cur:
        log.warning("current named %s; switching back to verified version %d", cur, active)
        store.switch(active)
    if active != st.active:
        st.previous = st.active
        st.active = active
    if st.previous == st.active or not checked(st.previous):
        st.previous = None
    _resume_probation(store, st, checked)
    signed = checked(active)
    if signed is not None and st.probation is None:  # a version on probation is not
        m = signed.manifest  # committed yet: the floor waits for its commit
        st.highest[m.model] = max(st.highest.get(m.model, 0), m.version)
    for vid in store.held():
        if vid not in (st.active, st.previous):
            store.remove_version(vid)
    store.save_state(st)
    return st
