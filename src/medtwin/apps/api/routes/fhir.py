"""FHIR R4 under /fhir: Bundles, PUT (conditional too) and DELETE in; read, history and
search out (application/fhir+json).

A thin layer over :class:`medtwin.devices.fhir.FhirService`: it reads the body
within the size limit, checks who may see which patient, audits, and answers
OperationOutcome for every FHIR error.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from medtwin.apps.api.auth import Policy, Principal, may_see, visible
from medtwin.apps.api.context import ServiceContext
from medtwin.apps.api.deps import Context, consent_decision, guard
from medtwin.data.accounts import Role
from medtwin.devices.fhir import (
    FhirError,
    FhirService,
    InvalidResourceError,
    Issue,
    ResourceGoneError,
    ResourceNotFoundError,
    StoredResource,
    TooLargeError,
    capability_statement,
    parse_json,
)

__all__ = ["FHIR_JSON", "router", "service_of"]

router = APIRouter(prefix="/fhir", tags=["fhir"])
FHIR_JSON = "application/fhir+json"
WRITE = Policy.allow(Role.DEVICE, Role.ADMIN, action="write")
READ = Policy.allow(Role.CLINICIAN, Role.ADMIN, action="read")
SEARCH = Policy.allow(Role.CLINICIAN, Role.ADMIN, action="search")
METADATA = Policy.open("metadata")
MAX_COUNT = 1000


class FhirResponse(JSONResponse):
    media_type = FHIR_JSON


def service_of(context: ServiceContext) -> FhirService:
    """The service's FhirService, made on first use."""
    found = context.extras.get("fhir")
    if not isinstance(found, FhirService):
        settings = context.settings
        found = FhirService(
            context.store,
            context.ingestor,
            context.privacy,
            max_entries=settings.fhir_max_entries,
            max_depth=settings.fhir_max_depth,
            strict_references=settings.fhir_strict_references,
            consents=context.consents,
        )
        context.extras["fhir"] = found
    return found


def _failure(exc: FhirError) -> FhirResponse:
    return FhirResponse(exc.outcome(), status_code=exc.status)


async def _body(request: Request, context: ServiceContext) -> str:
    limit = context.settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLargeError([Issue(f"body exceeds {limit} bytes", "body", code="too-costly")])
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLargeError([Issue(f"body exceeds {limit} bytes", "body", code="too-costly")])
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", errors="replace")


def _check_patient(context: ServiceContext, principal: Principal, patient: str | None) -> None:
    """Refuse (as not found) a resource of a patient the caller may not see; audit the read."""
    if patient is None:
        return
    denial = None
    if not may_see(principal, patient, context.accounts):
        denial = "not visible"
    elif not consent_decision(context, principal, patient).permitted:
        denial = "consent"
    context.record(
        principal.name,
        principal.role,
        "read",
        "denied" if denial else "success",
        patient=patient,
        priority="high" if denial else "normal",
        detail={"route": "/fhir", **({"reason": denial} if denial else {})},
    )
    if denial is not None:
        raise ResourceNotFoundError([Issue("no such resource", code="not-found")])


@router.get("/metadata", dependencies=[guard(METADATA)])
async def metadata(request: Request) -> FhirResponse:
    """The CapabilityStatement of what this server implements."""
    return FhirResponse(capability_statement(str(request.url_for("metadata")).rsplit("/", 1)[0]))


@router.post("")
async def post_bundle(
    request: Request, context: Context, principal: Annotated[Principal, guard(WRITE)]
) -> FhirResponse:
    """Process a transaction or batch Bundle; answered once it is committed."""
    service = service_of(context)
    try:
        text = await _body(request, context)
        document = parse_json(text, max_depth=service.max_depth)
        result = await run_in_threadpool(
            lambda: service.process_bundle(
                document, raw=text, source=principal.name, care_team=principal.care_team
            )
        )
    except FhirError as exc:
        return _failure(exc)
    return FhirResponse(result.response)


@router.put("/{resource_type}/{resource_id}")
async def put_resource(
    resource_type: str,
    resource_id: str,
    request: Request,
    context: Context,
    principal: Annotated[Principal, guard(WRITE)],
) -> FhirResponse:
    """Create or update a resource with the client's id."""
    service = service_of(context)
    try:
        text = await _body(request, context)
        document = parse_json(text, max_depth=service.max_depth)
        stored, created = await run_in_threadpool(
            lambda: service.put(
                resource_type,
                resource_id,
                document,
                raw=text,
                source=principal.name,
                care_team=principal.care_team,
            )
        )
    except FhirError as exc:
        return _failure(exc)
    return _written(resource_type, stored, created)


def _written(resource_type: str, stored: StoredResource, created: bool) -> FhirResponse:
    """The answer to a PUT: the resource, 201 or 200, its version and where it is."""
    return FhirResponse(
        stored.resource,
        status_code=201 if created else 200,
        headers={
            "ETag": f'W/"{stored.version}"',
            "Location": f"/fhir/{resource_type}/{stored.id}/_history/{stored.version}",
        },
    )


@router.put("/{resource_type}")
async def conditional_put(
    resource_type: str,
    request: Request,
    context: Context,
    principal: Annotated[Principal, guard(WRITE)],
) -> FhirResponse:
    """Conditional update ``PUT Type?search``: updates the one match (200), creates when
    none matches (201), 412 when several match."""
    service = service_of(context)
    query = request.url.query
    try:
        if not query:
            raise InvalidResourceError(
                [Issue("a conditional update needs a search", "query", code="required")]
            )
        text = await _body(request, context)
        document = parse_json(text, max_depth=service.max_depth)
        stored, created = await run_in_threadpool(
            lambda: service.conditional_put(
                resource_type,
                query,
                document,
                raw=text,
                source=principal.name,
                care_team=principal.care_team,
            )
        )
    except FhirError as exc:
        return _failure(exc)
    return _written(resource_type, stored, created)


@router.delete("/{resource_type}/{resource_id}")
async def delete_resource(
    resource_type: str,
    resource_id: str,
    context: Context,
    principal: Annotated[Principal, guard(WRITE)],
) -> Response:
    """Delete a resource: 204, also when there is nothing to delete (a Patient: 405)."""
    service = service_of(context)
    try:
        deleted = await run_in_threadpool(
            lambda: service.delete(
                resource_type,
                resource_id,
                source=principal.name,
                care_team=principal.care_team,
            )
        )
    except FhirError as exc:
        return _failure(exc)
    if deleted is None:
        return Response(status_code=204)
    await run_in_threadpool(
        lambda: context.record(
            principal.name,
            principal.role,
            "delete",
            "success",
            patient=deleted.patient_id,
            detail={"route": "/fhir", "resource": f"{resource_type}/{resource_id}"[:160]},
        )
    )
    return Response(status_code=204, headers={"ETag": f'W/"{deleted.version}"'})


@router.get("/{resource_type}/{resource_id}")
async def read_resource(
    resource_type: str,
    resource_id: str,
    context: Context,
    principal: Annotated[Principal, guard(READ)],
) -> FhirResponse:
    """The current version of a resource (410 Gone once deleted)."""
    service = service_of(context)
    try:
        try:
            stored = await run_in_threadpool(service.read, resource_type, resource_id)
        except ResourceGoneError as gone:
            # Only those who may see the patient learn that the resource was deleted.
            await run_in_threadpool(_check_patient, context, principal, gone.patient)
            raise
        await run_in_threadpool(_check_patient, context, principal, stored.patient_id)
    except FhirError as exc:
        return _failure(exc)
    return FhirResponse(stored.resource, headers={"ETag": f'W/"{stored.version}"'})


@router.get("/{resource_type}/{resource_id}/_history")
async def resource_history(
    resource_type: str,
    resource_id: str,
    request: Request,
    context: Context,
    principal: Annotated[Principal, guard(READ)],
) -> FhirResponse:
    """Every version of a resource, newest first, as a history Bundle."""
    service = service_of(context)
    try:
        versions = await run_in_threadpool(service.history, resource_type, resource_id)
        await run_in_threadpool(_check_patient, context, principal, versions[0].patient_id)
    except FhirError as exc:
        return _failure(exc)
    base = _base(request)
    return FhirResponse(
        {
            "resourceType": "Bundle",
            "type": "history",
            "total": len(versions),
            "entry": [_history_entry(base, v) for v in versions],
        }
    )


@router.get("/{resource_type}")
async def search(
    resource_type: str,
    request: Request,
    context: Context,
    principal: Annotated[Principal, guard(SEARCH)],
) -> FhirResponse:
    """Search Patient (identifier, name, birthdate) or Observation (subject, patient, code,
    date with eq/ge/le/gt/lt, category); ``_count``, ``_offset``, ``_summary=count``."""
    service = service_of(context)
    params: list[tuple[str, str]] = []
    count, offset, summary = 50, 0, None
    try:
        for name, value in request.query_params.multi_items():
            if name == "_count":
                count = _whole(value, name, 0, MAX_COUNT)
            elif name == "_offset":
                offset = _whole(value, name, 0, 10**9)
            elif name == "_summary":
                summary = value
            elif name != "_format":
                params.append((name, value))

        def allow(patients: set[str]) -> set[str]:
            return set(visible(principal, sorted(patients), context.accounts))

        total, page = await run_in_threadpool(
            lambda: service.search(
                resource_type,
                params,
                allow=allow,
                count=0 if summary == "count" else count,
                offset=offset,
            )
        )
    except FhirError as exc:
        return _failure(exc)
    context.record(
        principal.name,
        principal.role,
        "search",
        "success",
        detail={"route": "/fhir", "type": resource_type[:64], "results": str(len(page))},
    )
    return FhirResponse(
        _searchset(request, resource_type, params, total, page, count, offset, summary)
    )


def _history_entry(base: str, version: StoredResource) -> dict[str, Any]:
    """One entry of a history Bundle; a deletion has no resource."""
    url = f"{version.resource_type}/{version.id}"
    if version.deleted:
        return {
            "fullUrl": f"{base}/{url}",
            "request": {"method": "DELETE", "url": url},
            "response": {
                "status": "204 No Content",
                "etag": f'W/"{version.version}"',
                "lastModified": version.resource["meta"]["lastUpdated"],
            },
        }
    return {
        "fullUrl": f"{base}/{url}",
        "resource": version.resource,
        "request": {"method": "PUT", "url": url},
        "response": {"status": "201 Created" if version.version == 1 else "200 OK"},
    }


def _whole(value: str, name: str, low: int, high: int) -> int:
    if not value.isdigit() or not low <= int(value) <= high:
        raise InvalidResourceError(
            [Issue(f"{name} must be a whole number {low}-{high}", f"query.{name}")]
        )
    return int(value)


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/fhir"


def _searchset(
    request: Request,
    resource_type: str,
    params: list[tuple[str, str]],
    total: int,
    page: list[StoredResource],
    count: int,
    offset: int,
    summary: str | None,
) -> dict[str, Any]:
    base = _base(request)

    def link(at: int) -> str:
        return f"{base}/{resource_type}?" + urlencode(
            [*params, ("_count", str(count)), ("_offset", str(at))]
        )

    links = [{"relation": "self", "url": link(offset)}]
    if summary != "count" and offset + count < total:
        links.append({"relation": "next", "url": link(offset + count)})
    if summary != "count" and offset > 0:
        links.append({"relation": "previous", "url": link(max(0, offset - count))})
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
    }
    if summary != "count":
        bundle["entry"] = [
            {
                "fullUrl": f"{base}/{r.resource_type}/{r.id}",
                "resource": r.resource,
                "search": {"mode": "match"},
            }
            for r in page
        ]
    return bundle
