"""Dependencies of the routes: the service context and the policy guards."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, WebSocketException, status
from fastapi.params import Depends as DependsParam
from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute

from medtwin.apps.api.auth import (
    BREAK_GLASS_HEADER,
    SESSION_COOKIE,
    AuthenticationFailed,
    Policy,
    Principal,
    authenticate,
    may_see,
)
from medtwin.apps.api.context import ServiceContext
from medtwin.core.errors import NotFoundError
from medtwin.data.accounts import Role
from medtwin.data.consent import Decision, decide
from medtwin.data.consent import Request as ConsentRequest


def get_context(request: Request) -> ServiceContext:
    context: ServiceContext = request.app.state.context
    return context


Context = Annotated[ServiceContext, Depends(get_context)]


class Guard:
    """Enforces one route's :class:`Policy` and audits the decision."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def __call__(self, connection: HTTPConnection) -> Principal | None:
        policy = self.policy
        if policy.public:
            return None
        context: ServiceContext = connection.app.state.context
        websocket = connection.scope["type"] == "websocket"
        address = connection.client.host if connection.client else None
        route = connection.scope.get("route")
        where = {"route": getattr(route, "path", connection.url.path)}

        def audit(
            who: Principal | None,
            outcome: str,
            *,
            patient: str | None = None,
            priority: str = "normal",
            detail: dict[str, str] | None = None,
        ) -> None:
            context.record(
                who.name if who else "anonymous",
                who.role if who else "anonymous",
                policy.action,
                outcome,
                patient=patient,
                address=address,
                priority=priority,
                detail={**where, **(detail or {})},
            )

        try:
            principal = authenticate(
                connection,
                context.accounts,
                context.tokens,
                allow_cookie=websocket or connection.scope.get("method") in ("GET", "HEAD"),
            )
        except AuthenticationFailed as exc:
            audit(None, "denied", detail={"reason": str(exc.detail)})
            if websocket:
                raise WebSocketException(status.WS_1008_POLICY_VIOLATION, str(exc.detail)) from exc
            raise
        if principal.role not in policy.roles:
            audit(principal, "denied", detail={"reason": "role not allowed"})
            if websocket:
                raise WebSocketException(status.WS_1008_POLICY_VIOLATION, "role not allowed")
            raise HTTPException(403, f"role {principal.role.value} may not {policy.action} here")
        patient = (
            connection.path_params.get(policy.patient_param) if policy.patient_scoped else None
        )
        asked = patient
        if patient is not None and policy.patient_of is not None:
            try:
                patient = policy.patient_of(context, patient)
            except NotFoundError:
                audit(principal, "denied", detail={"reason": "not found"})
                raise
        if patient is None:
            audit(principal, "success")
            return principal
        principal, denial, priority = patient_decision(
            context,
            principal,
            patient,
            policy,
            connection.headers.get(BREAK_GLASS_HEADER) or "",
            where,
        )
        if denial is not None:
            audit(principal, "denied", patient=patient, priority="high", detail={"reason": denial})
            # The same answer as for a patient that does not exist: no enumeration.
            if policy.patient_of is not None:
                raise NotFoundError(f"no {policy.patient_param.replace('_', ' ')} {asked!r}")
            raise NotFoundError(f"no patient {patient!r}")
        audit(principal, "success", patient=patient, priority=priority)
        return principal


def patient_decision(
    context: ServiceContext,
    principal: Principal,
    patient: str,
    policy: Policy,
    break_glass: str,
    where: dict[str, str],
) -> tuple[Principal, str | None, str]:
    """May ``principal`` act on ``patient`` under ``policy``: (principal, denial, priority).

    Breaking the glass (a clinician giving a reason) opens patients outside the care
    team and turns the consent check into an emergency one; either way it is audited
    with high priority (``where`` gains what the audit entry should say). ``denial``
    is None when allowed, else why not (care team, or consent for reads).
    """
    priority = "normal"
    reason = break_glass.strip()
    if principal.role is Role.CLINICIAN and reason:
        principal = principal.for_break_glass(reason[:500])
        priority = "high"
        where["break_glass"] = principal.break_glass or ""
    if principal.break_glass is None and not may_see(principal, patient, context.accounts):
        return principal, "not visible", priority
    if policy.action == "read":
        decision = consent_decision(context, principal, patient)
        if not decision.permitted:
            return principal, f"consent: {decision.reason}"[:500], priority
        if decision.overridden:
            priority = "high"
            where["consent_overridden"] = decision.consent_id or ""
    return principal, None, priority


def consent_decision(context: ServiceContext, principal: Principal, patient: str) -> Decision:
    """What the patient's consents say about this caller reading their record now."""
    consents = context.consents.for_patient(patient)
    if not consents:
        return Decision(True, "no consent on file", None)
    request = ConsentRequest(
        patient=patient,
        actor=principal.name,
        role=principal.role.value,
        purpose="emergency" if principal.break_glass else "treatment",
        action="read",
        at_us=time.time_ns() // 1000,
    )
    return decide(consents, request)


def guard(policy: Policy) -> Any:
    """``Depends`` that enforces ``policy``; every route declares one."""
    return Depends(Guard(policy))


def _same_origin(connection: HTTPConnection) -> bool:
    host = connection.headers.get("host")
    if not host:
        return False
    origin = connection.headers.get("origin")
    if origin is not None:
        return origin in (f"http://{host}", f"https://{host}")
    referer = connection.headers.get("referer") or ""
    return referer.startswith((f"http://{host}/", f"https://{host}/"))


class SessionWriteGuard(Guard):
    """:class:`Guard` that also accepts the dashboard's session cookie on a same-origin POST.

    A bearer token or an API key, when sent, decides as everywhere else.
    """

    def __call__(self, connection: HTTPConnection) -> Principal | None:
        headers = connection.headers
        by_cookie = (
            SESSION_COOKIE in connection.cookies
            and not headers.get("authorization")
            and not headers.get("x-api-key")
        )
        if not by_cookie:
            return super().__call__(connection)
        if not _same_origin(connection):
            raise HTTPException(403, "cross-site request refused")
        # The guard takes cookies on reads only; this request passed the origin check.
        return super().__call__(HTTPConnection({**connection.scope, "method": "GET"}))


def session_guard(policy: Policy) -> Any:
    """``Depends`` that enforces ``policy`` and also takes the dashboard's session on a
    same-origin POST (:class:`SessionWriteGuard`): for the dashboard's own actions."""
    return Depends(SessionWriteGuard(policy))


def policy_of(dependency: object) -> Policy | None:
    """The policy behind a route dependency, if it is a guard (used by the route audit test)."""
    # A route's dependant lists its dependencies as resolved objects whose ``call`` is the guard.
    call = getattr(dependency, "call", None)
    if isinstance(dependency, DependsParam):
        call = dependency.dependency
    if isinstance(dependency, Guard):
        call = dependency
    return call.policy if isinstance(call, Guard) else None


def routes_of(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """Every route, with the routers that ``include_router`` added opened up."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from routes_of(included.routes)
        else:
            yield route
