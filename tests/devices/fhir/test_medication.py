"""MedicationAdministration as a model input: stored, corrected, withdrawn, deleted."""

from __future__ import annotations

from typing import Any

from medtwin.core.records import InterventionKind
from medtwin.devices.fhir import FhirService
from tests.devices.fhir.test_bundles import patient, transaction


def administration(
    dose_mg: float = 1000, status: str = "completed", mid: str = "ma-1"
) -> dict[str, Any]:
    """Vancomycin 1000 mg IV over one hour (as an EHR's eMAR sends it)."""
    return {
        "resourceType": "MedicationAdministration",
        "id": mid,
        "status": status,
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                        "code": "11124", "display": "vancomycin"}]
        },
        "subject": {"reference": "Patient/p-1"},
        "effectivePeriod": {"start": "2024-05-01T08:00:00Z", "end": "2024-05-01T09:00:00Z"},
        "dosage": {
            "route": {"coding": [{"system": "http://snomed.info/sct", "code": "47625008",
                                  "display": "Intravenous route"}]},
            "dose": {"value": dose_mg, "unit": "mg", "system": "http://unitsofmeasure.org",
                     "code": "mg"},
        },
    }  # fmt: skip


def doses(service: FhirService, *, retracted: bool = False) -> list[float]:
    return [i.amount for i in service.store.interventions_of("p-1", retracted=retracted)]


def test_an_administration_becomes_a_drug_dose(service: FhirService) -> None:
    service.process_bundle(transaction(patient()))
    service.put("MedicationAdministration", "ma-1", administration())
    [dose] = service.store.interventions_of("p-1")
    assert dose.kind is InterventionKind.DRUG_DOSE
    assert (dose.amount, dose.unit, dose.duration_s) == (1000.0, "mg", 3600.0)
    assert (dose.drug, dose.route) == ("11124", "47625008")
    assert dose.source_id == "ma-1/_history/1"
    # The same content again makes no new version and no second dose.
    service.put("MedicationAdministration", "ma-1", administration())
    assert doses(service, retracted=True) == [1000.0]


def test_a_corrected_dose_replaces_the_earlier_one(service: FhirService) -> None:
    service.process_bundle(transaction(patient()))
    service.put("MedicationAdministration", "ma-1", administration(1000))
    service.put("MedicationAdministration", "ma-1", administration(1250))
    assert doses(service) == [1250.0]
    assert sorted(doses(service, retracted=True)) == [1000.0, 1250.0]  # kept for the record


def test_entered_in_error_and_delete_withdraw_the_dose(service: FhirService) -> None:
    service.process_bundle(transaction(patient()))
    service.put("MedicationAdministration", "ma-1", administration(1000))
    service.put("MedicationAdministration", "ma-2", administration(500, mid="ma-2"))
    assert sorted(doses(service)) == [500.0, 1000.0]
    service.put("MedicationAdministration", "ma-1", administration(1000, "entered-in-error"))
    assert doses(service) == [500.0]
    service.delete("MedicationAdministration", "ma-2")
    assert doses(service) == []
    assert sorted(doses(service, retracted=True)) == [500.0, 1000.0]


def test_a_dose_not_given_is_no_input(service: FhirService) -> None:
    service.process_bundle(transaction(patient()))
    service.put("MedicationAdministration", "ma-1", administration(status="not-done"))
    assert doses(service, retracted=True) == []
