"""The /graphql endpoint: GraphQL over HTTP (GET, POST) and graphql-transport-ws.

Authentication is the REST guard's (Bearer JWT, API key; the session cookie for GET
and the WebSocket handshake), under a policy every role passes: the fields apply
the REST routes' policies (:mod:`.permissions`). Without valid credentials an HTTP
request is answered 401 with a GraphQL error body (code UNAUTHENTICATED). A
WebSocket without credentials in its handshake authenticates with the
``connection_init`` payload ``{"Authorization": "Bearer ..."}`` (or ``X-API-Key``);
invalid ones close it with 4403.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import overload

from cross_web import HTTPException as StrawberryHTTPException
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket
from strawberry.exceptions import ConnectionRejectionError
from strawberry.fastapi import GraphQLRouter
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.types.unset import UNSET, UnsetType

from medtwin.apps.api.auth import (
    BREAK_GLASS_HEADER,
    SESSION_COOKIE,
    AuthenticationFailed,
    Principal,
    authenticate,
)
from medtwin.apps.api.context import ServiceContext
from medtwin.apps.api.deps import Guard
from medtwin.apps.api.graphql.context import RequestContext
from medtwin.apps.api.graphql.permissions import ENDPOINT, PATH, audit
from medtwin.apps.api.graphql.schema import schema
from medtwin.core.settings import Settings

# Operations (subscriptions included) one WebSocket may run at once.
MAX_OPERATIONS = 20
_HTTP_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 415: "UNSUPPORTED_MEDIA_TYPE"}
# connection_init keys taken as request headers (any case).
_CREDENTIAL_KEYS = ("authorization", "x-api-key")


class Refusal(HTTPException):
    """An HTTP refusal of the endpoint, answered as a GraphQL error body."""

    def __init__(
        self, status: int, code: str, detail: str, headers: Mapping[str, str] | None
    ) -> None:
        super().__init__(status, detail, headers=dict(headers) if headers else None)
        self.code = code


async def refusal_response(_: Request, exc: Exception) -> Response:
    """``{"errors": [{"message", "extensions": {"code"}}]}`` with the refusal's status."""
    if not isinstance(exc, Refusal):  # registered for Refusal only
        raise exc
    return JSONResponse(
        {"errors": [{"message": exc.detail, "extensions": {"code": exc.code}}]},
        status_code=exc.status_code,
        headers=exc.headers,
    )


def _offers_credentials(connection: HTTPConnection) -> bool:
    headers = connection.headers
    return bool(
        headers.get("authorization")
        or headers.get("x-api-key")
        or connection.query_params.get("access_token")
        or connection.cookies.get(SESSION_COOKIE)
    )


class EndpointGuard(Guard):
    """deps.Guard, with refusals as GraphQL errors and WebSocket sign-in deferred."""

    def __call__(self, connection: HTTPConnection) -> Principal | None:
        if connection.scope["type"] == "websocket" and not _offers_credentials(connection):
            return None  # the connection_init payload authenticates (Endpoint.on_ws_connect)
        try:
            return super().__call__(connection)
        except HTTPException as exc:
            code = {401: "UNAUTHENTICATED", 403: "FORBIDDEN"}.get(exc.status_code, "ERROR")
            raise Refusal(exc.status_code, code, str(exc.detail), exc.headers) from exc


def context_getter(guard: EndpointGuard) -> Callable[..., Awaitable[RequestContext]]:
    """The FastAPI dependency making each request's (or WebSocket's) context."""

    # Depends as a default, not in Annotated: the string annotation could not name ``guard``.
    async def get_context(
        connection: HTTPConnection, principal: Principal | None = Depends(guard)
    ) -> RequestContext:
        service: ServiceContext = connection.app.state.context
        return RequestContext(
            service=service,
            principal=principal,
            address=connection.client.host if connection.client else None,
            break_glass=connection.headers.get(BREAK_GLASS_HEADER, ""),
        )

    return get_context


def _authenticate_params(context: RequestContext, params: Mapping[str, object]) -> Principal:
    """The caller named by a connection_init payload, checked as request headers would be."""
    headers: list[tuple[bytes, bytes]] = []
    for key, value in params.items():
        if key.lower() in _CREDENTIAL_KEYS and isinstance(value, str):
            try:
                headers.append((key.lower().encode("latin-1"), value.encode("latin-1")))
            except UnicodeEncodeError as exc:
                raise AuthenticationFailed("invalid credentials") from exc
    scope = {"type": "http", "headers": headers, "query_string": b"", "path": PATH}
    service = context.service
    return authenticate(HTTPConnection(scope), service.accounts, service.tokens, allow_cookie=False)


class Endpoint(GraphQLRouter[RequestContext, None]):
    """The GraphQL router, signing WebSocket callers in from connection_init."""

    @overload
    async def run(
        self, request: Request, context: RequestContext = UNSET, root_value: None = UNSET
    ) -> Response: ...

    @overload
    async def run(
        self, request: WebSocket, context: RequestContext = UNSET, root_value: None = UNSET
    ) -> WebSocket: ...

    async def run(
        self,
        request: Request | WebSocket,
        context: RequestContext = UNSET,
        root_value: None = UNSET,
    ) -> Response | WebSocket:
        """Strawberry's, with its plain-text refusals (a body that is not JSON, a method
        other than GET and POST) answered as GraphQL errors."""
        try:
            return await super().run(request, context=context, root_value=root_value)
        except StrawberryHTTPException as exc:
            code = _HTTP_CODES.get(exc.status_code, "BAD_REQUEST")
            return JSONResponse(
                {"errors": [{"message": exc.reason, "extensions": {"code": code}}]},
                status_code=exc.status_code,
            )

    async def on_ws_connect(self, context: RequestContext) -> UnsetType | dict[str, object] | None:
        if context.principal is not None:  # signed in by the handshake
            return UnsetType()
        params = context.connection_params
        params = params if isinstance(params, dict) else {}
        try:
            principal = await run_in_threadpool(_authenticate_params, context, params)
        except AuthenticationFailed as exc:
            reason = {"reason": str(exc.detail)}
            await run_in_threadpool(audit, context, None, ENDPOINT.action, "denied", detail=reason)
            raise ConnectionRejectionError({"code": "UNAUTHENTICATED", **reason}) from exc
        context.principal = principal
        glass = next((v for k, v in params.items() if k.lower() == BREAK_GLASS_HEADER), "")
        context.break_glass = glass if isinstance(glass, str) else ""
        await run_in_threadpool(audit, context, principal, ENDPOINT.action, "success")
        return UnsetType()


def install(app: FastAPI, settings: Settings) -> Endpoint:
    """Serve GraphQL at /graphql (GraphiQL only in development); returns the router."""
    guard = EndpointGuard(ENDPOINT)
    router = Endpoint(
        schema,
        # The path on the router itself, not as an include prefix: route listings that
        # open included routers (deps.routes_of) then show /graphql too.
        path=PATH,
        graphql_ide="graphiql" if settings.environment == "development" else None,
        context_getter=context_getter(guard),
        # The guard at route level too, where the route audit test looks for policies;
        # FastAPI runs it once per request (it caches dependencies).
        dependencies=[Depends(guard)],
        subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
        max_subscriptions_per_connection=MAX_OPERATIONS,
    )
    app.include_router(router, tags=["graphql"])
    app.add_exception_handler(Refusal, refusal_response)
    return router
