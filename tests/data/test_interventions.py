"""Intervention items: kinds, units, times and their faults."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medtwin.core.clock import to_us
from medtwin.core.records import Intervention, InterventionKind
from medtwin.data.interventions import validate_interventions
from medtwin.data.validation import Rejection

NOW_US = to_us(datetime(2026, 1, 1, 12, tzinfo=UTC))


def item(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "b-1",
        "source": "pump-3",
        "patient": "p1",
        "kind": "insulin-bolus",
        "amount": 4.5,
        "unit": "[IU]",
        "time": "2026-01-01T07:00:00Z",
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def one(entry: Any) -> Intervention | Rejection:
    result = validate_interventions([entry], now_us=NOW_US, max_future_us=300_000_000)
    return result.accepted[0][1] if result.accepted else result.rejected[0]


def test_each_kind_in_its_canonical_unit() -> None:
    bolus = one(item())
    assert isinstance(bolus, Intervention)
    assert (bolus.kind, bolus.amount, bolus.unit) == (InterventionKind.INSULIN_BOLUS, 4.5, "[IU]")
    meal = one(item(kind="meal", amount=45, unit="g"))
    assert isinstance(meal, Intervention)
    assert meal.amount == 45.0
    dose = one(item(kind="drug-dose", amount=1, unit="g", drug="vancomycin",
                    route="iv-infusion", duration_s=3600))  # fmt: skip
    assert isinstance(dose, Intervention)
    assert (dose.amount, dose.unit, dose.duration_s) == (1000.0, "mg", 3600.0)
    fluids = one(item(kind="fluids", amount=0.5, unit="L"))
    assert isinstance(fluids, Intervention)
    assert (fluids.amount, fluids.unit) == (500.0, "mL")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"kind": "surgery"}, "kind"),
        ({"unit": "mg"}, "unit"),
        ({"amount": -1}, "amount"),
        ({"amount": float("nan")}, "amount"),
        ({"amount": "4"}, "amount"),
        ({"time": "yesterday"}, "time"),
        ({"time": "2027-01-01T00:00:00Z"}, "time"),
        ({"duration_s": -5}, "duration_s"),
        ({"route": "teleport"}, "route"),
        ({"kind": "drug-dose", "unit": "mg"}, "drug"),
        ({"patient": "no spaces"}, "patient"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_faults_name_the_field(change: dict[str, Any], field: str) -> None:
    fault = one(item(**change))
    assert isinstance(fault, Rejection)
    assert fault.field == field
    assert fault.location("interventions") == f"interventions[0].{field}"


@given(st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=5),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c,
                                                                        max_size=8)))  # fmt: skip
def test_arbitrary_json_is_accepted_or_rejected_never_raises(entry: Any) -> None:
    assert isinstance(one(entry), Intervention | Rejection)
