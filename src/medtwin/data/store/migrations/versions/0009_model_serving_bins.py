"""Served feature distributions of registered models, per day (drift monitoring).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_serving_bins",
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("day", sa.Integer, nullable=False),
        sa.Column("feature", sa.Integer, nullable=False),
        sa.Column("bin", sa.Integer, nullable=False),
        sa.Column("served", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("name", "version", "day", "feature", "bin"),
    )


def downgrade() -> None:
    op.drop_table("model_serving_bins")
