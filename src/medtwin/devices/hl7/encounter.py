"""PV1 visits kept as FHIR Encounter resources (no table of their own).

An encounter is identified by its sender and visit number (PV1-19): its FHIR id is
a digest of both, so an A02 or A03 for the same visit finds it. Each change is a
new version in ``fhir_resources`` (sealed, see
:class:`medtwin.devices.fhir.repository.ResourceRepository`), written inside the
message's own transaction; an unchanged encounter is not written again, so a
resend adds nothing. A visit without a visit number is not kept (nothing would
tie the later transfer or discharge to it).

A02 (transfer) moves the encounter to the bed of PV1-3: the earlier location is
marked ``completed`` and the new one ``active``. A03 (discharge) and a PV1-45
discharge time finish it (``status`` ``finished``, ``period.end``).
"""

from __future__ import annotations

import copy
import hashlib
from datetime import tzinfo
from typing import Any

from sqlalchemy.engine import Connection

from medtwin.devices.fhir.repository import NewVersion, ResourceRepository, canonical
from medtwin.devices.hl7.adt import Visit
from medtwin.devices.hl7.parse import parse_ts

__all__ = ["ENCOUNTER", "encounter_id", "write_encounters"]

ENCOUNTER = "Encounter"
_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
_V2_CLASS = "http://terminology.hl7.org/CodeSystem/v2-0004"
# PV1-2 patient class (HL7 table 0004) -> v3 ActCode of Encounter.class.
_CLASSES = {
    "E": ("EMER", "emergency"),
    "I": ("IMP", "inpatient encounter"),
    "O": ("AMB", "ambulatory"),
    "P": ("PRENC", "pre-admission"),
    "R": ("AMB", "ambulatory"),
    "B": ("AMB", "ambulatory"),
}


def encounter_id(sender: str, visit_number: str) -> str:
    """The FHIR id of the encounter of a sender's visit number (no personal data in it)."""
    digest = hashlib.sha256(f"{sender}|{visit_number}".encode("utf-8", "surrogatepass"))
    return "hl7-" + digest.hexdigest()[:32]


def _instant(text: str, zone: tzinfo) -> str | None:
    if not text:
        return None
    try:
        return parse_ts(text, zone).isoformat()
    except ValueError:
        return None


def _class(code: str) -> dict[str, str]:
    known = _CLASSES.get(code.upper())
    if known is not None:
        return {"system": _ACT_CODE, "code": known[0], "display": known[1]}
    return {"system": _V2_CLASS, "code": (code or "U")[:16]}


def _location(visit: Visit) -> str:
    return "^".join(visit.location).rstrip("^")


def _updated(
    current: dict[str, Any] | None, visit: Visit, event: str, sender: str, zone: tzinfo
) -> dict[str, Any]:
    """The encounter after this message (``current`` is not changed)."""
    resource: dict[str, Any] = copy.deepcopy(current) if current is not None else {}
    resource.pop("meta", None)
    resource["resourceType"] = ENCOUNTER
    resource["id"] = encounter_id(sender, visit.visit_number)
    resource["identifier"] = [
        {"system": f"urn:medtwin:hl7:{sender}:visit", "value": visit.visit_number}
    ]
    resource["subject"] = {"reference": f"Patient/{visit.patient}"}
    if visit.patient_class or "class" not in resource:
        resource["class"] = _class(visit.patient_class)
    period: dict[str, Any] = dict(resource.get("period") or {})
    start = _instant(visit.admitted, zone)
    if start is None and "start" not in period and event in ("A01", "A04"):
        start = _instant(visit.event_time, zone)
    if start is not None:
        period["start"] = start
    end = _instant(visit.discharged, zone)
    if end is None and event == "A03":
        end = _instant(visit.event_time, zone) or period.get("end")
    if end is not None:
        period["end"] = end
    if period:
        resource["period"] = period
    finished = event == "A03" or end is not None
    resource["status"] = "finished" if finished else "in-progress"
    bed = _location(visit)
    locations: list[dict[str, Any]] = list(resource.get("location") or [])
    active = next((loc for loc in reversed(locations) if loc.get("status") == "active"), None)
    if bed and (active is None or active.get("location", {}).get("display") != bed):
        for loc in locations:
            if loc.get("status") == "active":
                loc["status"] = "completed"
        locations.append({"location": {"display": bed}, "status": "active"})
    if finished:
        for loc in locations:
            if loc.get("status") == "active":
                loc["status"] = "completed"
    if locations:
        resource["location"] = locations
    return resource


def write_encounters(
    conn: Connection,
    repository: ResourceRepository,
    visits: list[Visit],
    *,
    event: str,
    sender: str,
    zone: tzinfo,
    now_us: int,
) -> int:
    """Create or update the encounters of ``visits`` in ``conn``'s transaction; how many changed."""
    changed = 0
    for visit in visits:
        if not visit.visit_number:
            continue
        resource_id = encounter_id(sender, visit.visit_number)
        stored = repository.current(conn, ENCOUNTER, resource_id)
        current = None if stored is None or stored.deleted else stored.resource
        resource = _updated(current, visit, event, sender, zone)
        if current is not None and canonical(resource) == canonical(current):
            continue  # a resend, or nothing new: no new version
        version = 1 if stored is None else stored.version + 1
        repository.write(
            conn,
            [NewVersion(ENCOUNTER, resource_id, version, visit.patient, resource)],
            now_us,
        )
        changed += 1
    return changed
