"""Reading acknowledgements in the tests."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Ack:
    """The parts of an ACK the tests look at."""

    code: str  # MSA-1
    control_id: str  # MSA-2
    text: str  # MSA-3
    errors: list[list[str]]  # ERR segments, split into fields (index n = ERR-n)

    @property
    def error_locations(self) -> list[str]:
        return [err[2] for err in self.errors if len(err) > 2]


def read_ack(text: str) -> Ack:
    segments = [s for s in text.split("\r") if s]
    assert segments[0].startswith("MSH|^~\\&|"), segments[0]
    assert "|ACK" in segments[0]
    msa = segments[1].split("|")
    assert msa[0] == "MSA"
    errors = [s.split("|") for s in segments[2:]]
    assert all(err[0] == "ERR" for err in errors)
    return Ack(msa[1], msa[2], msa[3] if len(msa) > 3 else "", errors)
