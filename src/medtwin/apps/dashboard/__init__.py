"""Dashboard: server-rendered ward and patient pages (placeholder until built)."""

from __future__ import annotations

from fastapi import FastAPI


def install(app: FastAPI) -> None:
    """Mount the dashboard's pages and static files on ``app``."""
