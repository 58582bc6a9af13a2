"""Observation origins keyed by the observation's row id.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_DETAILS = "channel, message, entry, conditioning"


def upgrade() -> None:
    op.create_table(
        "observation_origins_by_row",
        sa.Column("observation_id", _ROW_ID, nullable=False, autoincrement=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("entry", sa.Text),
        sa.Column("conditioning", sa.Text),
        sa.PrimaryKeyConstraint("observation_id"),
    )
    op.execute(
        f"INSERT INTO observation_origins_by_row (observation_id, {_DETAILS}) "
        "SELECT o.row_id, g.channel, g.message, g.entry, g.conditioning "
        "FROM observation_origins g JOIN observations o "
        "ON o.source = g.source AND o.source_id = g.source_id AND o.version = g.version"
    )
    op.drop_table("observation_origins")
    op.rename_table("observation_origins_by_row", "observation_origins")


def downgrade() -> None:
    op.create_table(
        "observation_origins_by_key",
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("source_id", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("entry", sa.Text),
        sa.Column("conditioning", sa.Text),
        sa.PrimaryKeyConstraint("source", "source_id", "version"),
    )
    op.execute(
        f"INSERT INTO observation_origins_by_key (source, source_id, version, {_DETAILS}) "
        "SELECT o.source, o.source_id, o.version, g.channel, g.message, g.entry, g.conditioning "
        "FROM observation_origins g JOIN observations o ON o.row_id = g.observation_id"
    )
    op.drop_table("observation_origins")
    op.rename_table("observation_origins_by_key", "observation_origins")
