"""The store: patients, observations, derived values and quarantine.

``open_store(url)`` picks the backend from the URL: ``sqlite:///path`` (the
embedded default) or ``postgresql://user@host:port/db``.
"""

from __future__ import annotations

from pathlib import Path

from medtwin.core.errors import ConfigurationError
from medtwin.core.settings import Settings
from medtwin.data.store.base import (
    AppendStatus,
    DerivedValue,
    HistoryPage,
    Origin,
    QuarantineEntry,
    SqlStore,
    Store,
    StoredObservation,
)

__all__ = [
    "AppendStatus",
    "DerivedValue",
    "HistoryPage",
    "Origin",
    "QuarantineEntry",
    "SqlStore",
    "Store",
    "StoredObservation",
    "open_store",
    "store_for",
]


def store_for(settings: Settings, *, migrate: bool = True) -> SqlStore:
    """The store the settings name (``MEDTWIN_STORE_URL``), with their durability level."""
    return open_store(
        settings.store_url, migrate=migrate, sqlite_synchronous=settings.sqlite_synchronous
    )


def open_store(url: str, *, migrate: bool = True, sqlite_synchronous: str = "FULL") -> SqlStore:
    """Open (and by default migrate) the store at ``url``."""
    store: SqlStore
    if url.startswith("sqlite:///"):
        from medtwin.data.store.sqlite import SQLiteStore

        store = SQLiteStore(Path(url.removeprefix("sqlite:///")), synchronous=sqlite_synchronous)
    elif url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        from medtwin.data.store.postgres import PostgresStore

        store = PostgresStore(url)
    else:
        raise ConfigurationError(
            f"unsupported store URL scheme {url.split(':', 1)[0]!r} "
            "(use sqlite:///path or postgresql://user@host:port/db)"
        )
    if migrate:
        store.migrate()
    return store
