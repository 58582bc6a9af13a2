"""Dependencies of the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from medtwin.apps.api.context import ServiceContext


def get_context(request: Request) -> ServiceContext:
    context: ServiceContext = request.app.state.context
    return context


Context = Annotated[ServiceContext, Depends(get_context)]
