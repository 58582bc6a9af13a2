"""Sign-in: OAuth2 password and refresh-token grants, sign-out."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from medtwin.apps.api.auth import Policy, Principal
from medtwin.apps.api.context import ServiceContext
from medtwin.apps.api.deps import Context, guard
from medtwin.data.accounts import Role, User

router = APIRouter(prefix="/auth", tags=["auth"])
SIGN_IN = Policy.open("login")
SIGN_OUT = Policy.allow(*Role, action="logout")


class TokenAnswer(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int
    refresh_token: str


def issue_pair(context: ServiceContext, user: User) -> TokenAnswer:
    access, _, _ = context.tokens.issue(user, "access")
    refresh, jti, expires_us = context.tokens.issue(user, "refresh")
    context.accounts.remember_refresh(jti, user.username, expires_us)
    return TokenAnswer(
        access_token=access,
        expires_in=context.settings.access_token_ttl_s,
        refresh_token=refresh,
    )


def _now_us() -> int:
    return time.time_ns() // 1_000


@router.post("/token", response_model=TokenAnswer, dependencies=[guard(SIGN_IN)])
async def token(
    request: Request,
    context: Context,
    grant_type: Annotated[str, Form()],
    username: Annotated[str | None, Form()] = None,
    password: Annotated[str | None, Form()] = None,
    refresh_token: Annotated[str | None, Form()] = None,
) -> TokenAnswer:
    """OAuth2 token endpoint: ``grant_type=password`` or ``grant_type=refresh_token``.

    A refresh token works once: using it revokes it and returns a new pair.
    """
    address = request.client.host if request.client else None

    def grant() -> TokenAnswer:
        if grant_type == "password" and username and password is not None:
            user = context.accounts.authenticate(username, password)
            actor = username
        elif grant_type == "refresh_token" and refresh_token:
            claims = context.tokens.decode(refresh_token, "refresh")
            owner = context.accounts.use_refresh(str(claims["jti"]), now_us=_now_us())
            found = context.accounts.user(owner) if owner else None
            user = found if found is not None and not found.disabled else None
            actor = str(claims["sub"])
        else:
            raise HTTPException(400, "unsupported grant: use password or refresh_token")
        if user is None:
            context.record(
                actor[:64],
                "anonymous",
                "login",
                "denied",
                address=address,
                detail={"grant": grant_type},
            )
            raise HTTPException(401, "wrong credentials", headers={"WWW-Authenticate": "Bearer"})
        context.record(
            user.username,
            user.role,
            "login",
            "success",
            address=address,
            detail={"grant": grant_type},
        )
        return issue_pair(context, user)

    return await run_in_threadpool(grant)


@router.post("/logout", status_code=204)
async def logout(
    context: Context,
    principal: Annotated[Principal, guard(SIGN_OUT)],
    refresh_token: Annotated[str | None, Form()] = None,
) -> None:
    """Revoke a refresh token of the caller."""
    if refresh_token:
        claims = context.tokens.decode(refresh_token, "refresh")
        if claims["sub"] != principal.name:
            raise HTTPException(403, "not your token")
        await run_in_threadpool(
            lambda: context.accounts.revoke_refresh(str(claims["jti"]), now_us=_now_us())
        )
