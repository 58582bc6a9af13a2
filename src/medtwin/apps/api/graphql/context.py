"""What resolvers see: the service, the caller, and state kept for one operation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import strawberry
from strawberry.extensions import SchemaExtension
from strawberry.fastapi import BaseContext

from medtwin.apps.api.auth import Policy, Principal
from medtwin.apps.api.context import ServiceContext

if TYPE_CHECKING:
    from strawberry.dataloader import DataLoader


@dataclass
class OperationState:
    """Decisions and loaders of one operation, so that a patient read through several
    fields is checked (and audited) once and provenance loads are batched per level."""

    decisions: dict[tuple[Policy, str | None], asyncio.Future[Principal]] = field(
        default_factory=dict
    )
    loaders: dict[str, DataLoader[Any, Any]] = field(default_factory=dict)

    def loader(self, name: str, make: Callable[[], DataLoader[Any, Any]]) -> DataLoader[Any, Any]:
        """The operation's loader ``name``, made on first use."""
        if name not in self.loaders:
            self.loaders[name] = make()
        return self.loaders[name]


@dataclass(eq=False)
class RequestContext(BaseContext):
    """One HTTP request's, or one WebSocket's, context."""

    service: ServiceContext
    principal: Principal | None
    address: str | None = None
    break_glass: str = ""
    operation: OperationState = field(default_factory=OperationState)

    def __post_init__(self) -> None:
        super().__init__()


Info = strawberry.Info[RequestContext, None]


class FreshOperation(SchemaExtension):
    """Starts every operation with fresh state: a WebSocket keeps one context for all its
    operations, and decisions or cached loads must not outlive the operation."""

    def on_operation(self) -> Iterator[None]:
        context = self.execution_context.context
        if isinstance(context, RequestContext):
            context.operation = OperationState()
        yield
