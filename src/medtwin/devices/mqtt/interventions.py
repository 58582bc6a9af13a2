"""Storing the interventions devices publish (insulin pumps, meal loggers)."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from medtwin.data.store import QuarantineEntry, SqlStore
from medtwin.data.store.schema import interventions
from medtwin.devices.mqtt.payload import DeviceIntervention


def store_interventions(
    store: SqlStore,
    treatments: Sequence[tuple[DeviceIntervention, str]],
    *,
    now_us: int,
    max_future_us: int,
    channel: str = "mqtt",
) -> list[QuarantineEntry]:
    """Insert (intervention, patient) pairs in one transaction; resends are ignored.

    The key is (device, ``boot_id.seq``), as for observations. Returns the
    quarantine entries of the interventions refused (time too far ahead of the
    clock), for the caller to commit with the rest of its batch.
    """
    refused: list[QuarantineEntry] = []
    rows: list[dict[str, object]] = []
    latest = now_us + max_future_us
    for treatment, patient in treatments:
        if treatment.time_us > latest:
            refused.append(
                QuarantineEntry(
                    channel,
                    f"{treatment.topic}: time",
                    f"time is more than {max_future_us / 1e6:g} s ahead of the clock",
                    treatment.raw,
                    treatment.device,
                    now_us,
                )
            )
            continue
        rows.append(
            {
                "source": treatment.device,
                "source_id": treatment.reading_id,
                "patient_id": patient,
                "kind": treatment.kind,
                "amount": treatment.amount,
                "unit": treatment.unit,
                "start_us": treatment.time_us,
                "duration_s": treatment.duration_s,
                "drug": treatment.drug,
                "route": treatment.route,
                "received_us": now_us,
            }
        )
    if rows:
        with store.transaction() as conn:
            conn.execute(_insert_ignoring_duplicates(conn.dialect.name), rows)
    return refused


def _insert_ignoring_duplicates(dialect: str) -> sa.Insert:
    """INSERT ... ON CONFLICT (source, source_id) DO NOTHING, in the store's dialect."""
    keys = ["source", "source_id"]
    if dialect == "postgresql":
        return postgresql.insert(interventions).on_conflict_do_nothing(index_elements=keys)
    return sqlite.insert(interventions).on_conflict_do_nothing(index_elements=keys)
