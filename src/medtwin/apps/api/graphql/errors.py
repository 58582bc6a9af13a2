"""GraphQL errors with a machine-readable ``extensions.code``, never a stack trace.

Resolvers raise medtwin's own errors (NotFoundError, InputError, ...) and the
permission errors of :mod:`.permissions`; :class:`ErrorCodes` turns each into a
GraphQL error with a code, and masks anything unexpected as INTERNAL_SERVER_ERROR.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from graphql import ExecutionResult as GraphQLExecutionResult
from graphql import GraphQLError, GraphQLSyntaxError
from strawberry.extensions import SchemaExtension
from strawberry.types.execution import ExecutionResult, StreamExecutionResult

from medtwin.apps.api.graphql.permissions import ForbiddenError, UnauthenticatedError
from medtwin.core.errors import ConflictError, InputError, MedtwinError, NotFoundError, StoreError

# Codes of errors the service raises on purpose, most specific class first.
_CODES: tuple[tuple[type[Exception], str], ...] = (
    (UnauthenticatedError, "UNAUTHENTICATED"),
    (ForbiddenError, "FORBIDDEN"),
    (NotFoundError, "NOT_FOUND"),
    (InputError, "BAD_USER_INPUT"),
    (ConflictError, "CONFLICT"),
)


@runtime_checkable
class _WithErrors(Protocol):
    errors: list[GraphQLError] | None


def expected(error: GraphQLError) -> bool:
    """Whether ``error`` is the client's (a bad document, a refusal, bad input), not ours."""
    original = error.original_error
    if original is None or isinstance(original, GraphQLError):
        return True
    if isinstance(original, StoreError):
        return False
    return isinstance(original, MedtwinError | UnauthenticatedError | ForbiddenError)


def coded(error: GraphQLError) -> GraphQLError:
    """``error`` with ``extensions.code`` set; unexpected failures lose their message."""
    if error.extensions and "code" in error.extensions:
        return error
    original = error.original_error
    message = error.message
    if original is None or isinstance(original, GraphQLError):
        # Parse and validation errors (limits included): the client's document is at fault.
        failed = original if isinstance(original, GraphQLError) else error
        code = (
            "GRAPHQL_PARSE_FAILED"
            if isinstance(failed, GraphQLSyntaxError)
            else "GRAPHQL_VALIDATION_FAILED"
        )
    else:
        code = next((c for kind, c in _CODES if isinstance(original, kind)), "")
        if not code and isinstance(original, StoreError):
            code, message = "STORE_UNAVAILABLE", "the store could not complete the request"
        elif not code and isinstance(original, MedtwinError):
            code = "ERROR"
        elif not code:
            # A bug, not the client's fault: say nothing about it (it is logged by strawberry).
            code, message = "INTERNAL_SERVER_ERROR", "internal error"
    return GraphQLError(
        message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=original,
        extensions={**(error.extensions or {}), "code": code},
    )


def _recode(result: object) -> None:
    if isinstance(result, _WithErrors) and result.errors:
        result.errors = [coded(e) for e in result.errors]


class ErrorCodes(SchemaExtension):
    """Codes every error of every operation."""

    def on_operation(self) -> Iterator[None]:
        self._streamed = False
        yield
        if self._streamed:
            return
        result = self.execution_context.result
        if isinstance(result, GraphQLExecutionResult | ExecutionResult):
            _recode(result)
        elif (initial := getattr(result, "initial_result", None)) is not None:
            _recode(initial)

    def on_stream_result(self, result: StreamExecutionResult) -> Iterator[None]:
        """Subscriptions: code each result before it is sent."""
        self._streamed = True
        _recode(result)
        yield None
