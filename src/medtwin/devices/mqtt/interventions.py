"""The interventions devices publish (insulin pumps, meal loggers), as ingestion items.

MQTT interventions take the path of ``POST /api/v1/interventions``: the same
validation (:func:`~medtwin.data.interventions.validate_interventions`, which
``Ingestor.ingest_interventions`` runs) and the same storage call
(``SqlStore.append_interventions_in``, which ``append_interventions`` runs), made
inside the subscriber's batch transaction so that a message is acknowledged only
once what it brought is committed. The key is (device, ``boot_id.seq``), as for
observations: a resend is a duplicate, other content under the same id a conflict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from medtwin.core.clock import from_us
from medtwin.core.records import Intervention
from medtwin.data.interventions import validate_interventions
from medtwin.data.validation import Rejection
from medtwin.devices.mqtt.payload import DeviceIntervention


@dataclass(frozen=True, slots=True)
class CheckedInterventions:
    """``accepted``: (index into the treatments, record); ``rejected``: the refusals."""

    accepted: list[tuple[int, Intervention]]
    rejected: list[Rejection]


def intervention_item(treatment: DeviceIntervention, patient: str) -> dict[str, Any]:
    """The item ``POST /api/v1/interventions`` would take for this device message."""
    return {
        "id": treatment.reading_id,
        "source": treatment.device,
        "patient": patient,
        "kind": treatment.kind,
        "amount": treatment.amount,
        "unit": treatment.unit,
        "time": from_us(treatment.time_us).isoformat(),
        "duration_s": treatment.duration_s,
        **({"drug": treatment.drug} if treatment.drug is not None else {}),
        **({"route": treatment.route} if treatment.route is not None else {}),
    }


def check_interventions(
    treatments: Sequence[tuple[DeviceIntervention, str]], *, now_us: int, max_future_us: int
) -> CheckedInterventions:
    """Validate (intervention, patient) pairs with the checks and units of the HTTP route."""
    items = [intervention_item(t, patient) for t, patient in treatments]
    checked = validate_interventions(items, now_us=now_us, max_future_us=max_future_us)
    return CheckedInterventions(list(checked.accepted), list(checked.rejected))
