"""Validation of resources against the FHIR R4 models of ``fhir.resources`` (R4B package).

The models check structure, cardinality, primitive formats and choice types; a
few required codes the models leave open (Observation.status, Patient.gender,
...) are checked here. Errors come back as :class:`Issue` with the element path
(``Bundle.entry[3].resource.valueQuantity.value``).
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from pydantic import ValidationError

from medtwin.devices.fhir.errors import Issue

__all__ = ["ID_PATTERN", "code_issues", "model_class", "path_of", "validate_resource"]

ID_PATTERN = re.compile(r"[A-Za-z0-9\-.]{1,64}")

# Required codes the models accept as any string (value sets of required binding).
_CODES: dict[str, dict[str, frozenset[str]]] = {
    "Observation": {
        "status": frozenset(
            {
                "registered",
                "preliminary",
                "final",
                "amended",
                "corrected",
                "cancelled",
                "entered-in-error",
                "unknown",
            }
        )
    },
    "Patient": {"gender": frozenset({"male", "female", "other", "unknown"})},
    "Encounter": {
        "status": frozenset(
            {
                "planned",
                "arrived",
                "triaged",
                "in-progress",
                "onleave",
                "finished",
                "cancelled",
                "entered-in-error",
                "unknown",
            }
        )
    },
    "MedicationAdministration": {
        "status": frozenset(
            {
                "in-progress",
                "not-done",
                "on-hold",
                "completed",
                "entered-in-error",
                "stopped",
                "unknown",
            }
        )
    },
}


@cache
def model_class(resource_type: str) -> Any | None:
    """The R4B model class of ``resource_type``, None for an unknown type."""
    from fhir.resources.R4B import get_fhir_model_class

    if not resource_type.isascii() or not resource_type.isalpha():
        return None
    try:
        return get_fhir_model_class(resource_type)
    except (ValueError, KeyError, AttributeError, ImportError):
        return None


def path_of(base: str, loc: tuple[int | str, ...]) -> str:
    """FHIRPath-like element path of a pydantic error location under ``base``."""
    parts = [base]
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif part and not part.startswith(("function-", "model-", "json-")):
            parts.append(f".{part}")
    return "".join(parts)


def validate_resource(resource: Any, base: str) -> list[Issue]:
    """Issues of ``resource`` (a parsed JSON value) at path ``base``; empty when valid."""
    if not isinstance(resource, dict):
        return [Issue("a resource must be a JSON object", base, code="structure")]
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        return [Issue("resourceType is missing", f"{base}.resourceType", code="required")]
    cls = model_class(resource_type)
    if cls is None or resource_type in ("Bundle", "Parameters"):
        return [
            Issue(
                f"unsupported resource type {resource_type[:64]!r}",
                f"{base}.resourceType",
                code="not-supported",
            )
        ]
    issues: list[Issue] = []
    try:
        cls.model_validate(resource)
    except ValidationError as exc:
        for error in exc.errors(include_url=False)[:20]:
            loc = tuple(error.get("loc", ()))
            issues.append(Issue(_message(error), path_of(base, loc), code="structure"))
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        # The models raise a few plain errors from their own validators.
        issues.append(Issue(f"invalid {resource_type}: {type(exc).__name__}", base))
    return issues + code_issues(resource, base)


def code_issues(resource: dict[str, Any], base: str) -> list[Issue]:
    """Issues of the required codes the models leave open (status, gender)."""
    issues: list[Issue] = []
    for name, allowed in _CODES.get(resource.get("resourceType", ""), {}).items():
        value = resource.get(name)
        if value is not None and (not isinstance(value, str) or value not in allowed):
            issues.append(
                Issue(
                    f"{name} must be one of {', '.join(sorted(allowed))}",
                    f"{base}.{name}",
                    code="code-invalid",
                )
            )
    return issues


def _message(error: Any) -> str:
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    # The reason may go to the quarantine table in plain text: never echo the value.
    value = error.get("input")
    if isinstance(value, str) and value and value in message:
        message = message.replace(value, "<value>")
    return message[:300]
