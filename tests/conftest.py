"""Shared fixtures. Keep each group together; add new groups below the existing ones."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from medtwin.data.store import SqlStore, open_store

# ---------------------------------------------------------------------------
# Stores: PostgreSQL server check, one fresh PostgreSQL schema or SQLite file
# per store, and the `store` fixture parametrized over both backends.
# ---------------------------------------------------------------------------

PG_URL_ENV = "MEDTWIN_TEST_POSTGRES_URL"
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


@pytest.fixture(scope="session")
def pg_url() -> str:
    """URL of the test PostgreSQL server (``$MEDTWIN_TEST_POSTGRES_URL`` or the local one).

    Unreachable: the test fails in CI (``CI=true``) and is skipped elsewhere.
    """
    url = os.environ.get(PG_URL_ENV) or DEFAULT_PG_URL
    try:
        with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        message = f"PostgreSQL at {url.split('@')[-1]} is unreachable: {exc}"
        if _in_ci():
            pytest.fail(f"{message} (CI=true: PostgreSQL tests must run)", pytrace=False)
        pytest.skip(message)
    return url


def with_search_path(url: str, schema: str) -> str:
    """``url`` connecting with ``search_path`` set to ``schema`` only."""
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{schema}"


class StoreFactory:
    """Fresh, isolated databases for one test; everything is closed and dropped afterwards.

    SQLite stores are files under the test's ``tmp_path``; PostgreSQL stores each get a
    new schema (``t_<random>``) that the URL selects through ``search_path``.
    """

    def __init__(self, request: pytest.FixtureRequest, tmp_path: Path) -> None:
        self._request = request
        self._dir = tmp_path / "stores"
        self._opened: list[SqlStore] = []
        self._schemas: list[str] = []
        self._pg_url: str | None = None
        self._n = 0

    @property
    def pg_url(self) -> str:
        if self._pg_url is None:
            self._pg_url = str(self._request.getfixturevalue("pg_url"))
        return self._pg_url

    def url(self, backend: str) -> str:
        """URL of a new, empty database of ``backend``."""
        self._n += 1
        if backend == "sqlite":
            return f"sqlite:///{self._dir / f'store-{self._n}.sqlite'}"
        if backend == "postgres":
            schema = f"t_{uuid.uuid4().hex[:16]}"
            with psycopg.connect(self.pg_url, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            self._schemas.append(schema)
            return with_search_path(self.pg_url, schema)
        raise ValueError(f"unknown backend {backend!r}")

    def schema_of(self, url: str) -> str:
        """The PostgreSQL schema a URL made by :meth:`url` selects."""
        return url.rsplit("%3D", 1)[1]

    def open(self, url: str, *, migrate: bool = True) -> SqlStore:
        store = open_store(url, migrate=migrate)
        self._opened.append(store)
        return store

    def new(self, backend: str, *, migrate: bool = True) -> SqlStore:
        return self.open(self.url(backend), migrate=migrate)

    def backup_path(self) -> Path:
        self._n += 1
        self._dir.mkdir(parents=True, exist_ok=True)
        return self._dir / f"backup-{self._n}.sqlite"

    def cleanup(self) -> None:
        for store in self._opened:
            store.close()
        if self._schemas:
            with psycopg.connect(self.pg_url, autocommit=True) as conn:
                for schema in self._schemas:
                    conn.execute(
                        sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                    )


@pytest.fixture
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    factory = StoreFactory(request, tmp_path)
    try:
        yield factory
    finally:
        factory.cleanup()


BACKEND_PARAMS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(stores: StoreFactory, backend: str) -> SqlStore:
    """A migrated, empty store of each backend."""
    return stores.new(backend)
