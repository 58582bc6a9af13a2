"""Interventions a source withdrew (FHIR updates, deletions, entered-in-error).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("interventions") as batch:
        batch.add_column(sa.Column("retracted_us", sa.BigInteger))


def downgrade() -> None:
    with op.batch_alter_table("interventions") as batch:
        batch.drop_column("retracted_us")
