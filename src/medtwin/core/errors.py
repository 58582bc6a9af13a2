"""The one error hierarchy of medtwin.

::

    MedtwinError
    ├── ConfigurationError     settings that are missing, invalid or unsafe
    ├── InputError             bad input; carries the location of the fault
    ├── NotFoundError          a patient, twin or resource that does not exist (or may not be seen)
    ├── ConflictError          same (source, id) sent again with different content
    └── StoreError             the store failed (connection, migration, I/O)

Third-party errors are translated at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations


class MedtwinError(Exception):
    """Base of every error medtwin raises on purpose."""


class ConfigurationError(MedtwinError):
    """Settings are missing, invalid or unsafe."""


class InputError(MedtwinError):
    """Input that medtwin refuses, with where the fault is.

    ``location`` names the fault: a JSON path (``observations[3].value``), an HL7
    segment and field (``OBX[2]-5``) or a file line (``obs.jsonl:17``).
    """

    def __init__(self, reason: str, location: str = "") -> None:
        super().__init__(f"{location}: {reason}" if location else reason)
        self.reason = reason
        self.location = location


class NotFoundError(MedtwinError):
    """The thing asked for does not exist, or the caller may not see it."""


class ConflictError(MedtwinError):
    """An item reuses a (source, id) that was stored with different content."""


class StoreError(MedtwinError):
    """The store could not do what was asked (connection, migration, I/O)."""
