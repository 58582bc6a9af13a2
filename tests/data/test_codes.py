"""The code registry: lookups, unit conversions and limits of every registered code."""

from __future__ import annotations

import math

import pytest

from medtwin.core.records import LOINC
from medtwin.data.codes import (
    DEFAULT_REGISTRY,
    LABORATORY_AND_SCORES,
    LOCAL,
    VITAL_SIGNS,
    CodeRegistry,
    CodeSpec,
)

EXPECTED_CODES = {
    "9279-1": "/min",  # respiratory rate
    "59408-5": "%",  # SpO2
    "8480-6": "mm[Hg]",  # systolic BP
    "8462-4": "mm[Hg]",  # diastolic BP
    "8867-4": "/min",  # heart rate
    "8310-5": "Cel",  # body temperature
    "80288-4": "",  # ACVPU
    "3150-0": "%",  # FiO2
    "2339-0": "mg/dL",  # glucose
    "2703-7": "mm[Hg]",  # PaO2
    "777-3": "10*3/uL",  # platelets
    "1975-2": "mg/dL",  # bilirubin
    "2160-0": "mg/dL",  # creatinine
    "2524-7": "mmol/L",  # lactate
    "6690-2": "10*3/uL",  # white cells
    "29463-7": "kg",  # body weight
    "20578-1": "mg/L",  # vancomycin
    "4092-3": "mg/L",  # vancomycin trough
    "4090-7": "mg/L",  # vancomycin peak
    "8478-0": "mm[Hg]",  # mean arterial pressure
    "9269-2": "{score}",  # Glasgow coma score
    "9192-6": "mL/(24.h)",  # urine output
}
# Local codes (system LOCAL): SOFA inputs LOINC has no observation code for.
EXPECTED_LOCAL = {
    "medtwin-respiratory-support": "1",
    "medtwin-dopamine-rate": "ug/kg/min",
    "medtwin-dobutamine-rate": "ug/kg/min",
    "medtwin-epinephrine-rate": "ug/kg/min",
    "medtwin-norepinephrine-rate": "ug/kg/min",
}

# (code, unit, value, canonical value): every accepted unit of every code.
CONVERSIONS = [
    ("9279-1", "/min", 18, 18.0),
    ("9279-1", "{breaths}/min", 18, 18.0),
    ("59408-5", "%", 96, 96.0),
    ("8480-6", "mm[Hg]", 120, 120.0),
    ("8480-6", "kPa", 16, 120.009869232),
    ("8462-4", "mm[Hg]", 80, 80.0),
    ("8462-4", "kPa", 10, 75.00616827),
    ("8867-4", "/min", 72, 72.0),
    ("8867-4", "{beats}/min", 72, 72.0),
    ("8310-5", "Cel", 37, 37.0),
    ("8310-5", "[degF]", 98.6, 37.0),
    ("8310-5", "[degF]", 32, 0.0),
    ("8310-5", "[degF]", 212, 100.0),
    ("8310-5", "[degF]", -40, -40.0),
    ("8310-5", "K", 310.15, 37.0),
    ("8310-5", "K", 273.15, 0.0),
    ("80288-4", "", 1, 1.0),
    ("80288-4", "1", 1, 1.0),
    ("80288-4", "{score}", 1, 1.0),
    ("3150-0", "%", 21, 21.0),
    ("2339-0", "mg/dL", 99, 99.0),
    ("2339-0", "mmol/L", 5.5, 99.088),
    ("2339-0", "mmol/L", 10, 180.16),
    ("2703-7", "mm[Hg]", 90, 90.0),
    ("2703-7", "kPa", 12, 90.007401924),
    ("777-3", "10*3/uL", 250, 250.0),
    ("777-3", "10*9/L", 250, 250.0),
    ("777-3", "10*3/mm3", 250, 250.0),
    ("1975-2", "mg/dL", 1.2, 1.2),
    ("1975-2", "umol/L", 34.2, 2.0),
    ("2160-0", "mg/dL", 1.0, 1.0),
    ("2160-0", "umol/L", 88.4, 1.0),
    ("2524-7", "mmol/L", 2.0, 2.0),
    ("2524-7", "mg/dL", 18.016, 2.0),
    ("6690-2", "10*3/uL", 12, 12.0),
    ("6690-2", "10*9/L", 3.5, 3.5),
    ("6690-2", "10*3/mm3", 4, 4.0),
    ("29463-7", "kg", 70, 70.0),
    ("29463-7", "g", 3500, 3.5),
    ("29463-7", "[lb_av]", 100, 45.359237),
    ("20578-1", "mg/L", 12.5, 12.5),
    ("20578-1", "ug/mL", 12.5, 12.5),
    ("4092-3", "mg/L", 10, 10.0),
    ("4092-3", "ug/mL", 15, 15.0),
    ("4090-7", "mg/L", 30, 30.0),
    ("4090-7", "ug/mL", 35, 35.0),
    ("8478-0", "mm[Hg]", 70, 70.0),
    ("8478-0", "kPa", 10, 75.00616827),
    ("9269-2", "{score}", 15, 15.0),
    ("9269-2", "1", 8, 8.0),
    ("9269-2", "", 3, 3.0),
    ("9192-6", "mL/(24.h)", 500, 500.0),
    ("9192-6", "mL/d", 500, 500.0),
    ("9192-6", "L/(24.h)", 0.4, 400.0),
    ("9192-6", "L/d", 1.2, 1200.0),
    ("medtwin-respiratory-support", "1", 1, 1.0),
    ("medtwin-respiratory-support", "", 0, 0.0),
    ("medtwin-dopamine-rate", "ug/kg/min", 5, 5.0),
    ("medtwin-dobutamine-rate", "ug/kg/min", 5, 5.0),
    ("medtwin-epinephrine-rate", "ug/kg/min", 0.1, 0.1),
    ("medtwin-norepinephrine-rate", "ug/kg/min", 0.1, 0.1),
]
ALL_SPECS = [*VITAL_SIGNS, *LABORATORY_AND_SCORES]


def test_default_registry_holds_vital_signs_laboratory_and_scores() -> None:
    assert len(DEFAULT_REGISTRY) == len(EXPECTED_CODES) + len(EXPECTED_LOCAL)
    assert {s.code: s.unit for s in DEFAULT_REGISTRY if s.system == LOINC} == EXPECTED_CODES
    assert {s.code: s.unit for s in DEFAULT_REGISTRY if s.system == LOCAL} == EXPECTED_LOCAL
    assert list(DEFAULT_REGISTRY) == ALL_SPECS


@pytest.mark.parametrize("code", sorted(EXPECTED_LOCAL))
def test_local_codes_are_found_in_their_own_system_only(code: str) -> None:
    spec = DEFAULT_REGISTRY.get(code, LOCAL)
    assert spec is not None
    assert spec.system == LOCAL
    assert DEFAULT_REGISTRY.get(code) is None


@pytest.mark.parametrize("code", sorted(EXPECTED_CODES))
def test_lookup_by_code(code: str) -> None:
    spec = DEFAULT_REGISTRY.get(code)
    assert spec is not None
    assert spec.code == code
    assert spec.system == LOINC
    assert spec.display
    assert DEFAULT_REGISTRY.get(code, LOINC) is spec
    assert code in DEFAULT_REGISTRY


def test_lookup_of_unknown_code_or_other_system() -> None:
    assert DEFAULT_REGISTRY.get("0000-0") is None
    assert DEFAULT_REGISTRY.get("") is None
    assert "0000-0" not in DEFAULT_REGISTRY
    # A registered code in another code system is not the registered code.
    assert DEFAULT_REGISTRY.get("9279-1", "http://snomed.info/sct") is None


def test_custom_registry_with_another_system() -> None:
    snomed = "http://snomed.info/sct"
    spec = CodeSpec("86290005", "Respiration rate", "/min", {"/min": (1.0, 0.0)}, system=snomed)
    registry = CodeRegistry((spec,))
    assert len(registry) == 1
    assert registry.get("86290005", snomed) is spec
    assert registry.get("86290005") is None  # default system is LOINC
    assert registry.get("9279-1") is None


def test_coded_and_numeric_specs() -> None:
    acvpu = DEFAULT_REGISTRY.get("80288-4")
    assert acvpu is not None
    assert not acvpu.numeric
    assert acvpu.values == ("A", "C", "V", "P", "U")
    for spec in DEFAULT_REGISTRY:
        if spec.code != "80288-4":
            assert spec.numeric, spec.code
            assert spec.values == ()


@pytest.mark.parametrize(("code", "unit", "value", "expected"), CONVERSIONS)
def test_each_accepted_unit_converts(code: str, unit: str, value: float, expected: float) -> None:
    spec = DEFAULT_REGISTRY.get(code, LOCAL if code in EXPECTED_LOCAL else LOINC)
    assert spec is not None
    assert spec.to_canonical(value, unit) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_conversion_table_covers_every_accepted_unit() -> None:
    covered = {(code, unit) for code, unit, _, _ in CONVERSIONS}
    every = {(spec.code, unit) for spec in DEFAULT_REGISTRY for unit in spec.units}
    assert covered == every


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda s: s.code)
def test_canonical_unit_is_accepted_as_identity(spec: CodeSpec) -> None:
    assert spec.units[spec.unit] == (1.0, 0.0)
    assert spec.to_canonical(12.5, spec.unit) == 12.5


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda s: s.code)
def test_unaccepted_unit_converts_to_none(spec: CodeSpec) -> None:
    assert spec.to_canonical(1.0, "furlong/fortnight") is None
    assert spec.to_canonical(1.0, spec.unit + " ") is None


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda s: s.code)
def test_soft_limits_lie_within_hard_limits(spec: CodeSpec) -> None:
    hard_low, hard_high = spec.hard
    soft_low, soft_high = spec.soft
    assert hard_low <= soft_low < soft_high <= hard_high
    if spec.numeric:
        assert math.isfinite(hard_low)
        assert math.isfinite(hard_high)
        assert math.isfinite(soft_low)
        assert math.isfinite(soft_high)


def test_registry_cannot_be_changed_through_lookup() -> None:
    spec = DEFAULT_REGISTRY.get("8867-4")
    assert spec is not None
    with pytest.raises(AttributeError):
        spec.unit = "Hz"  # type: ignore[misc]
