"""SQLite store: the embedded default (one file, WAL journal, no server)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from medtwin.core.records import Observation
from medtwin.data.store.base import SqlStore, positions_of
from medtwin.data.store.schema import OBSERVATION_COLUMNS

_INSERT_OBSERVATIONS = (
    f"INSERT INTO observations ({', '.join(OBSERVATION_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(OBSERVATION_COLUMNS))}) "
    "ON CONFLICT (source, source_id, version) DO NOTHING"
)


# Checkpoint the WAL every ~40 MB instead of every ~4 MB: ingestion rewrites the same
# index pages batch after batch, and a rarer checkpoint copies each page once.
# journal_size_limit truncates the WAL file back after a checkpoint.
# A 64 MiB page cache (allocated as used) keeps the hot index pages of a ward's
# patients in memory across batches.
TUNING = (
    "PRAGMA wal_autocheckpoint=10000",
    "PRAGMA journal_size_limit=67108864",
    "PRAGMA cache_size=-65536",
)


class SQLiteStore(SqlStore):
    """Store in one SQLite file.

    ``synchronous`` is the SQLite durability level: FULL (default) makes every
    acknowledged batch survive power loss; NORMAL survives a process crash only.
    """

    driver_errors = (sqlite3.Error,)
    hold_writer = True

    def __init__(self, path: Path | str, *, synchronous: str = "FULL") -> None:
        if synchronous.upper() not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError(f"unknown SQLite synchronous level {synchronous!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            f"sqlite:///{self.path}",
            connect_args={"check_same_thread": False, "timeout": 30},
        )
        level = synchronous.upper()

        @sa.event.listens_for(engine, "connect")
        def _configure(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
            # Let SQLAlchemy, not the driver, decide when transactions begin.
            dbapi_conn.isolation_level = None
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute(f"PRAGMA synchronous={level}")
            for pragma in TUNING:
                dbapi_conn.execute(pragma)
            dbapi_conn.execute("PRAGMA foreign_keys=ON")

        @sa.event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            # Writers take the lock up front so a read-then-write never fails on a stale snapshot.
            # On the driver's connection: SQLAlchemy's execution path costs more than BEGIN.
            _raw(conn).execute(
                "BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN"
            )

        super().__init__(f"sqlite:///{self.path}", engine)

    def _params(self, n: int) -> str:
        return ", ".join("?" * n)

    def _insert_observations(
        self, conn: Connection, rows: Sequence[tuple[int, Observation]], received_us: int
    ) -> dict[int, int]:
        if not rows:
            return {}
        cursor = _raw(conn).cursor()
        before = cursor.execute("SELECT coalesce(max(row_id), 0) FROM observations").fetchone()[0]
        changes = _raw(conn).total_changes
        cursor.executemany(_INSERT_OBSERVATIONS, [(*obs, received_us) for _, obs in rows])
        if _raw(conn).total_changes - changes == len(rows):
            # Each row of an INTEGER PRIMARY KEY table gets max + 1, and this transaction
            # holds the write lock: the rows have the next ids, in order.
            return {position: before + 1 + position for position in range(len(rows))}
        inserted = {
            (source, source_id, version): row_id
            for row_id, source, source_id, version in cursor.execute(
                "SELECT row_id, source, source_id, version FROM observations WHERE row_id > ?",
                (before,),
            )
        }
        return positions_of(rows, inserted)

    def backup(self, path: Path) -> None:
        """Online copy with SQLite's backup API: consistent while writers run."""
        target = sqlite3.connect(Path(path))
        try:
            with self.engine.connect() as conn:
                _raw(conn).backup(target)
        finally:
            target.close()


def _raw(conn: Connection) -> sqlite3.Connection:
    driver = conn.connection.driver_connection
    assert isinstance(driver, sqlite3.Connection)
    return driver
