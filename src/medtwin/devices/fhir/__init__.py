"""FHIR R4 adapter: transaction and batch Bundles in (create, update, conditional
update, delete); read, history and search out.

Resources are validated against the FHIR R4 models of ``fhir.resources``,
stored raw and versioned (sealed with the keyring), indexed for search (personal
values as blind-index digests) and mapped into medtwin's records: Patient into
the patient vault, Observation (components split) into the twins through the
:class:`~medtwin.twins.ingest.Ingestor`, MedicationAdministration into
interventions. See :mod:`medtwin.devices.fhir.service` for the semantics.

Errors (each carries OperationOutcome ``issues`` and an HTTP ``status``)::

    MedtwinError
    └── FhirError                       (status, issues, outcome())
        ├── InvalidResourceError        400  also an InputError
        ├── UnprocessableError          422  also an InputError
        ├── PreconditionFailedError     412
        ├── ResourceGoneError           410  (read of a deleted resource)
        ├── MethodNotAllowedError       405  (DELETE of a Patient)
        ├── TooLargeError               413  also an InputError
        └── ResourceNotFoundError       404  also a NotFoundError

Errors of ``fhir.resources``/pydantic and of the JSON parser are translated at
this boundary; the store's failures stay :class:`~medtwin.core.errors.StoreError`.
"""

from __future__ import annotations

from medtwin.devices.fhir.capability import capability_statement
from medtwin.devices.fhir.errors import (
    FhirError,
    InvalidResourceError,
    Issue,
    MethodNotAllowedError,
    PreconditionFailedError,
    ResourceGoneError,
    ResourceNotFoundError,
    TooLargeError,
    UnprocessableError,
    operation_outcome,
)
from medtwin.devices.fhir.repository import StoredResource
from medtwin.devices.fhir.service import BundleReport, BundleResult, FhirService, parse_json

__all__ = [
    "BundleReport",
    "BundleResult",
    "FhirError",
    "FhirService",
    "InvalidResourceError",
    "Issue",
    "MethodNotAllowedError",
    "PreconditionFailedError",
    "ResourceGoneError",
    "ResourceNotFoundError",
    "StoredResource",
    "TooLargeError",
    "UnprocessableError",
    "capability_statement",
    "operation_outcome",
    "parse_json",
]
