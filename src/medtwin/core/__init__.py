"""Vocabulary every layer shares: records, errors, settings and the clock."""

from medtwin.core.clock import AcceleratedClock, Clock, FixedClock, SystemClock
from medtwin.core.errors import (
    ConfigurationError,
    ConflictError,
    InputError,
    MedtwinError,
    NotFoundError,
    StoreError,
)
from medtwin.core.records import Observation, Patient, QualityFlag

__all__ = [
    "AcceleratedClock",
    "Clock",
    "ConfigurationError",
    "ConflictError",
    "FixedClock",
    "InputError",
    "MedtwinError",
    "NotFoundError",
    "Observation",
    "Patient",
    "QualityFlag",
    "StoreError",
    "SystemClock",
]
