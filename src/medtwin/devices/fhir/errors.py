"""Errors of the FHIR adapter, each carrying OperationOutcome issues and an HTTP status."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from medtwin.core.errors import InputError, MedtwinError, NotFoundError

__all__ = [
    "FhirError",
    "InvalidResourceError",
    "Issue",
    "MethodNotAllowedError",
    "PreconditionFailedError",
    "ResourceGoneError",
    "ResourceNotFoundError",
    "TooLargeError",
    "UnprocessableError",
    "operation_outcome",
]


@dataclass(frozen=True, slots=True)
class Issue:
    """One OperationOutcome issue; ``expression`` is the element path (FHIRPath)."""

    diagnostics: str
    expression: str = ""
    severity: str = "error"
    code: str = "invalid"

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            out["expression"] = [self.expression]
            out["location"] = [self.expression]
        return out


def operation_outcome(issues: Sequence[Issue]) -> dict[str, Any]:
    """An OperationOutcome resource of ``issues`` (at least one issue, as FHIR requires)."""
    listed = list(issues) or [Issue("all ok", severity="information", code="informational")]
    return {"resourceType": "OperationOutcome", "issue": [i.as_json() for i in listed]}


class FhirError(MedtwinError):
    """A FHIR request refused; ``status`` is its HTTP status, ``issues`` say why and where."""

    status = 400

    def __init__(self, issues: Sequence[Issue]) -> None:
        self.issues = list(issues) or [Issue("request refused")]
        first = self.issues[0]
        super().__init__(
            f"{first.expression}: {first.diagnostics}" if first.expression else first.diagnostics
        )
        # InputError's fields, for the subclasses that are input errors.
        self.reason = first.diagnostics
        self.location = first.expression

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its issues when it crosses processes (the Bundle loader's reader).
        return (type(self), (self.issues,))


class InvalidResourceError(FhirError, InputError):
    """Not FHIR R4 JSON: unparseable, a wrong structure, or a resource the model refuses."""

    status = 400


class UnprocessableError(FhirError, InputError):
    """Valid FHIR that cannot be processed: an unresolvable reference, an impossible value."""

    status = 422


class PreconditionFailedError(FhirError):
    """A conditional create, update or reference matched more than one resource."""

    status = 412


class TooLargeError(FhirError, InputError):
    """A Bundle with too many entries or JSON nested too deep."""

    status = 413


class ResourceNotFoundError(FhirError, NotFoundError):
    """No such resource (or the caller may not see it)."""

    status = 404


class ResourceGoneError(FhirError):
    """The resource was deleted; ``patient`` is the patient it belonged to (for access checks)."""

    status = 410

    def __init__(self, issues: Sequence[Issue], patient: str | None = None) -> None:
        super().__init__(issues)
        self.patient = patient


class MethodNotAllowedError(FhirError):
    """An interaction this server refuses on the type (DELETE of a Patient)."""

    status = 405
