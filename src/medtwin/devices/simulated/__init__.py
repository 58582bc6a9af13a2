"""Simulated devices: a virtual ward of patients with bedside monitors, and patients with
type 1 diabetes with a CGM and an insulin pump."""

from medtwin.devices.simulated.diabetes import DiabetesConfig, DiabetesWard
from medtwin.devices.simulated.ward import (
    CODES,
    UNITS,
    PatientState,
    Trend,
    VirtualWard,
    WardConfig,
)

__all__ = [
    "CODES",
    "UNITS",
    "DiabetesConfig",
    "DiabetesWard",
    "PatientState",
    "Trend",
    "VirtualWard",
    "WardConfig",
]
