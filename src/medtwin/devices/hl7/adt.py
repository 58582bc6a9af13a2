"""ADT: admit (A01), transfer (A02), discharge (A03), register (A04), update (A08), merge (A40).

What is applied today: the patient of PID-3 is registered when medtwin does not
know it yet (same id rule as ORU, see :func:`medtwin.devices.hl7.oru.patient_id`).
Demographics, encounters and locations (PV1) have no table in the store yet, so
they are not kept. An A40 merge moves everything recorded under the prior
patient (MRG-1) to the surviving one (PID-3) and folds the prior twin into the
survivor's (``SqlStore.merge_patients``, ``TwinRuntime.merge``); a merge whose
prior patient is unknown is quarantined (``MRG[n]-1``) and answered AE.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from medtwin.devices.hl7.ack import ErrorCode, Fault
from medtwin.devices.hl7.oru import patient_id
from medtwin.devices.hl7.parse import ParsedMessage, component

__all__ = ["ADT_EVENTS", "AdtContent", "Merge", "read_adt"]

ADT_EVENTS = frozenset({"A01", "A02", "A03", "A04", "A08", "A40"})


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
    faults: list[tuple[Fault, str]] = field(default_factory=list)


def read_adt(parsed: ParsedMessage) -> AdtContent:
    """Read the PID (and, for A40, MRG) segments of an ADT message."""
    content = AdtContent()
    msh_text = parsed.texts[0]
    current: str | None = None
    pid_text = ""
    pids = merges = 0
    for segment in parsed.segments():
        name, text = segment.name, segment.text
        if name == "PID":
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
            elif current not in content.patients:
                content.patients.append(current)
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
