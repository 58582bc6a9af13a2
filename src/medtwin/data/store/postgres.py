"""PostgreSQL store: production storage, bulk loads through COPY."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import cast

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from medtwin.core.errors import StoreError
from medtwin.core.records import Observation
from medtwin.data.store import schema
from medtwin.data.store.base import SqlStore, positions_of
from medtwin.data.store.schema import OBSERVATION_COLUMNS

_COLUMNS = ", ".join(OBSERVATION_COLUMNS)
# Staged rows carry no row_id, so only rows that land draw from its sequence.
_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS observations_stage ON COMMIT DELETE ROWS AS "
    f"SELECT 0::integer AS position, {_COLUMNS} FROM observations WITH NO DATA"
)
_MOVE = (
    f"INSERT INTO observations ({_COLUMNS}) "
    f"SELECT {_COLUMNS} FROM observations_stage ORDER BY position "
    "ON CONFLICT (source, source_id, version) DO NOTHING "
    "RETURNING source, source_id, version, row_id"
)


def normalize_url(url: str) -> str:
    """SQLAlchemy URL for psycopg 3 from a ``postgresql://`` or ``postgres://`` URL."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    raise StoreError(f"not a PostgreSQL URL: {url.split('@')[-1]!r}")


class PostgresStore(SqlStore):
    """Store in a PostgreSQL database given by URL (``postgresql://user@host:port/db``)."""

    driver_errors = (psycopg.Error,)

    def __init__(self, url: str) -> None:
        engine = sa.create_engine(normalize_url(url), pool_pre_ping=True, pool_size=5)
        super().__init__(url, engine)

    def _params(self, n: int) -> str:
        return ", ".join(["%s"] * n)

    def _insert_observations(
        self, conn: Connection, rows: Sequence[tuple[int, Observation]], received_us: int
    ) -> dict[int, int]:
        if not rows:
            return {}
        raw = _raw(conn)
        with raw.cursor() as cursor:
            cursor.execute(_STAGE)
            with cursor.copy(f"COPY observations_stage (position, {_COLUMNS}) FROM STDIN") as copy:
                for position, (_, obs) in enumerate(rows):
                    copy.write_row((position, *obs, received_us))
            cursor.execute(_MOVE)
            returned = cast(list[tuple[str, str, int, int]], cursor.fetchall())
            inserted = {(s, i, v): row_id for s, i, v, row_id in returned}
        return positions_of(rows, inserted)

    @contextmanager
    def _snapshot(self) -> Iterator[Connection]:
        with self._read() as conn:
            conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    def _after_restore(self, conn: Connection) -> None:
        # Every serial row id continues after the restored rows.
        serial = [t.name for t in schema.metadata.sorted_tables if "row_id" in t.c]
        for table in serial:
            conn.exec_driver_sql(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'row_id'), "
                f"coalesce((SELECT max(row_id) FROM {table}), 0) + 1, false)"
            )


def _raw(conn: Connection) -> psycopg.Connection[tuple[object, ...]]:
    driver = conn.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    return driver
