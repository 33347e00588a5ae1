"""/v1/tokens: the calling user's API tokens."""

from __future__ import annotations

from fastapi import APIRouter

from cloud_service.api.deps import CurrentUser, Limit, Offset, PathId, SessionDep
from cloud_service.api.problems import problems
from cloud_service.errors import NotFoundError
from cloud_service.schemas import ApiTokenCreate, ApiTokenCreated, ApiTokenPublic, Page
from cloud_service.services import auth as svc

router = APIRouter(prefix="/v1/tokens", tags=["tokens"], responses=problems(401, 403, 422))


@router.post("", status_code=201, response_model=ApiTokenCreated,
             summary="Create an API token",
             description="A new token of the calling user, valid until `expires_in_days` "
                         "(null: until revoked); the token itself is in this answer only "
                         "(stored hashed). Users only.")
def create_token(body: ApiTokenCreate, session: SessionDep,
                 user: CurrentUser) -> ApiTokenCreated:
    row, token = svc.create_api_token(session=session, user_id=user.id, name=body.name,
                                      expires_in_days=body.expires_in_days)
    session.commit()
    return ApiTokenCreated(**ApiTokenPublic.model_validate(row).model_dump(), token=token)


@router.get("", response_model=Page[ApiTokenPublic], summary="List your API tokens",
            description="The calling user's tokens (never the secrets), newest first, with "
                        "expiry and revocation. Users only.")
def list_tokens(session: SessionDep, user: CurrentUser, offset: Offset = 0,
                limit: Limit = 50) -> Page[ApiTokenPublic]:
    rows, count = svc.list_api_tokens(session=session, user_id=user.id, offset=offset,
                                      limit=limit)
    return Page[ApiTokenPublic](data=[ApiTokenPublic.model_validate(r) for r in rows],
                                count=count)


@router.delete("/{token_id}", response_model=ApiTokenPublic, summary="Revoke an API token",
               responses=problems(404, 409),
               description="The token stops working at once (401). Users only, for their own "
                           "tokens (the one in use included). 404 for an unknown id or "
                           "another user's token, 409 when already revoked.")
def revoke_token(token_id: PathId, session: SessionDep, user: CurrentUser) -> ApiTokenPublic:
    row = svc.revoke_api_token(session=session, token_id=token_id, user_id=user.id)
    if row is None:
        raise NotFoundError(f"API token {token_id} does not exist")
    session.commit()
    return ApiTokenPublic.model_validate(row)
