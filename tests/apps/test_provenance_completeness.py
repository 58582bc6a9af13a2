"""Provenance completeness: a ward fed through HTTP, FHIR and HL7 v2, every derived value
traced to the messages it came from, and every link resolving."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from medtwin.data.store import schema
from medtwin.devices.hl7 import HL7Processor
from tests.apps.conftest import LiveServer

# (LOINC, value, UCUM unit); consciousness as the ACVPU letter.
VITALS: list[tuple[str, float | str, str]] = [
    ("9279-1", 18, "/min"),
    ("59408-5", 97, "%"),
    ("3150-0", 21, "%"),
    ("8480-6", 118, "mm[Hg]"),
    ("8867-4", 72, "/min"),
    ("80288-4", "A", ""),
    ("8310-5", 37.4, "Cel"),
]


def _http(server: LiveServer, patient: str, vitals: list[tuple[str, float | str, str]]) -> None:
    at = (datetime.now(UTC) - timedelta(minutes=3)).isoformat()
    items = [
        {"id": f"h-{patient}-{code}", "source": "bedside-1", "patient": patient, "code": code,
         "value": value, "unit": unit, "time": at}
        for code, value, unit in vitals
    ]  # fmt: skip
    answer = server.admin.post(
        "/api/v1/observations", json={"observations": items}, headers={"X-Request-ID": "ward-1"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["summary"]["stored"] == len(items)


def _fhir_observation(patient: str, code: str, value: float | str, unit: str) -> dict[str, Any]:
    at = (datetime.now(UTC) - timedelta(minutes=2)).isoformat().replace("+00:00", "Z")
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": at,
    }
    if isinstance(value, str):
        resource["valueCodeableConcept"] = {"coding": [{"code": value}]}
    else:
        resource["valueQuantity"] = {
            "value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit
        }  # fmt: skip
    return resource


def _fhir(server: LiveServer, patient: str, vitals: list[tuple[str, float | str, str]]) -> None:
    resources = [{"resourceType": "Patient", "id": patient}] + [
        _fhir_observation(patient, *vital) for vital in vitals
    ]
    bundle = {
        "resourceType": "Bundle",
        "id": f"ward-{patient}",
        "type": "transaction",
        "entry": [
            {
                "resource": resource,
                "request": {"method": "PUT", "url": f"Patient/{patient}"}
                if resource["resourceType"] == "Patient"
                else {"method": "POST", "url": "Observation"},
            }
            for resource in resources
        ],
    }
    answer = server.admin.post(
        "/fhir", json=bundle, headers={"Content-Type": "application/fhir+json"}
    )
    assert answer.status_code == 200, answer.text


def _hl7(server: LiveServer, mrn: str, vitals: list[tuple[str, float | str, str]]) -> str:
    """Send one ORU^R01 through the processor the MLLP listener uses; its control id."""
    at = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y%m%d%H%M%S+0000")
    control = f"CTRL-{mrn}"
    segments = [
        f"MSH|^~\\&|LAB|HOSP|MEDTWIN|WARD|{at}||ORU^R01|{control}|P|2.5.1",
        f"PID|1||{mrn}^^^HOSP^MR",
        f"OBR|1|ORD1|FIL1|85353-1^Vital signs^LN|||{at}",
    ]
    for n, (code, value, unit) in enumerate(vitals, start=1):
        kind = "ST" if isinstance(value, str) else "NM"
        segments.append(f"OBX|{n}|{kind}|{code}^^LN||{value}|{unit}|||||F|||{at}")
    processor = server.context.extras["hl7"]
    assert isinstance(processor, HL7Processor)
    outcome = processor.handle(("\r".join(segments) + "\r").encode())
    assert outcome.code == "AA", outcome
    assert outcome.stored == len(vitals), outcome
    return control


def _walk(node: dict[str, Any], messages: set[tuple[str, str]], problems: list[str]) -> None:
    if node.get("missing"):
        problems.append(f"unresolved {node['type']} {node['id']}")
        return
    if node["type"] == "observation":
        origin = node["origin"]
        if origin is None:
            problems.append(f"observation {node['id']} has no origin")
        else:
            messages.add((origin["channel"], origin["message"]))
    for child in node.get("inputs", []):
        _walk(child, messages, problems)


def test_every_derived_value_traces_to_the_messages_it_came_from(live_server: LiveServer) -> None:
    _http(live_server, "ward-http", VITALS)
    _fhir(live_server, "ward-fhir", VITALS)
    control = _hl7(live_server, "ward-hl7", VITALS)
    # One patient from all three: breathing by HTTP, circulation by FHIR, the rest by HL7.
    _http(live_server, "ward-mixed", VITALS[:3])
    _fhir(live_server, "ward-mixed", VITALS[3:5])
    mixed_control = _hl7(live_server, "ward-mixed", VITALS[5:])
    patients = ["ward-http", "ward-fhir", "ward-hl7", "ward-mixed"]
    for patient in patients:
        answer = live_server.admin.get(f"/api/v1/patients/{patient}/derived/news2")
        assert answer.status_code == 200, answer.text
        twin = live_server.admin.get(f"/api/v1/twins/{patient}").json()
        assert {o["name"]: o["value"] for o in answer.json()["outputs"]}["score"] == 0, twin

    provenance = live_server.context.provenance
    table = schema.module_results
    with live_server.context.store.reading() as conn:
        rows = conn.execute(sa.select(table.c.fingerprint, table.c.module, table.c.patient_id))
        results = [(r.fingerprint, r.module, r.patient_id) for r in rows]
    assert {patient for _, _, patient in results} == set(patients)
    traced: dict[str, set[tuple[str, str]]] = {}
    for fingerprint, module, patient in results:
        messages: set[tuple[str, str]] = set()
        problems: list[str] = []
        tree = provenance.tree(fingerprint)
        if not tree.get("inputs"):
            # A refresh pass scores every twin: a SOFA organ without any of its readings
            # read nothing, so it knows nothing and traces to nothing.
            assert all(v is None for v in tree["outputs"].values()), (module, patient)
            continue
        _walk(tree, messages, problems)
        assert problems == [], (module, patient, problems)
        assert messages, f"{module} of {patient} traces to no message"
        if module == "news2":
            traced[patient] = messages
    assert traced["ward-http"] == {("api", "ward-1")}
    assert traced["ward-fhir"] == {("fhir", "ward-ward-fhir")}
    assert traced["ward-hl7"] == {("mllp", f"LAB|{control}")}
    assert traced["ward-mixed"] == {
        ("api", "ward-1"),
        ("fhir", "ward-ward-mixed"),
        ("mllp", f"LAB|{mixed_control}"),
    }
