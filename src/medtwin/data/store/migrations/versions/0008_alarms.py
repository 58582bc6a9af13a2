"""Alarms and their suppression windows (medtwin.twins.alarms).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "alarms",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("rule", sa.Text, nullable=False),
        sa.Column("patient_id", sa.Text, nullable=False),
        sa.Column("priority", sa.Text, nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("level", sa.Integer, nullable=False),
        sa.Column("recipient", sa.Text, nullable=False),
        sa.Column("raised_us", sa.BigInteger, nullable=False),
        sa.Column("escalated_us", sa.BigInteger, nullable=False),
        sa.Column("value", sa.Float),
        sa.Column("acknowledged_us", sa.BigInteger),
        sa.Column("acknowledged_by", sa.Text),
        sa.Column("acknowledged_reason", sa.Text),
        sa.Column("resolved_us", sa.BigInteger),
        sa.Column("resolved_by", sa.Text),
        sa.Column("resolved_reason", sa.Text),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_alarms_open", "alarms", ["status", "patient_id", "rule"])
    op.create_index("ix_alarms_patient", "alarms", ["patient_id", "raised_us"])
    op.create_table(
        "alarm_suppressions",
        sa.Column("row_id", RowId, primary_key=True, autoincrement=True),
        sa.Column("patient_id", sa.Text, nullable=False),
        sa.Column("rule", sa.Text, nullable=False),
        sa.Column("start_us", sa.BigInteger, nullable=False),
        sa.Column("end_us", sa.BigInteger, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )
    op.create_index(
        "ix_alarm_suppressions_patient", "alarm_suppressions", ["patient_id", "rule", "end_us"]
    )


def downgrade() -> None:
    op.drop_index("ix_alarm_suppressions_patient", table_name="alarm_suppressions")
    op.drop_table("alarm_suppressions")
    op.drop_index("ix_alarms_patient", table_name="alarms")
    op.drop_index("ix_alarms_open", table_name="alarms")
    op.drop_table("alarms")
