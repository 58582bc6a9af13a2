"""Interoperability: FHIR resources and bundles, HL7 v2 messages, device bindings, code maps.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("quarantine") as batch:
        # Set when a replay (after a mapping was fixed) took the payload in.
        batch.add_column(sa.Column("resolved_us", sa.BigInteger))
    with op.batch_alter_table("patients") as batch:
        # Set when the patient's records were merged into another (HL7 A40).
        batch.add_column(sa.Column("merged_into", sa.Text))
    op.create_table(
        "fhir_resources",
        sa.Column("resource_type", sa.Text, nullable=False),
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("last_updated_us", sa.BigInteger, nullable=False),
        sa.Column("patient_id", sa.Text),
        sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("content", sa.Text, nullable=False),  # sealed JSON as received
        sa.PrimaryKeyConstraint("resource_type", "id", "version"),
    )
    op.create_index("ix_fhir_resources_patient", "fhir_resources", ["patient_id"])
    op.create_table(
        "fhir_search",
        sa.Column("resource_type", sa.Text, nullable=False),
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("param", sa.Text, nullable=False),
        sa.Column("value", sa.Text, nullable=False),  # personal values as blind-index digests
        sa.PrimaryKeyConstraint("resource_type", "param", "value", "id"),
    )
    op.create_index("ix_fhir_search_resource", "fhir_search", ["resource_type", "id"])
    op.create_table(
        "fhir_bundles",
        sa.Column("digest", sa.Text, primary_key=True),
        sa.Column("received_us", sa.BigInteger, nullable=False),
        sa.Column("response", sa.Text, nullable=False),
    )
    op.create_table(
        "hl7_messages",
        sa.Column("sender", sa.Text, nullable=False),
        sa.Column("control_id", sa.Text, nullable=False),
        sa.Column("digest", sa.Text, nullable=False),
        sa.Column("received_us", sa.BigInteger, nullable=False),
        sa.Column("ack_code", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("sender", "control_id", "digest"),
    )
    op.create_table(
        "device_bindings",
        sa.Column("row_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("device_id", sa.Text, nullable=False),
        sa.Column("patient_id", sa.Text, nullable=False),
        sa.Column("from_us", sa.BigInteger, nullable=False),
        sa.Column("to_us", sa.BigInteger),
        sa.Column("created_us", sa.BigInteger, nullable=False),
    )  # fmt: skip
    op.create_index("ix_device_bindings_device", "device_bindings", ["device_id", "from_us"])
    op.create_table(
        "code_mappings",
        sa.Column("source_system", sa.Text, nullable=False),
        sa.Column("local_code", sa.Text, nullable=False),
        sa.Column("code", sa.Text, nullable=False),
        sa.Column("unit", sa.Text),
        sa.PrimaryKeyConstraint("source_system", "local_code"),
    )


def downgrade() -> None:
    for table in (
        "code_mappings",
        "device_bindings",
        "hl7_messages",
        "fhir_bundles",
        "fhir_search",
        "fhir_resources",
    ):
        op.drop_table(table)
    with op.batch_alter_table("quarantine") as batch:
        batch.drop_column("resolved_us")
    with op.batch_alter_table("patients") as batch:
        batch.drop_column("merged_into")
