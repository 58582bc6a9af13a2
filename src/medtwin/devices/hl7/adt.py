"""ADT: admit (A01), transfer (A02), discharge (A03), register (A04), update (A08), merge (A40).

What is applied: the patient of PID-3 is registered when medtwin does not know it
yet (same id rule as ORU, see :func:`medtwin.devices.hl7.oru.patient_id`). The
demographics of A01/A04/A08/A28/A31 (PID-3 identifiers, PID-5 names, PID-7 birth
date, PID-8 sex, PID-19 SSN, PID-20 driver's licence) go into the patient vault
(:class:`medtwin.data.vault.PatientVault`, encrypted, blind-indexed). The visit of
PV1 (class PV1-2, bed PV1-3, visit number PV1-19, admit/discharge PV1-44/45) is
kept as a FHIR Encounter (:mod:`medtwin.devices.hl7.encounter`). An A40 merge
moves everything recorded under the prior patient (MRG-1) to the surviving one
(PID-3) and folds the prior twin into the survivor's (``SqlStore.merge_patients``,
``TwinRuntime.merge``); a merge whose prior patient is unknown is quarantined
(``MRG[n]-1``) and answered AE.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date

from pydantic import ValidationError

from medtwin.data.vault import Demographics, HumanName, Identifier
from medtwin.devices.hl7.ack import ErrorCode, Fault
from medtwin.devices.hl7.oru import patient_id
from medtwin.devices.hl7.parse import ParsedMessage, Segment, component, repetitions

__all__ = [
    "ADT_EVENTS",
    "DEMOGRAPHIC_EVENTS",
    "AdtContent",
    "Merge",
    "Person",
    "Visit",
    "identifier_kind",
    "read_adt",
    "read_demographics",
]

ADT_EVENTS = frozenset({"A01", "A02", "A03", "A04", "A08", "A28", "A31", "A40"})
# Events whose PID sets the patient's demographics in the vault.
DEMOGRAPHIC_EVENTS = frozenset({"A01", "A04", "A08", "A28", "A31"})

# PID-3 identifier type code (HL7 table 0203) -> the vault's Identifier.kind.
_IDENTIFIER_KINDS = {
    "MR": "mrn",
    "MRN": "mrn",
    "SS": "ssn",
    "SSN": "ssn",
    "PPN": "passport",
    "DL": "drivers-license",
    "HC": "insurance",
    "MA": "insurance",
    "MC": "insurance",
    "MB": "insurance",
    "SN": "insurance",
    "NH": "insurance",
}
# PID-8 administrative sex (HL7 table 0001) -> the vault's sex.
_SEX = {"F": "female", "M": "male", "O": "other", "A": "other", "U": "unknown", "N": "unknown"}
_BIRTH = re.compile(r"(\d{4})(\d{2})(\d{2})")
_MAX_IDENTIFIERS = 20
_MAX_NAMES = 10
_MAX_CONTACTS = 10  # addresses, and telecom entries (the vault's limits)
_MAX_TEXT = 200


def identifier_kind(type_code: str) -> str:
    """The vault's identifier kind of a PID-3 identifier type code; unknown ones: other."""
    return _IDENTIFIER_KINDS.get(type_code.strip().upper(), "other")


@dataclass(frozen=True, slots=True)
class Person:
    """The demographics a PID carries for one patient (personal data: never log it)."""

    patient: str
    demographics: Demographics


@dataclass(frozen=True, slots=True)
class Visit:
    """What a PV1 says about the patient's encounter (times as raw HL7 TS)."""

    patient: str
    visit_number: str  # PV1-19.1
    patient_class: str  # PV1-2.1
    location: tuple[str, str, str, str]  # PV1-3: point of care, room, bed, facility
    admitted: str  # PV1-44
    discharged: str  # PV1-45
    event_time: str  # EVN-2, else MSH-7


@dataclass(frozen=True, slots=True)
class Merge:
    """An A40 pair: ``prior`` (MRG-1) is to be merged into ``surviving`` (PID-3)."""

    index: int  # MRG occurrence, 1-based
    surviving: str
    prior: str
    payload: str


@dataclass
class AdtContent:
    """Patients named by an ADT message, merges asked for, and faults."""

    patients: list[str] = field(default_factory=list)
    merges: list[Merge] = field(default_factory=list)
    people: list[Person] = field(default_factory=list)
    visits: list[Visit] = field(default_factory=list)
    faults: list[tuple[Fault, str]] = field(default_factory=list)


def read_adt(parsed: ParsedMessage) -> AdtContent:
    """Read the PID (and, for A40, MRG) segments of an ADT message."""
    content = AdtContent()
    msh_text = parsed.texts[0]
    current: str | None = None
    pid_text = ""
    pids = merges = 0
    segments = parsed.segments()
    event_time = component(segments[0], 7)
    for segment in segments:
        name, text = segment.name, segment.text
        if name == "EVN" and component(segment, 2):
            event_time = component(segment, 2)
        elif name == "PV1" and current is not None:
            content.visits.append(
                Visit(
                    current,
                    component(segment, 19).strip(),
                    component(segment, 2).strip(),
                    (
                        component(segment, 3, 1).strip(),
                        component(segment, 3, 2).strip(),
                        component(segment, 3, 3).strip(),
                        component(segment, 3, 4).strip(),
                    ),
                    component(segment, 44).strip(),
                    component(segment, 45).strip(),
                    event_time,
                )
            )
        elif name == "PID":
            pids += 1
            current, pid_text = patient_id(component(segment, 3, 1)), text
            if current is None:
                content.faults.append(
                    (
                        Fault(
                            f"PID[{pids}]-3",
                            "no patient identifier",
                            ErrorCode.REQUIRED_FIELD_MISSING,
                        ),
                        "\r".join((msh_text, text)),
                    )
                )
            else:
                if current not in content.patients:
                    content.patients.append(current)
                if parsed.header.trigger_event in DEMOGRAPHIC_EVENTS:
                    content.people.append(Person(current, read_demographics(segment)))
        elif name == "MRG" and parsed.header.trigger_event == "A40":
            merges += 1
            prior = patient_id(component(segment, 1, 1))
            payload = "\r".join(t for t in (msh_text, pid_text, text) if t)
            if prior is None or current is None:
                content.faults.append(
                    (
                        Fault(
                            f"MRG[{merges}]-1",
                            "merge needs PID-3 and MRG-1",
                            ErrorCode.REQUIRED_FIELD_MISSING,
                        ),
                        payload,
                    )
                )
            else:
                content.merges.append(Merge(merges, current, prior, payload))
    if pids == 0:
        content.faults.append(
            (
                Fault("PID", "no PID segment", ErrorCode.SEGMENT_SEQUENCE),
                msh_text,
            )
        )
    elif parsed.header.trigger_event == "A40" and merges == 0 and not content.faults:
        content.faults.append(
            (Fault("MRG", "A40 without an MRG segment", ErrorCode.SEGMENT_SEQUENCE), msh_text)
        )
    return content


def read_demographics(pid: Segment) -> Demographics:
    """The demographics of a PID segment; parts that do not fit the vault's model are left out."""
    identifiers: list[Identifier] = []
    seen: set[tuple[str, str]] = set()

    def add(kind: str, value: str) -> None:
        value = value.strip()
        if not value or (kind, value) in seen or len(identifiers) >= _MAX_IDENTIFIERS:
            return
        try:
            identifiers.append(Identifier.model_validate({"kind": kind, "value": value}))
        except ValidationError:  # too long: left out (its text is never logged)
            return
        seen.add((kind, value))

    for rep in range(1, repetitions(pid, 3) + 1):
        add(identifier_kind(component(pid, 3, 5, rep)), component(pid, 3, 1, rep))
    add("ssn", component(pid, 19))
    add("drivers-license", component(pid, 20))
    names: list[HumanName] = []
    for rep in range(1, repetitions(pid, 5) + 1):
        family = component(pid, 5, 1, rep).strip()[:200]
        given = [g for g in (component(pid, 5, n, rep).strip() for n in (2, 3)) if g]
        if (family or given) and len(names) < _MAX_NAMES:
            names.append(HumanName(family=family, given=[g[:200] for g in given]))
    birth_date: date | None = None
    match = _BIRTH.match(component(pid, 7).strip())
    if match is not None:
        try:
            birth_date = date(int(match[1]), int(match[2]), int(match[3]))
        except ValueError:
            birth_date = None
    sex = _SEX.get(component(pid, 8).strip().upper())
    address = [a for rep in range(1, repetitions(pid, 11) + 1) if (a := _address(pid, rep))]
    telecom: list[str] = []
    for phones in (13, 14):  # home, then business
        for rep in range(1, repetitions(pid, phones) + 1):
            telecom += [t for t in _telecom(pid, phones, rep) if t not in telecom]
    return Demographics.model_validate(
        {
            "names": names,
            "identifiers": identifiers,
            "birth_date": birth_date,
            "sex": sex,
            "address": address[:_MAX_CONTACTS],
            "telecom": telecom[:_MAX_CONTACTS],
        }
    )


def _address(pid: Segment, rep: int) -> str:
    """One line of a PID-11 (XAD) repetition: street, other, city, state and zip, country."""

    def part(number: int, sub: int = 1) -> str:
        return component(pid, 11, number, rep, sub).strip()

    street = " ".join(p for p in (part(1, 1), part(1, 2), part(1, 3)) if p)
    region = " ".join(p for p in (part(4), part(5)) if p)
    return ", ".join(p for p in (street, part(2), part(3), region, part(6)) if p)[:_MAX_TEXT]


def _telecom(pid: Segment, phones: int, rep: int) -> list[str]:
    """The number and the address (e-mail) of an XTN repetition of PID-13 or PID-14.

    XTN-1 is the number as sent before v2.5 (still the common form); otherwise the
    number is country, area and local number (XTN-5..7), with its extension (XTN-8).
    """

    def part(number: int) -> str:
        return component(pid, phones, number, rep).strip()

    number = part(1)
    if not number:
        number = " ".join(p for p in (part(5), part(6), part(7)) if p)
        if number and part(8):
            number += f" ext. {part(8)}"
    return [t[:_MAX_TEXT] for t in (number, part(4)) if t]
