"""Migration 0011: ``fhir_search`` keeps its rows (SQLite: clustered on its key)."""

from __future__ import annotations

from typing import Any

from tests.data.store.test_store import at_revision


def test_migration_0011_keeps_search_rows(stores: Any, backend: str) -> None:
    store = at_revision(stores, backend, "0010")
    with store.engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO fhir_search (resource_type, param, value, id) VALUES "
            "('Patient', 'identifier', 'd1', 'p1'), ('Observation', 'code', 'x|1', 'o1')"
        )
    store.migrate()
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT resource_type, param, value, id FROM fhir_search ORDER BY id"
        ).all()
        assert [tuple(r) for r in rows] == [
            ("Observation", "code", "x|1", "o1"),
            ("Patient", "identifier", "d1", "p1"),
        ]
        if backend == "sqlite":
            (sql,) = conn.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE name = 'fhir_search'"
            ).one()
            assert sql.endswith("WITHOUT ROWID")
            indexes = conn.exec_driver_sql("PRAGMA index_list(fhir_search)").all()
            assert "ix_fhir_search_resource" in {r[1] for r in indexes}
