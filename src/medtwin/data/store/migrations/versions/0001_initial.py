"""Initial schema: patients, observations, interventions, derived values, quarantine.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "patients",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("pseudonym", sa.Text, nullable=False, unique=True),
        sa.Column("spo2_scale", sa.SmallInteger, nullable=False, server_default="1"),
        sa.Column("created_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "observations",
        sa.Column("row_id", RowId, primary_key=True, autoincrement=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("source_id", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("patient_id", sa.Text, nullable=False),
        sa.Column("system", sa.Text, nullable=False),
        sa.Column("code", sa.Text, nullable=False),
        sa.Column("value_num", sa.Float),
        sa.Column("value_text", sa.Text),
        sa.Column("unit", sa.Text, nullable=False),
        sa.Column("effective_us", sa.BigInteger, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("flags", sa.Integer, nullable=False),
        sa.Column("received_us", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("source", "source_id", "version", name="uq_observations_source_id"),
    )
    op.create_index(
        "ix_observations_patient_code_time",
        "observations",
        ["patient_id", "code", "effective_us"],
    )
    op.create_table(
        "interventions",
        sa.Column("row_id", RowId, primary_key=True, autoincrement=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("source_id", sa.Text, nullable=False),
        sa.Column("patient_id", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("amount", sa.Float, nullable=False),
        sa.Column("unit", sa.Text, nullable=False),
        sa.Column("start_us", sa.BigInteger, nullable=False),
        sa.Column("duration_s", sa.Float, nullable=False),
        sa.Column("drug", sa.Text),
        sa.Column("route", sa.Text),
        sa.Column("received_us", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("source", "source_id", name="uq_interventions_source_id"),
    )
    op.create_index("ix_interventions_patient_time", "interventions", ["patient_id", "start_us"])
    op.create_table(
        "derived",
        sa.Column("row_id", RowId, primary_key=True, autoincrement=True),
        sa.Column("patient_id", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("computed_us", sa.BigInteger, nullable=False),
        sa.Column("value_num", sa.Float),
        sa.Column("payload", sa.Text, nullable=False),
    )
    op.create_index(
        "ix_derived_patient_name_time", "derived", ["patient_id", "name", "computed_us"]
    )
    op.create_table(
        "quarantine",
        sa.Column("row_id", RowId, primary_key=True, autoincrement=True),
        sa.Column("received_us", sa.BigInteger, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("source", sa.Text),
        sa.Column("location", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
    )
    op.create_index("ix_quarantine_received", "quarantine", ["received_us"])


def downgrade() -> None:
    for table in ("quarantine", "derived", "interventions", "observations", "patients"):
        op.drop_table(table)
