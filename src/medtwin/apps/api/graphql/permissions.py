"""Who may read what through GraphQL: the REST policies, applied field by field.

The endpoint itself admits every authenticated caller (see :mod:`.endpoint`); each
field then enforces the :class:`~medtwin.apps.api.auth.Policy` of the REST route
that serves the same data, with the same answers: a role that may not call it is
FORBIDDEN, a patient the caller may not see is NOT_FOUND exactly like a patient that
does not exist, and every decision is audited like the REST guard audits it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from starlette.concurrency import run_in_threadpool

from medtwin.apps.api.auth import Policy, Principal
from medtwin.apps.api.deps import patient_decision
from medtwin.apps.api.graphql.context import RequestContext
from medtwin.core.errors import NotFoundError
from medtwin.data.accounts import Role

PATH = "/graphql"
# The endpoint's own policy: every role reaches it; the fields decide (below).
ENDPOINT = Policy.allow(*Role, action="graphql")


class UnauthenticatedError(Exception):
    """No valid credentials (a WebSocket that never authenticated)."""


class ForbiddenError(Exception):
    """The caller's role may not use this field."""


def audit(
    context: RequestContext,
    principal: Principal | None,
    action: str,
    outcome: str,
    *,
    patient: str | None = None,
    priority: str = "normal",
    detail: Mapping[str, str] | None = None,
) -> None:
    """One audit entry, shaped like the REST guard's (blocking: call from a thread)."""
    context.service.record(
        principal.name if principal else "anonymous",
        principal.role if principal else "anonymous",
        action,
        outcome,
        patient=patient,
        address=context.address,
        priority=priority,
        detail={"route": PATH, **(detail or {})},
    )


def _check(
    context: RequestContext, policy: Policy, patient: str | None, field_name: str
) -> Principal:
    """The REST guard's decision for ``policy`` (and ``patient``), audited; blocking."""
    principal = context.principal
    where = {"field": field_name}
    if principal is None:
        raise UnauthenticatedError("authentication required")
    if principal.role not in policy.roles:
        audit(context, principal, policy.action, "denied", detail={**where, "reason": "role"})
        raise ForbiddenError(f"role {principal.role.value} may not {policy.action} here")
    if patient is None:
        audit(context, principal, policy.action, "success", detail=where)
        return principal
    # The REST guard's decision for patient-scoped routes: break-glass, care team,
    # consent for reads; a refusal reads exactly like a patient that does not exist.
    principal, denial, priority = patient_decision(
        context.service, principal, patient, policy, context.break_glass, where
    )
    if denial is not None:
        audit(
            context,
            principal,
            policy.action,
            "denied",
            patient=patient,
            priority="high",
            detail={**where, "reason": denial},
        )
        raise NotFoundError(f"no patient {patient!r}")
    audit(context, principal, policy.action, "success", patient=patient, priority=priority)
    return principal


async def authorize(
    context: RequestContext, policy: Policy, field_name: str, patient: str | None = None
) -> Principal:
    """The caller, if ``policy`` (scoped to ``patient`` when given) lets them through.

    Raises UnauthenticatedError, ForbiddenError or NotFoundError. Fields asking the same
    question in one operation, concurrently or not, share one decision and audit entry.
    """
    decisions = context.operation.decisions
    key = (policy, patient)
    decision = decisions.get(key)
    if decision is None:
        decision = asyncio.ensure_future(
            run_in_threadpool(_check, context, policy, patient, field_name)
        )
        decisions[key] = decision
    return await decision
