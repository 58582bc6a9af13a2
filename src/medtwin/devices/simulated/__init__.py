"""Simulated devices: a virtual ward of patients with bedside monitors."""

from medtwin.devices.simulated.ward import (
    CODES,
    UNITS,
    PatientState,
    Trend,
    VirtualWard,
    WardConfig,
)

__all__ = ["CODES", "UNITS", "PatientState", "Trend", "VirtualWard", "WardConfig"]
