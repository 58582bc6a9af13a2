"""The CapabilityStatement: what this server implements, and nothing more."""

from __future__ import annotations

from typing import Any

from medtwin import __version__

__all__ = ["MAPPED_TYPES", "capability_statement"]

# Types mapped into medtwin's records (the others are stored and served as they came).
MAPPED_TYPES = (
    "Patient",
    "Observation",
    "Encounter",
    "Condition",
    "MedicationAdministration",
    "MedicationRequest",
    "Procedure",
    "Device",
    "Consent",
)
_STORED_TYPES = (
    "Organization",
    "Practitioner",
    "PractitionerRole",
    "Location",
    "DiagnosticReport",
    "Immunization",
    "AllergyIntolerance",
    "CarePlan",
    "Goal",
    "Claim",
    "ExplanationOfBenefit",
    "DocumentReference",
    "ImagingStudy",
    "Provenance",
    "AuditEvent",
)
_SEARCH = {
    "Patient": [
        ("identifier", "token"),
        ("name", "string"),
        ("birthdate", "date"),
    ],
    "Observation": [
        ("subject", "reference"),
        ("patient", "reference"),
        ("code", "token"),
        ("date", "date"),
        ("category", "token"),
    ],
}


_PATIENT_DELETE = (
    "DELETE is refused (405): patients are erased through the patient vault, not FHIR."
)
_DELETE = (
    "DELETE (Type/id, alone or in a Bundle) writes a deletion version: reads answer "
    "410 Gone, searches skip it, the history shows it; it answers 204 No Content, also "
    "when there is nothing to delete."
)
_CONDITIONAL_UPDATE = (
    " Conditional update: PUT Type?search updates the one match, creates when none "
    "matches, 412 when several do."
)


def _resource(resource_type: str) -> dict[str, Any]:
    interactions = ["read", "vread", "update", "create", "history-instance"]
    if resource_type != "Patient":
        interactions.append("delete")
    if resource_type in _SEARCH:
        interactions.append("search-type")
    out: dict[str, Any] = {
        "type": resource_type,
        "interaction": [{"code": code} for code in interactions],
        "versioning": "versioned",
        "readHistory": True,
        "updateCreate": True,
        "conditionalCreate": True,
        "conditionalUpdate": True,
        "conditionalDelete": "not-supported",
        "documentation": (_PATIENT_DELETE if resource_type == "Patient" else _DELETE)
        + _CONDITIONAL_UPDATE,
    }
    if resource_type in _SEARCH:
        out["searchParam"] = [{"name": name, "type": kind} for name, kind in _SEARCH[resource_type]]
    return out


def capability_statement(base_url: str = "/fhir") -> dict[str, Any]:
    """The server's CapabilityStatement (FHIR R4, JSON)."""
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-01-01",
        "kind": "instance",
        "software": {"name": "medtwin", "version": __version__},
        "implementation": {"description": "medtwin FHIR R4 facade", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "description": "OAuth2 bearer tokens or API keys; reads need the patient's "
                    "care team; search values are matched through blind indexes",
                },
                "resource": [_resource(t) for t in (*MAPPED_TYPES, *_STORED_TYPES)],
                "interaction": [{"code": "transaction"}, {"code": "batch"}],
            }
        ],
    }
