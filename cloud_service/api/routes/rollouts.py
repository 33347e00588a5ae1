"""/v1/rollouts: send a version to selected devices in waves (``docs/protocol.md``)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from cloud_service.api.deps import (
    Offset,
    OperatorUser,
    PathId,
    SessionDep,
    StoreDep,
    ViewerUser,
    WideLimit,
)
from cloud_service.api.problems import problems
from cloud_service.errors import NotFoundError
from cloud_service.models import Rollout
from cloud_service.schemas_rollouts import (
    RolloutCreate,
    RolloutDevicePublic,
    RolloutDevicesPublic,
    RolloutEventPublic,
    RolloutEventsPublic,
    RolloutPublic,
    RolloutsPublic,
    RolloutState,
)
from cloud_service.services import rollouts as svc

router = APIRouter(prefix="/v1/rollouts", tags=["rollouts"],
                   responses=problems(401, 403, 422))


def _public(session: SessionDep, rows: list[Rollout]) -> list[RolloutPublic]:
    counts = svc.wave_counts(session=session, rollouts=rows)
    return [RolloutPublic.model_validate(r).model_copy(update={"wave_counts": counts[r.id]})
            for r in rows]


def _found(session: SessionDep, rollout_id: int) -> Rollout:
    row = svc.get_rollout(session=session, rollout_id=rollout_id)
    if row is None:
        raise NotFoundError(f"rollout {rollout_id} does not exist")
    return row


@router.post("", status_code=201, response_model=RolloutPublic, summary="Create a rollout",
             responses=problems(409),
             description="Selects devices, plans the waves over those the version fits (the others "
                         "are listed as `skipped` with the reason) and assigns the first wave. "
                         "Operator or admin role. 422 for an unknown version, an empty selection "
                         "or bad waves; 409 when a selected device is already in another active "
                         "rollout of the version's model or the version fits none of them.")
def create_rollout(body: RolloutCreate, request: Request, session: SessionDep,
                   store: StoreDep, user: OperatorUser) -> RolloutPublic:
    if request.app.state.heartbeats is not None:  # what the devices run, written first
        request.app.state.heartbeats.flush()
    row = svc.create_rollout(session=session, store=store, spec=body.model_dump(),
                             created_by=user.id)
    session.commit()
    return _public(session, [row])[0]


@router.get("", response_model=RolloutsPublic, summary="List rollouts",
            description="Rollouts, newest first, optionally in one state, with per-wave "
                        "counts. Any user role.")
def list_rollouts(session: SessionDep, user: ViewerUser,
                  state: Annotated[RolloutState | None, Query(examples=["active"])] = None,
                  offset: Offset = 0, limit: WideLimit = 50) -> RolloutsPublic:
    rows, count = svc.list_rollouts(session=session, offset=offset, limit=limit, state=state)
    return RolloutsPublic(data=_public(session, rows), count=count)


@router.get("/{rollout_id}", response_model=RolloutPublic,
            summary="A rollout: state, current wave, per-wave counts",
            description="Settings, state, current wave and, per wave, the devices in each "
                        "status. Any user role. 404 for an unknown id.",
            responses=problems(404))
def get_rollout(rollout_id: PathId, session: SessionDep, user: ViewerUser) -> RolloutPublic:
    return _public(session, [_found(session, rollout_id)])[0]


@router.get("/{rollout_id}/devices", response_model=RolloutDevicesPublic,
            summary="Per device: status, versions, bytes sent, latency, reason",
            description="The rollout's devices by id (also wave order). Any user role. 404 for an "
                        "unknown rollout.", responses=problems(404))
def list_devices(rollout_id: PathId, session: SessionDep, user: ViewerUser,
                 offset: Offset = 0, limit: WideLimit = 100) -> RolloutDevicesPublic:
    _found(session, rollout_id)
    rows, count = svc.list_rollout_devices(session=session, rollout_id=rollout_id,
                                           offset=offset, limit=limit)
    return RolloutDevicesPublic(data=[RolloutDevicePublic.model_validate(r) for r in rows],
                                count=count)


@router.get("/{rollout_id}/events", response_model=RolloutEventsPublic,
            summary="Decisions (scheduler and user) with their reasons",
            description="Every decision (created, assigned, advance, complete, abort, pause, "
                        "resume, rollback) in order, with its reason and numbers. Any user role. "
                        "404 for an unknown rollout.", responses=problems(404))
def list_events(rollout_id: PathId, session: SessionDep, user: ViewerUser,
                offset: Offset = 0, limit: WideLimit = 100) -> RolloutEventsPublic:
    _found(session, rollout_id)
    rows, count = svc.list_events(session=session, rollout_id=rollout_id, offset=offset,
                                  limit=limit)
    return RolloutEventsPublic(data=[RolloutEventPublic.model_validate(r) for r in rows],
                               count=count)


def _transition(action: Literal["pause", "resume", "abort", "rollback"], summary: str) -> None:
    @router.post(f"/{{rollout_id}}/{action}", response_model=RolloutPublic, summary=summary,
                 description=f"{summary}. Operator or admin role. 404 for an unknown id, 409 when "
                              "the rollout's state does not allow it.",
                 responses=problems(404, 409),
                 operation_id=f"{action}_rollout")
    def handler(rollout_id: PathId, session: SessionDep, user: OperatorUser) -> RolloutPublic:
        row = svc.transition(session=session, rollout_id=rollout_id, action=action, by=user.id)
        if row is None:
            raise NotFoundError(f"rollout {rollout_id} does not exist")
        session.commit()
        return _public(session, [row])[0]


_transition("pause", "Pause: assigned devices hold the version they run, no decisions")
_transition("resume", "Resume a paused rollout (the wave's timeout restarts)")
_transition("abort", "Abort: no pending device moves; assigned devices that have not "
                     "reported success go back to the version they had")
_transition("rollback", "Send every device that moved back to its previous version "
                        "(signed rollback orders)")
