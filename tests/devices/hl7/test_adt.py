"""ADT demographics into the vault and PV1 visits as FHIR Encounters."""

from __future__ import annotations

import logging
from datetime import date
from pathlib import Path

import pytest

from medtwin.data.crypto import BlindIndex, DataKeys, Keyring
from medtwin.data.store import SqlStore
from medtwin.data.vault import PatientVault, Privacy, decode
from medtwin.devices.fhir.repository import ResourceRepository
from medtwin.devices.hl7 import HL7Processor
from medtwin.devices.hl7.adt import identifier_kind
from medtwin.devices.hl7.encounter import encounter_id
from medtwin.devices.hl7.oru import patient_id
from tests.devices.hl7.conftest import HL7_DIR, make_processor
from tests.devices.hl7.helpers import read_ack

PRIVACY_KEYS = "k1:" + "A" * 43 + "="


def _privacy() -> Privacy:
    keyring = Keyring.from_spec(PRIVACY_KEYS)
    return Privacy(keyring, DataKeys(keyring), BlindIndex(b"b" * 32), b"p" * 32)


@pytest.fixture
def privacy() -> Privacy:
    return _privacy()


@pytest.fixture
def adt_processor(store: SqlStore, privacy: Privacy) -> HL7Processor:
    return make_processor(store, privacy=privacy)


def _message(event: str, control: str, pv1: str, pid: str | None = None) -> str:
    pid = pid or (
        "PID|1||MRN-77^^^HOSP^MR~123-45-6789^^^USSSA^SS~X9^^^HOSP^ZZ||"
        "DOE^JANE^Q~SMITH^JANE||19800214|F|||"
        "12&Elm Street^Apt 4^Springfield^IL^62704^USA~^^Shelbyville^IL||"
        "^PRN^PH^jane@example.org^1^217^5550100~(217)555-0199|^WPN^PH^^^217^5550142^12"
    )
    return "\r".join(
        [
            f"MSH|^~\\&|ADT|HOSP|MEDTWIN|WARD|20300101120000+0000||ADT^{event}|{control}|P|2.5.1",
            f"EVN|{event}|20300101120000+0000",
            pid,
            pv1,
        ]
    )


def _pv1(bed: str, *, discharge: str = "") -> str:
    fields = ["PV1", "1", "I", bed] + [""] * 15 + ["V-1001"] + [""] * 25
    fields[44] = "20300101110000+0000"
    if discharge:
        fields.append(discharge)
    return "|".join(fields)


def test_identifier_kinds() -> None:
    assert identifier_kind("MR") == "mrn"
    assert identifier_kind("ss") == "ssn"
    assert identifier_kind("PPN") == "passport"
    assert identifier_kind("DL") == "drivers-license"
    assert identifier_kind("MC") == "insurance"
    assert identifier_kind("XYZ") == "other"
    assert identifier_kind("") == "other"


def test_a01_demographics_into_the_vault_and_nothing_personal_logged(
    adt_processor: HL7Processor,
    store: SqlStore,
    privacy: Privacy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    outcome = adt_processor.handle(_message("A01", "C1", _pv1("ICU^12^B^HOSP")))
    assert outcome.code == "AA", outcome
    vault = PatientVault(store, privacy)
    found = vault.get("MRN-77")
    assert found is not None
    assert found.names[0].family == "DOE"
    assert found.names[0].given == ["JANE", "Q"]
    assert found.birth_date == date(1980, 2, 14)
    assert found.sex == "female"
    assert {(i.kind, i.value) for i in found.identifiers} == {
        ("mrn", "MRN-77"),
        ("ssn", "123-45-6789"),
        ("other", "X9"),
    }
    # PID-11 (XAD) as one line per address, PID-13/14 (XTN) numbers and e-mail.
    assert found.address == [
        "12 Elm Street, Apt 4, Springfield, IL 62704, USA",
        "Shelbyville, IL",
    ]
    assert found.telecom == [
        "1 217 5550100",
        "jane@example.org",
        "(217)555-0199",
        "217 5550142 ext. 12",
    ]
    # Blind-indexed as the vault does: found by identifier, name and birth year.
    assert vault.find(identifier=("ssn", "123-45-6789")) == {"MRN-77"}
    assert vault.find(name="jane doe", birth_year=1980) == {"MRN-77"}
    # Sealed at rest: the plaintext is not in the database. The column holds base64
    # ciphertext, where a short plaintext could turn up by chance: compare the bytes.
    with store.reading() as conn:
        raw = conn.exec_driver_sql("SELECT demographics FROM patients").scalar_one()
    sealed = decode(str(raw))
    for personal in (b"DOE", b"6789", b"Elm Street", b"5550100", b"jane@example.org"):
        assert personal not in sealed
    # Nothing personal in the logs.
    text = "\n".join(r.getMessage() for r in caplog.records)
    for personal in (
        "DOE", "JANE", "SMITH", "1980", "6789", "MRN-77", "V-1001", "ICU", "Elm", "5550100",
        "example.org",
    ):  # fmt: skip
        assert personal not in text


def test_reference_a01_demographics(
    adt_processor: HL7Processor, store: SqlStore, privacy: Privacy, hl7_files: list[Path]
) -> None:
    raw = (HL7_DIR / "ADT-A01-01.hl7").read_bytes()
    outcome = adt_processor.handle(raw)
    assert outcome.code in ("AA", "AE"), outcome
    patient = patient_id("PATID1234")
    assert patient is not None
    found = PatientVault(store, privacy).get(patient)
    assert found is not None
    assert found.names[0].family == "EVERYMAN"
    assert found.birth_date == date(1988, 8, 18)
    assert found.sex == "male"
    kinds = {(i.kind, i.value) for i in found.identifiers}
    assert ("mrn", "PATID1234") in kinds
    assert ("ssn", "123456789") in kinds
    # PID-11 "1000&Hospital Lane^Ste. 123^Ann Arbor ^MI^99999^USA^M^..."
    assert found.address == ["1000 Hospital Lane, Ste. 123, Ann Arbor, MI 99999, USA"]
    # PID-13 "78788788^^CP^5555^...~12121212^^CP", PID-14 "7777^^CP~1111^^TDD"
    assert found.telecom == ["78788788", "5555", "12121212", "7777", "1111"]


def test_a08_updates_and_keeps_what_it_leaves_out(
    adt_processor: HL7Processor, store: SqlStore, privacy: Privacy
) -> None:
    adt_processor.handle(_message("A01", "C1", _pv1("ICU^12^B^HOSP")))
    pid = "PID|1||MRN-77^^^HOSP^MR||DOE^JANET||19800215"
    assert adt_processor.handle(_message("A08", "C2", _pv1("ICU^12^B^HOSP"), pid)).code == "AA"
    found = PatientVault(store, privacy).get("MRN-77")
    assert found is not None
    assert found.names[0].given == ["JANET"]
    assert found.birth_date == date(1980, 2, 15)
    assert found.sex == "female"  # not in the A08: kept
    assert ("ssn", "123-45-6789") in {(i.kind, i.value) for i in found.identifiers}
    assert found.address[0].startswith("12 Elm Street")  # kept too
    assert "jane@example.org" in found.telecom


def _encounter(store: SqlStore, privacy: Privacy) -> tuple[int, dict[str, object]]:
    repository = ResourceRepository(store, privacy.keyring, privacy.blind_index)
    stored = repository.read("Encounter", encounter_id("ADT", "V-1001"))
    assert stored is not None
    assert stored.patient_id == "MRN-77"
    return stored.version, stored.resource


def test_a40_merge_moves_the_encounter_to_the_surviving_patient(
    adt_processor: HL7Processor, store: SqlStore, privacy: Privacy
) -> None:
    assert adt_processor.handle(_message("A01", "C1", _pv1("ICU^12^B^HOSP"))).code == "AA"
    merge = "\r".join(
        [
            "MSH|^~\\&|ADT|HOSP|MEDTWIN|WARD|20300102120000+0000||ADT^A40|C9|P|2.5.1",
            "EVN|A40|20300102120000+0000",
            "PID|1||MRN-88^^^HOSP^MR||DOE^JANE||19800214|F",
            "MRG|MRN-77^^^HOSP^MR",
        ]
    )
    assert adt_processor.handle(merge).code == "AA"
    repository = ResourceRepository(store, privacy.keyring, privacy.blind_index)
    stored = repository.read("Encounter", encounter_id("ADT", "V-1001"))
    assert stored is not None
    assert (stored.version, stored.patient_id) == (2, "MRN-88")
    assert stored.resource["subject"] == {"reference": "Patient/MRN-88"}
    history = repository.history("Encounter", encounter_id("ADT", "V-1001"))
    assert [v.resource["subject"]["reference"] for v in history] == [
        "Patient/MRN-88",
        "Patient/MRN-77",
    ]


def test_encounter_admit_transfer_discharge(
    adt_processor: HL7Processor, store: SqlStore, privacy: Privacy
) -> None:
    assert adt_processor.handle(_message("A01", "C1", _pv1("ICU^12^B^HOSP"))).code == "AA"
    version, resource = _encounter(store, privacy)
    assert version == 1
    assert resource["status"] == "in-progress"
    assert resource["subject"] == {"reference": "Patient/MRN-77"}
    assert resource["identifier"] == [{"system": "urn:medtwin:hl7:ADT:visit", "value": "V-1001"}]
    assert resource["class"] == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
        "code": "IMP",
        "display": "inpatient encounter",
    }
    assert resource["period"] == {"start": "2030-01-01T11:00:00+00:00"}
    assert resource["location"] == [{"location": {"display": "ICU^12^B^HOSP"}, "status": "active"}]

    assert adt_processor.handle(_message("A02", "C2", _pv1("WARD4^3^A^HOSP"))).code == "AA"
    version, resource = _encounter(store, privacy)
    assert version == 2
    assert resource["status"] == "in-progress"
    assert resource["location"] == [
        {"location": {"display": "ICU^12^B^HOSP"}, "status": "completed"},
        {"location": {"display": "WARD4^3^A^HOSP"}, "status": "active"},
    ]

    discharge = _pv1("WARD4^3^A^HOSP", discharge="20300105093000+0000")
    assert adt_processor.handle(_message("A03", "C3", discharge)).code == "AA"
    version, resource = _encounter(store, privacy)
    assert version == 3
    assert resource["status"] == "finished"
    assert resource["period"] == {
        "start": "2030-01-01T11:00:00+00:00",
        "end": "2030-01-05T09:30:00+00:00",
    }
    locations = resource["location"]
    assert isinstance(locations, list)
    assert all(loc["status"] == "completed" for loc in locations)
    # Searchable by subject.
    repository = ResourceRepository(store, privacy.keyring, privacy.blind_index)
    with store.reading() as conn:
        ids = repository.find(conn, "Encounter", [("subject", ["Patient/MRN-77"])])
    assert ids == {encounter_id("ADT", "V-1001")}


def test_resend_is_idempotent(
    adt_processor: HL7Processor, store: SqlStore, privacy: Privacy
) -> None:
    message = _message("A01", "C1", _pv1("ICU^12^B^HOSP"))
    assert adt_processor.handle(message).code == "AA"
    before = PatientVault(store, privacy).get("MRN-77")
    again = adt_processor.handle(message)
    assert again.duplicate_message
    assert again.code == "AA"
    assert again.ack is not None
    assert read_ack(again.ack).code == "AA"
    assert PatientVault(store, privacy).get("MRN-77") == before
    version, _ = _encounter(store, privacy)
    assert version == 1
    # The same content under a new control id: no new encounter version either.
    assert adt_processor.handle(_message("A01", "C9", _pv1("ICU^12^B^HOSP"))).code == "AA"
    assert _encounter(store, privacy)[0] == 1
    with store.reading() as conn:
        count = conn.exec_driver_sql("SELECT count(*) FROM blind_index").scalar_one()
    assert count > 0
    adt_processor.handle(message)
    with store.reading() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM blind_index").scalar_one() == count


def test_without_privacy_keys_nothing_personal_is_kept(
    processor: HL7Processor, store: SqlStore, privacy: Privacy
) -> None:
    assert processor.handle(_message("A01", "C1", _pv1("ICU^12^B^HOSP"))).code == "AA"
    assert store.patient("MRN-77") is not None
    assert PatientVault(store, privacy).get("MRN-77") is None


def test_reference_adt_messages_with_privacy(
    adt_processor: HL7Processor, hl7_files: list[Path]
) -> None:
    for path in hl7_files:
        if path.name.startswith("ADT"):
            outcome = adt_processor.handle(path.read_bytes())
            reasons = {f.reason for f in outcome.faults}
            assert "internal error" not in reasons, path.name
