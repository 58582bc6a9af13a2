"""Dependencies of the routes: the service context and the policy guard."""

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
        try:
            principal = authenticate(
                connection,
                context.accounts,
                context.tokens,
                allow_cookie=websocket or connection.scope.get("method") in ("GET", "HEAD"),
            )
        except AuthenticationFailed as exc:
            context.record(
                "anonymous",
                "anonymous",
                policy.action,
                "denied",
                address=address,
                detail={**where, "reason": str(exc.detail)},
            )
            if websocket:
                raise WebSocketException(status.WS_1008_POLICY_VIOLATION, str(exc.detail)) from exc
            raise
        if principal.role not in policy.roles:
            context.record(
                principal.name,
                principal.role,
                policy.action,
                "denied",
                address=address,
                detail={**where, "reason": "role not allowed"},
            )
            if websocket:
                raise WebSocketException(status.WS_1008_POLICY_VIOLATION, "role not allowed")
            raise HTTPException(403, f"role {principal.role.value} may not {policy.action} here")
        patient = connection.path_params.get("patient") if policy.patient_scoped else None
        priority = "normal"
        reason = (connection.headers.get(BREAK_GLASS_HEADER) or "").strip()
        if patient is not None and principal.role is Role.CLINICIAN and reason:
            # Breaking the glass opens patients outside the care team and turns the consent
            # check into an emergency one; either way it is audited with high priority.
            principal = principal.for_break_glass(reason[:500])
            priority = "high"
            where["break_glass"] = principal.break_glass or ""
        if (
            patient is not None
            and principal.break_glass is None
            and not may_see(principal, patient, context.accounts)
        ):
            context.record(
                principal.name,
                principal.role,
                policy.action,
                "denied",
                patient=patient,
                address=address,
                priority="high",
                detail={**where, "reason": "not visible"},
            )
            # The same answer as for a patient that does not exist: no enumeration.
            raise NotFoundError(f"no patient {patient!r}")
        if patient is not None and policy.action == "read":
            decision = consent_decision(context, principal, patient)
            if not decision.permitted:
                context.record(
                    principal.name,
                    principal.role,
                    policy.action,
                    "denied",
                    patient=patient,
                    address=address,
                    priority="high",
                    detail={**where, "reason": f"consent: {decision.reason}"[:500]},
                )
                raise NotFoundError(f"no patient {patient!r}")
            if decision.overridden:
                priority = "high"
                where["consent_overridden"] = decision.consent_id or ""
        context.record(
            principal.name,
            principal.role,
            policy.action,
            "success",
            patient=patient,
            address=address,
            priority=priority,
            detail=where,
        )
        return principal


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
