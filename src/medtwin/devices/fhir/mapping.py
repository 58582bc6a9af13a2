"""Mapping of FHIR resources into medtwin's records and search index.

- Observation -> observation items of :mod:`medtwin.data.validation` (one per
  value; each component, such as the systolic 8480-6 and diastolic 8462-4 of a
  blood-pressure panel, is its own item ``<id>.<code>``).
- Patient -> :class:`~medtwin.data.vault.Demographics` (sealed by the vault).
- MedicationAdministration -> a drug-dose :class:`~medtwin.core.records.Intervention`.
- Every resource -> (param, value) rows of the search index; personal values of
  Patient (identifier, name, birthdate) only as blind-index digests.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from pydantic import ValidationError

from medtwin.core.clock import from_us, to_us
from medtwin.core.errors import InputError
from medtwin.core.records import LOINC, Intervention, InterventionKind
from medtwin.data.crypto import BlindIndex
from medtwin.data.validation import STATUSES
from medtwin.data.vault import Demographics, HumanName, Identifier

__all__ = [
    "MappedItem",
    "ObservationValue",
    "demographics_of",
    "identifier_rows",
    "intervention_of",
    "items_of",
    "observation_items",
    "observation_values",
    "patient_in",
    "patient_of",
    "personal_rows",
    "public_rows",
    "query_values",
    "search_rows",
    "subject_row",
    "time_range",
]

SOURCE = "fhir"
UCUM = "http://unitsofmeasure.org"
# Types whose identifiers and names are personal: indexed as blind digests only.
PERSONAL_TYPES = frozenset({"Patient", "RelatedPerson", "Person"})
# Offset making µs since epoch non-negative, so that zero-padded text sorts as time.
_TIME_OFFSET = 10**18
_TIME_WIDTH = 19
_MAX_TEXT = 256


@dataclass(frozen=True, slots=True)
class MappedItem:
    """One observation item and, per item field, the element path it came from."""

    item: dict[str, Any]
    paths: dict[str, str] = field(default_factory=dict)


def time_range(text: Any) -> tuple[int, int] | None:
    """[start, end) in µs of a FHIR date, dateTime or instant; None if it is not one.

    A date without a time is read as UTC (a whole year, month or day).
    """
    if not isinstance(text, str) or not 4 <= len(text) <= 40 or not text[:4].isdigit():
        return None
    try:
        if len(text) == 4:
            year = int(text)
            return _us(year, 1, 1), _us(year + 1, 1, 1)
        if len(text) == 7:
            year, month = int(text[:4]), int(text[5:7])
            days = calendar.monthrange(year, month)[1]
            start = _us(year, month, 1)
            return start, start + days * 86_400_000_000
        if len(text) == 10:
            start = to_us(datetime.fromisoformat(text).replace(tzinfo=UTC))
            return start, start + 86_400_000_000
        moment = datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        return None
    if moment.tzinfo is None:
        return None
    start = to_us(moment)
    return start, start + 1


def _us(year: int, month: int, day: int) -> int:
    if year > 9999:
        raise ValueError("year out of range")
    return to_us(datetime(year, month, day, tzinfo=UTC))


def sortable_time(us: int) -> str:
    """Text of a time (µs) that sorts like the time (for the search index)."""
    return f"{us + _TIME_OFFSET:0{_TIME_WIDTH}d}"


def _reference_id(value: Any, resource_type: str) -> str | None:
    if isinstance(value, dict):
        reference = value.get("reference")
        if isinstance(reference, str):
            return _id_in(reference, resource_type)
    return None


def _id_in(reference: str, resource_type: str) -> str | None:
    """The id of a reference ``<resource_type>/<id>[/...]``, else None."""
    if not reference.startswith(resource_type + "/"):
        return None
    return reference[len(resource_type) + 1 :].split("/", 1)[0] or None


def patient_in(reference: str) -> str | None:
    """The patient id of a (rewritten) reference ``Patient/<id>[/...]``, else None."""
    return _id_in(reference, "Patient")


def patient_of(resource_type: str, resource_id: str, resource: dict[str, Any]) -> str | None:
    """The patient a resource belongs to (its compartment), from its rewritten references."""
    if resource_type == "Patient":
        return resource_id
    for name in ("subject", "patient", "beneficiary"):
        found = _reference_id(resource.get(name), "Patient")
        if found is not None:
            return found
    return None


def _first_code(concept: Any, prefer: str = LOINC) -> tuple[str, str] | None:
    """(system, code) of a CodeableConcept: the ``prefer`` system's coding, else the first."""
    if not isinstance(concept, dict):
        return None
    codings = [
        c
        for c in concept.get("coding") or ()
        if isinstance(c, dict) and isinstance(c.get("code"), str)
    ]
    for coding in codings:
        if coding.get("system") == prefer:
            return prefer, coding["code"]
    if codings:
        system = codings[0].get("system")
        return (system if isinstance(system, str) and system else "urn:unknown"), codings[0]["code"]
    return None


def _value(holder: dict[str, Any], base: str) -> tuple[Any, str, str] | None:
    """(value, unit, path of the value) of an Observation or component ``value[x]``."""
    quantity = holder.get("valueQuantity")
    if isinstance(quantity, dict) and "value" in quantity:
        unit = quantity.get("code") if quantity.get("system") == UCUM else None
        if not isinstance(unit, str):
            unit = quantity.get("code") or quantity.get("unit") or ""
        return quantity["value"], str(unit), f"{base}.valueQuantity"
    concept = _first_code(holder.get("valueCodeableConcept"), prefer="")
    if concept is not None:
        return concept[1], "", f"{base}.valueCodeableConcept"
    for name in ("valueString", "valueInteger", "valueBoolean", "valueDateTime", "valueTime"):
        value = holder.get(name)
        if value is not None:
            if isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, str):
                value = value[:_MAX_TEXT]
            return value, "", f"{base}.{name}"
    return None


def _effective(resource: dict[str, Any]) -> tuple[str, str] | None:
    """(time text, element name) of an Observation's effective time."""
    for name in ("effectiveDateTime", "effectiveInstant"):
        if isinstance(resource.get(name), str):
            return resource[name], name
    period = resource.get("effectivePeriod")
    if isinstance(period, dict) and isinstance(period.get("start"), str):
        return period["start"], "effectivePeriod.start"
    if isinstance(resource.get("issued"), str):
        return resource["issued"], "issued"
    return None


# The Observations of a Bundle share their times (a Synthea encounter's dozens).
@lru_cache(maxsize=1024)
def _iso_time(text: str) -> str | None:
    found = time_range(text)
    if found is None:
        return None
    return from_us(found[0]).isoformat()


# One value of an Observation as the reader of a Bundle hands it over (no id, patient
# or version: those are assigned at commit): (the component's code, None for the
# Observation's own value; code; value; unit; time; status; code system, None for LOINC).
ObservationValue = tuple[str | None, str, Any, str, str, str, str | None]


def observation_values(resource: dict[str, Any]) -> tuple[ObservationValue, ...]:
    """The values :func:`observation_items` makes items of (none when it makes none)."""
    return tuple(value for value, _ in _observation_values(resource, None))


def observation_items(
    resource: dict[str, Any], resource_id: str, patient: str, version: int, base: str
) -> list[MappedItem]:
    """Observation items of an Observation resource (empty when it carries no value).

    ``base`` is the element path of the resource, for the locations of faults.
    """
    found = _observation_values(resource, base)
    items = items_of([value for value, _ in found], resource_id, patient, version)
    return [MappedItem(item, paths or {}) for item, (_, paths) in zip(items, found, strict=True)]


def items_of(
    values: Sequence[ObservationValue], resource_id: str, patient: str, version: int
) -> list[dict[str, Any]]:
    """The observation items of an Observation's values, once its id, patient and
    version are known."""
    items = []
    for component, code, value, unit, time_text, status, system in values:
        item = {
            "id": resource_id if component is None else f"{resource_id}.{component}"[:_MAX_TEXT],
            "code": code,
            "value": value,
            "unit": unit,
            "source": SOURCE,
            "patient": patient,
            "time": time_text,
            "status": status,
            "version": version,
        }
        if system is not None:
            item["system"] = system
        items.append(item)
    return items


def _observation_values(
    resource: dict[str, Any], base: str | None
) -> list[tuple[ObservationValue, dict[str, str] | None]]:
    """Each value of an Observation, with the element path of each item field (None
    without a ``base``: the reader of a Bundle has no use for them)."""
    status = resource.get("status")
    if status == "cancelled":
        return []
    effective = _effective(resource)
    if effective is None:
        return []
    time_text = _iso_time(effective[0])
    if time_text is None:
        time_text = effective[0]  # the validator names the fault
    common = (time_text, status if status in STATUSES else "final")
    where = base or ""
    time_path = f"{where}.{effective[1]}"
    out: list[tuple[ObservationValue, dict[str, str] | None]] = []
    code = _first_code(resource.get("code"))
    found = _value(resource, where)
    if code is not None and found is not None:
        code_path = None if base is None else f"{base}.code"
        out.append(_with_paths(None, code, found, common, time_path, code_path))
    for index, component in enumerate(resource.get("component") or ()):
        if not isinstance(component, dict):
            continue
        code = _first_code(component.get("code"))
        found = _value(component, f"{where}.component[{index}]")
        if code is None or found is None:
            continue
        code_path = None if base is None else f"{base}.component[{index}].code"
        out.append(_with_paths(code[1], code, found, common, time_path, code_path))
    return out


def _with_paths(
    component: str | None,
    code: tuple[str, str],
    found: tuple[Any, str, str],
    common: tuple[str, str],
    time_path: str,
    code_path: str | None,
) -> tuple[ObservationValue, dict[str, str] | None]:
    value, unit, value_path = found
    system = None if code[0] == LOINC else code[0]
    if code_path is None:
        return (component, code[1], value, unit, *common, system), None
    paths = {
        "id": code_path,
        "code": code_path,
        "system": code_path,
        "value": f"{value_path}.value" if value_path.endswith("Quantity") else value_path,
        "unit": f"{value_path}.code",
        "time": time_path,
        "status": time_path.rsplit(".", 1)[0] + ".status",
    }
    return (component, code[1], value, unit, *common, system), paths


# -- Patient ---------------------------------------------------------------

_IDENTIFIER_KINDS = {
    "SS": "ssn",
    "PPN": "passport",
    "DL": "drivers-license",
    "MR": "mrn",
    "SB": "insurance",
    "MB": "insurance",
}
_SYSTEM_KINDS = {"http://hl7.org/fhir/sid/us-ssn": "ssn"}


def _identifier_kind(identifier: dict[str, Any]) -> Any:
    system = identifier.get("system")
    if isinstance(system, str) and system in _SYSTEM_KINDS:
        return _SYSTEM_KINDS[system]
    concept = identifier.get("type")
    if isinstance(concept, dict):
        for coding in concept.get("coding") or ():
            if isinstance(coding, dict) and coding.get("code") in _IDENTIFIER_KINDS:
                return _IDENTIFIER_KINDS[coding["code"]]
    return "other"


def demographics_of(resource: dict[str, Any]) -> Demographics:
    """A Patient's personal data as the vault keeps it (what does not fit is left out)."""
    names = []
    for name in (resource.get("name") or ())[:10]:
        if not isinstance(name, dict):
            continue
        given = [g[:200] for g in name.get("given") or () if isinstance(g, str)][:10]
        family = name.get("family")
        names.append(HumanName(family=family[:200] if isinstance(family, str) else "", given=given))
    identifiers: list[Identifier] = []
    for identifier in resource.get("identifier") or ():
        value = identifier.get("value") if isinstance(identifier, dict) else None
        if isinstance(value, str) and 1 <= len(value) <= 64 and len(identifiers) < 20:
            identifiers.append(Identifier(kind=_identifier_kind(identifier), value=value))
    birth = resource.get("birthDate")
    gender = resource.get("gender")
    address = [
        _address_text(a) for a in (resource.get("address") or ())[:10] if isinstance(a, dict)
    ]
    telecom = [
        str(t["value"])[:200]
        for t in (resource.get("telecom") or ())[:10]
        if isinstance(t, dict) and isinstance(t.get("value"), str)
    ]
    try:
        return Demographics(
            names=names,
            identifiers=identifiers,
            birth_date=birth if isinstance(birth, str) and len(birth) == 10 else None,
            sex=gender if gender in ("female", "male", "other", "unknown") else None,
            address=address,
            telecom=telecom,
        )
    except ValidationError:
        return Demographics(names=names, identifiers=identifiers)


def _address_text(address: dict[str, Any]) -> str:
    parts = [*[str(x) for x in address.get("line") or ()]]
    for name in ("city", "state", "postalCode", "country"):
        if isinstance(address.get(name), str):
            parts.append(address[name])
    return ", ".join(parts)[:500]


# -- MedicationAdministration ------------------------------------------------


def intervention_of(resource: dict[str, Any], source_id: str, patient: str) -> Intervention | None:
    """A drug dose from a completed (or in-progress) MedicationAdministration with a dose
    and a time; ``source_id`` names the version (``id/_history/n``)."""
    if resource.get("status") not in ("completed", "in-progress"):
        return None
    dosage = resource.get("dosage")
    if not isinstance(dosage, dict):
        return None
    dose = dosage.get("dose")
    if not isinstance(dose, dict) or not isinstance(dose.get("value"), (int, float)):
        return None
    start_text = resource.get("effectiveDateTime")
    duration_s = 0.0
    period = resource.get("effectivePeriod")
    if isinstance(period, dict):
        start_text = period.get("start")
        end = time_range(period.get("end"))
        begun = time_range(start_text)
        if end is not None and begun is not None:
            duration_s = max(0.0, (end[0] - begun[0]) / 1e6)
    start = time_range(start_text)
    if start is None:
        return None
    drug = _first_code(resource.get("medicationCodeableConcept"), prefer="")
    route = _first_code(dosage.get("route"), prefer="")
    unit = dose.get("code") or dose.get("unit") or ""
    return Intervention(
        source=SOURCE,
        source_id=source_id,
        patient=patient,
        kind=InterventionKind.DRUG_DOSE,
        amount=float(dose["value"]),
        unit=str(unit)[:_MAX_TEXT],
        start_us=start[0],
        duration_s=duration_s,
        drug=None if drug is None else drug[1][:_MAX_TEXT],
        route=None if route is None else route[1][:_MAX_TEXT],
    )


# -- search index ------------------------------------------------------------


def _token_values(concepts: Any) -> Iterator[str]:
    if isinstance(concepts, dict):
        concepts = [concepts]
    for concept in concepts or ():
        if not isinstance(concept, dict):
            continue
        for coding in concept.get("coding") or ():
            if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                system = coding.get("system") if isinstance(coding.get("system"), str) else ""
                yield f"{system}|{coding['code']}"
                yield f"*|{coding['code']}"


def _identifier_values(identifiers: Any) -> Iterator[str]:
    if isinstance(identifiers, dict):
        identifiers = [identifiers]
    for identifier in identifiers or ():
        if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
            system = identifier.get("system") if isinstance(identifier.get("system"), str) else ""
            yield f"{system}|{identifier['value']}"
            yield f"*|{identifier['value']}"


def _blind(index: BlindIndex, kind: str, value: str) -> str | None:
    try:
        return index.identifier(kind, value)
    except InputError:  # nothing left after normalization
        return None


def search_rows(
    resource_type: str, resource: dict[str, Any], index: BlindIndex
) -> set[tuple[str, str]]:
    """(param, value) rows of the search index of one resource."""
    if resource_type in PERSONAL_TYPES:
        rows = personal_rows(resource, index)
    else:
        rows = public_rows(resource_type, resource)
    subject = resource.get("subject")
    if isinstance(subject, dict) and isinstance(subject.get("reference"), str):
        rows.add(subject_row(subject["reference"]))
    return rows


def public_rows(resource_type: str, resource: dict[str, Any]) -> set[tuple[str, str]]:
    """The rows of :func:`search_rows` of a resource of a type not personal, but its
    ``subject`` (no key needed, and no reference: the reader of a Bundle makes them)."""
    rows = {("identifier", v[:_MAX_TEXT]) for v in _identifier_values(resource.get("identifier"))}
    if resource_type == "Observation":
        rows.update(("code", v[:_MAX_TEXT]) for v in _token_values(resource.get("code")))
        for component in resource.get("component") or ():
            if isinstance(component, dict):
                rows.update(
                    ("combo-code", v[:_MAX_TEXT]) for v in _token_values(component.get("code"))
                )
        rows.update(("category", v[:_MAX_TEXT]) for v in _token_values(resource.get("category")))
        effective = _effective(resource)
        found = time_range(effective[0]) if effective is not None else None
        if found is not None:
            rows.add(("date", sortable_time(found[0])))
    return rows


def subject_row(reference: str) -> tuple[str, str]:
    """The search row of a resource's ``subject`` reference (rewritten)."""
    return "subject", reference[:_MAX_TEXT]


def personal_rows(resource: dict[str, Any], index: BlindIndex) -> set[tuple[str, str]]:
    """The rows of :func:`search_rows` of a resource of a personal type, but its
    ``subject``: identifier, name and birth date, as digests."""
    rows: set[tuple[str, str]] = set()
    for value in _identifier_values(resource.get("identifier")):
        digest = _blind(index, "fhir_identifier", value)
        if digest is not None:
            rows.add(("identifier", digest))
    for name in resource.get("name") or ():
        if not isinstance(name, dict):
            continue
        parts = [name.get("family"), *(name.get("given") or ()), name.get("text")]
        text = " ".join(p for p in parts if isinstance(p, str))
        rows.update(("name", token) for token in index.name_tokens(text))
    birth = resource.get("birthDate")
    if isinstance(birth, str):
        digest = _blind(index, "fhir_birthdate", birth)
        if digest is not None:
            rows.add(("birthdate", digest))
    return rows


def query_values(resource_type: str, param: str, value: str, index: BlindIndex) -> list[str] | None:
    """Index values any of which matches a token/string search ``param=value``.

    None when ``param`` is not searchable this way on ``resource_type``.
    """
    personal = resource_type in PERSONAL_TYPES
    if param == "identifier" or (param in ("code", "category") and resource_type == "Observation"):
        text = value if "|" in value else f"*|{value}"
        if param == "identifier" and personal:
            digest = _blind(index, "fhir_identifier", text)
            return [] if digest is None else [digest]
        return [text]
    if param == "name" and personal:
        return index.name_tokens(value)
    if param == "birthdate" and personal:
        digest = _blind(index, "fhir_birthdate", value)
        return [] if digest is None else [digest]
    if param in ("subject", "patient") and resource_type != "Patient":
        return [value if "/" in value else f"Patient/{value}"]
    return None


def identifier_rows(resource_type: str, resource: dict[str, Any], index: BlindIndex) -> list[str]:
    """The ``identifier`` index values of a resource (as :func:`search_rows` makes them)."""
    values = list(_identifier_values(resource.get("identifier")))
    if resource_type not in PERSONAL_TYPES:
        return [v[:_MAX_TEXT] for v in values]
    digests = (_blind(index, "fhir_identifier", v) for v in values)
    return [d for d in digests if d is not None]
