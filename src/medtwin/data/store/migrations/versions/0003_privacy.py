"""Privacy: per-patient data keys, encrypted demographics, blind indexes, consents, privacy budgets.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("patients") as batch:
        batch.add_column(sa.Column("demographics", sa.Text))  # AES-GCM under the patient's key
        batch.add_column(sa.Column("erased_us", sa.BigInteger))
    op.create_table(
        "patient_keys",
        sa.Column("patient_id", sa.Text, primary_key=True),
        sa.Column("wrapped_key", sa.Text, nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "blind_index",
        sa.Column("patient_id", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("digest", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("patient_id", "kind", "digest"),
    )
    op.create_index("ix_blind_index_lookup", "blind_index", ["kind", "digest"])
    op.create_table(
        "consents",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("patient_id", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("rules", sa.Text, nullable=False),  # the parsed provisions, JSON
        sa.Column("resource", sa.Text, nullable=False),  # the FHIR JSON, encrypted
        sa.Column("updated_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_consents_patient", "consents", ["patient_id"])
    op.create_table(
        "privacy_budgets",
        sa.Column("researcher", sa.Text, primary_key=True),
        sa.Column("epsilon_limit", sa.Float, nullable=False),
        sa.Column("epsilon_spent", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in ("privacy_budgets", "consents", "blind_index", "patient_keys"):
        op.drop_table(table)
    with op.batch_alter_table("patients") as batch:
        batch.drop_column("erased_us")
        batch.drop_column("demographics")
