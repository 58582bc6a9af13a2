"""Module graph: observation origins, module results and the inputs each one read;
waveform chunks (ECG, PPG).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "observation_origins",
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("source_id", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("entry", sa.Text),
        sa.Column("conditioning", sa.Text),
        sa.PrimaryKeyConstraint("source", "source_id", "version"),
    )
    op.create_table(
        "module_results",
        sa.Column("fingerprint", sa.Text, nullable=False),
        sa.Column("module", sa.Text, nullable=False),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("patient_id", sa.Text, nullable=False),
        sa.Column("computed_us", sa.BigInteger, nullable=False),
        sa.Column("outputs", sa.Text, nullable=False),
        sa.Column("parameters", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("fingerprint"),
    )
    op.create_index(
        "ix_module_results_patient", "module_results", ["patient_id", "module", "computed_us"]
    )
    op.create_table(
        "module_inputs",
        sa.Column("fingerprint", sa.Text, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("input", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("source", sa.Text),
        sa.Column("source_id", sa.Text),
        sa.Column("version", sa.Integer),
        sa.Column("upstream", sa.Text),
        sa.Column("value", sa.Text),
        sa.PrimaryKeyConstraint("fingerprint", "position"),
    )
    op.create_table(
        "waveforms",
        sa.Column("row_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("source_id", sa.Text, nullable=False),
        sa.Column("patient_id", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("system", sa.Text, nullable=False),
        sa.Column("code", sa.Text, nullable=False),
        sa.Column("start_us", sa.BigInteger, nullable=False),
        sa.Column("end_us", sa.BigInteger, nullable=False),
        sa.Column("rate_hz", sa.Float, nullable=False),
        sa.Column("n_samples", sa.Integer, nullable=False),
        sa.Column("unit", sa.Text, nullable=False),
        sa.Column("samples", sa.LargeBinary, nullable=False),
        sa.Column("received_us", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("source", "source_id", name="uq_waveforms_source_id"),
    )  # fmt: skip
    op.create_index(
        "ix_waveforms_patient_code_time", "waveforms", ["patient_id", "code", "start_us"]
    )
    op.create_table(
        "calibrations",
        sa.Column(
            "row_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("device", sa.Text, nullable=False),
        sa.Column("code", sa.Text, nullable=False),
        sa.Column("reference", sa.Text, nullable=False),
        sa.Column("created_us", sa.BigInteger, nullable=False),
        sa.Column("calibration", sa.Text, nullable=False),
    )
    op.create_index("ix_calibrations_device", "calibrations", ["device", "code"])


def downgrade() -> None:
    op.drop_index("ix_calibrations_device", "calibrations")
    op.drop_table("calibrations")
    op.drop_index("ix_waveforms_patient_code_time", "waveforms")
    op.drop_table("waveforms")
    op.drop_table("module_inputs")
    op.drop_index("ix_module_results_patient", "module_results")
    op.drop_table("module_results")
    op.drop_table("observation_origins")
