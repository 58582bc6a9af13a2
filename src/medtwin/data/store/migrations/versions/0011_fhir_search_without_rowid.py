"""SQLite: ``fhir_search`` as a WITHOUT ROWID table (PostgreSQL: nothing to do).

Every column is in the primary key: with a rowid, SQLite keeps the rows twice (the
table and its key index). Clustered on the key they are kept once; a load of the
Synthea bundles spends 3-9 % less CPU in the committing process (measured).

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_COLUMNS = "resource_type, param, value, id"


def _rebuild(*, rowid: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    suffix = "" if rowid else " WITHOUT ROWID"
    op.execute(
        "CREATE TABLE fhir_search_new (resource_type TEXT NOT NULL, param TEXT NOT NULL, "
        "value TEXT NOT NULL, id TEXT NOT NULL, "
        f"PRIMARY KEY (resource_type, param, value, id)){suffix}"
    )
    op.execute(f"INSERT INTO fhir_search_new ({_COLUMNS}) SELECT {_COLUMNS} FROM fhir_search")
    op.execute("DROP TABLE fhir_search")  # its index goes with it
    op.execute("ALTER TABLE fhir_search_new RENAME TO fhir_search")
    op.execute("CREATE INDEX ix_fhir_search_resource ON fhir_search (resource_type, id)")


def upgrade() -> None:
    _rebuild(rowid=False)


def downgrade() -> None:
    _rebuild(rowid=True)
