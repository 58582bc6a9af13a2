"""Storing the interventions devices publish (insulin pumps, meal loggers)."""

from __future__ import annotations

from collections.abc import Sequence

from medtwin.core.clock import from_us
from medtwin.data.interventions import validate_interventions
from medtwin.data.store import QuarantineEntry, SqlStore
from medtwin.devices.mqtt.payload import DeviceIntervention


def store_interventions(
    store: SqlStore,
    treatments: Sequence[tuple[DeviceIntervention, str]],
    *,
    now_us: int,
    max_future_us: int,
    channel: str = "mqtt",
) -> list[QuarantineEntry]:
    """Validate and store (intervention, patient) pairs in one transaction; resends are ignored.

    The same checks and units as ``POST /api/v1/interventions``; the key is
    (device, ``boot_id.seq``), as for observations. Returns the quarantine
    entries of the interventions refused, located by topic and field, for the
    caller to commit with the rest of its batch.
    """
    items = [
        {
            "id": t.reading_id,
            "source": t.device,
            "patient": patient,
            "kind": t.kind,
            "amount": t.amount,
            "unit": t.unit,
            "time": from_us(t.time_us).isoformat(),
            "duration_s": t.duration_s,
            **({"drug": t.drug} if t.drug is not None else {}),
            **({"route": t.route} if t.route is not None else {}),
        }
        for t, patient in treatments
    ]
    checked = validate_interventions(items, now_us=now_us, max_future_us=max_future_us)
    refused = [
        QuarantineEntry(
            channel,
            f"{treatments[r.index][0].topic}: {r.field or 'payload'}",
            r.reason,
            treatments[r.index][0].raw,
            treatments[r.index][0].device,
            now_us,
        )
        for r in checked.rejected
    ]
    records = [record for _, record in checked.accepted]
    if records:
        store.append_interventions(records, received_us=now_us, channel=channel)
    return refused
