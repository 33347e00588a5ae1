"""/v1/tokens: the calling user's API tokens (created and revoked by admins; any token may
revoke itself)."""

from __future__ import annotations

from fastapi import APIRouter

from cloud_service.api.deps import (
    AdminUser,
    CurrentUser,
    Limit,
    Offset,
    PathId,
    SessionDep,
    ViewerUser,
    check_role,
)
from cloud_service.api.problems import problems
from cloud_service.errors import NotFoundError
from cloud_service.schemas import ApiTokenCreate, ApiTokenCreated, ApiTokenPublic, Page
from cloud_service.services import auth as svc

router = APIRouter(prefix="/v1/tokens", tags=["tokens"], responses=problems(401, 403, 422))


@router.post("", status_code=201, response_model=ApiTokenCreated,
             summary="Create an API token",
             description="A new token of the calling user with `role` (viewer, operator or "
                         "admin; default operator), valid until `expires_in_days` (null: until "
                         "revoked); the token itself is in this answer only (stored hashed). "
                         "Admin role: 403 for operator and viewer tokens.")
def create_token(body: ApiTokenCreate, session: SessionDep,
                 user: AdminUser) -> ApiTokenCreated:
    row, token = svc.create_api_token(session=session, user_id=user.id, role=body.role,
                                      name=body.name, expires_in_days=body.expires_in_days)
    session.commit()
    return ApiTokenCreated(**ApiTokenPublic.model_validate(row).model_dump(), token=token)


@router.get("", response_model=Page[ApiTokenPublic], summary="List your API tokens",
            description="The calling user's tokens (never the secrets), newest first, with "
                        "role, expiry and revocation. Any user role.")
def list_tokens(session: SessionDep, user: ViewerUser, offset: Offset = 0,
                limit: Limit = 50) -> Page[ApiTokenPublic]:
    rows, count = svc.list_api_tokens(session=session, user_id=user.id, offset=offset,
                                      limit=limit)
    return Page[ApiTokenPublic](data=[ApiTokenPublic.model_validate(r) for r in rows],
                                count=count)


@router.delete("/{token_id}", response_model=ApiTokenPublic, summary="Revoke an API token",
               responses=problems(404, 409),
               description="The token stops working at once (401). Admin role for any of the "
                           "caller's own tokens; a token of any role may revoke itself (the "
                           "one in use). 404 for an unknown id or another user's token, 409 "
                           "when already revoked.")
def revoke_token(token_id: PathId, session: SessionDep, user: CurrentUser) -> ApiTokenPublic:
    if token_id != user.token_id:  # retiring itself never adds power; others: admin only
        check_role(user, "admin")
    row = svc.revoke_api_token(session=session, token_id=token_id, user_id=user.id)
    if row is None:
        raise NotFoundError(f"API token {token_id} does not exist")
    session.commit()
    return ApiTokenPublic.model_validate(row)
