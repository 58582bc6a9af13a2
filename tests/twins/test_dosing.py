"""Vancomycin dosing on request: a simulated patient's doses and levels through the
ingestion path, the MAP fit and dose stored as a module result with provenance to
exactly the levels, doses and covariates used. Runs on both store backends."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from medtwin.core.clock import FixedClock, to_iso, to_us
from medtwin.core.errors import InputError
from medtwin.data.provenance import ProvenanceStore
from medtwin.data.store import SqlStore
from medtwin.data.vault import Demographics, PatientVault
from medtwin.models.assimilation.pk_map import (
    GOTI_2018_VANCOMYCIN,
    Target,
    crcl_cockcroft_gault,
    predict_levels,
)
from medtwin.models.physiology.pkpd import Dose, regimen
from medtwin.twins import EventBus, Ingestor, TwinRuntime
from medtwin.twins.dosing import MODULE, STATEMENT, DosingService
from tests.conftest import StoreFactory
from tests.devices.fhir.conftest import make_privacy

MODEL = GOTI_2018_VANCOMYCIN
START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
DOSES = regimen(Dose(0.0, 1000.0, "iv-infusion", 60.0), 720.0, 5)
LEVEL_MIN = [(120.0, "4090-7"), (715.0, "4092-3"), (2875.0, "20578-1")]
ETA = {"CL": 0.3, "V1": -0.3, "V2": 0.2}
WEIGHT_KG, CREATININE, AGE = 80.0, 1.1, 55


def _true_params() -> dict[str, float]:
    crcl = crcl_cockcroft_gault(AGE, WEIGHT_KG, CREATININE, female=False)
    typical = MODEL.typical({"weight_kg": WEIGHT_KG, "crcl_ml_min": crcl, "dialysis": 0.0})
    return {p: v * float(np.exp(ETA.get(p, 0.0))) for p, v in typical.items()}


def simulated_patient(
    patient: str, *, weight: bool = True, start: datetime = START
) -> dict[str, list[dict[str, Any]]]:
    """Observation and intervention items of a vancomycin course from ``start`` (noise-free
    levels from the true parameters), with distractors the service must leave out."""

    def _at(minutes: float) -> str:
        return to_iso(to_us(start + timedelta(minutes=minutes)))

    conc = predict_levels(MODEL, _true_params(), DOSES, [t for t, _ in LEVEL_MIN])[0]
    observations = [
        {
            "id": f"{patient}-lvl-{j}",
            "source": "lab",
            "patient": patient,
            "code": code,
            "value": round(float(c), 3),
            "unit": "ug/mL" if j == 1 else "mg/L",
            "time": _at(t),
        }
        for j, ((t, code), c) in enumerate(zip(LEVEL_MIN, conc, strict=True))
    ]
    observations += [
        # Before the first dose: not a level of this course.
        {"id": f"{patient}-lvl-pre", "source": "lab", "patient": patient, "code": "20578-1",
         "value": 0.0, "unit": "mg/L", "time": _at(-60)},
        {"id": f"{patient}-crea-old", "source": "lab", "patient": patient, "code": "2160-0",
         "value": 2.0, "unit": "mg/dL", "time": _at(-2000)},
        {"id": f"{patient}-crea", "source": "lab", "patient": patient, "code": "2160-0",
         "value": CREATININE, "unit": "mg/dL", "time": _at(-30)},
    ]  # fmt: skip
    if weight:
        observations.append(
            {"id": f"{patient}-wt", "source": "ward", "patient": patient, "code": "29463-7",
             "value": WEIGHT_KG, "unit": "kg", "time": _at(-90)}
        )  # fmt: skip
    interventions = [
        {
            "id": f"{patient}-vanc-{j}",
            "source": "emar",
            "patient": patient,
            "kind": "drug-dose",
            "amount": d.amount_mg if j else d.amount_mg / 1000.0,
            "unit": "mg" if j else "g",
            "time": _at(d.at_min),
            "duration_s": 3600,
            "drug": "11124" if j % 2 else "Vancomycin 1 g in NaCl",
            "route": "iv-infusion",
        }
        for j, d in enumerate(DOSES)
    ]
    interventions += [
        {"id": f"{patient}-cef-1", "source": "emar", "patient": patient, "kind": "drug-dose",
         "amount": 2000, "unit": "mg", "time": _at(30), "drug": "cefazolin"},
        {"id": f"{patient}-vanc-po", "source": "emar", "patient": patient, "kind": "drug-dose",
         "amount": 125, "unit": "mg", "time": _at(240), "drug": "vancomycin",
         "route": "oral"},
    ]  # fmt: skip
    return {"observations": observations, "interventions": interventions}


@dataclass
class Rig:
    store: SqlStore
    clock: FixedClock
    ingestor: Ingestor
    vault: PatientVault
    service: DosingService

    def add(self, patient: str, *, weight: bool = True, sex: str = "male") -> None:
        items = simulated_patient(patient, weight=weight)
        results = self.ingestor.ingest(items["observations"], channel="api", care_team="ward")
        assert all(r.status == "stored" for r in results), results
        results = self.ingestor.ingest_interventions(
            items["interventions"], channel="api", care_team="ward"
        )
        assert all(r.status == "stored" for r in results), results
        born = date(START.year - AGE, 1, 1)
        self.vault.put(
            patient,
            Demographics(birth_date=born, sex=sex),
            now_us=self.clock.now_us(),
        )


@pytest.fixture
def rig(stores: StoreFactory, backend: str) -> Rig:
    store = stores.new(backend)
    clock = FixedClock(START + timedelta(hours=50))
    vault = PatientVault(store, make_privacy())
    ingestor = Ingestor(store, TwinRuntime(clock), EventBus(), clock)
    return Rig(store, clock, ingestor, vault, DosingService(store, vault, clock, samples=200))


def _true_trough(dose_mg: float, interval_h: float = 12.0) -> float:
    ss = regimen(Dose(0.0, dose_mg, "iv-infusion", 60.0), interval_h * 60.0, 60)
    return float(predict_levels(MODEL, _true_params(), ss, [60 * interval_h * 60.0])[0, 0])


def test_the_recommended_dose_lands_the_true_trough_in_range(rig: Rig) -> None:
    rig.add("v-1")
    answer = rig.service.recommend("v-1", Target("trough", 10.0, 20.0), interval_h=12.0)
    assert answer["statement"] == STATEMENT
    assert answer["interval_h"] == 12.0
    assert 10.0 <= _true_trough(answer["dose_mg"]) <= 20.0
    assert answer["in_target"] is True
    curve = answer["curve"]
    assert curve["t_h"][0] == 0.0
    assert curve["t_h"][-1] == 12.0
    assert len(curve["time"]) == len(curve["conc_mg_l"]) == len(curve["lower90"])
    lower, mid, upper = (np.array(curve[k]) for k in ("lower90", "conc_mg_l", "upper90"))
    assert np.all(lower <= mid + 1e-9)
    assert np.all(mid <= upper + 1e-9)
    assert answer["trough_mg_l"] == pytest.approx(mid[-1])
    params = {p["name"]: p for p in answer["parameters"]}
    true = _true_params()
    assert params["CL"]["value"] == pytest.approx(true["CL"], rel=0.25)
    for name in ("CL", "V1", "V2"):
        assert params[name]["lower90"] <= params[name]["value"] <= params[name]["upper90"]
    assert [lv["code"] for lv in answer["levels"]] == [c for _, c in LEVEL_MIN]
    assert [lv["model_h"] for lv in answer["levels"]] == [t / 60 for t, _ in LEVEL_MIN]
    assert len(answer["doses"]) == len(DOSES)
    assert answer["doses"][0]["amount_mg"] == 1000.0  # sent in g


def test_a_dose_asked_about_is_predicted_not_chosen(rig: Rig) -> None:
    """What if another dose were given: its curve (PK is linear, so the recommended curve
    scaled), its true trough, and whether it lands in the target."""
    rig.add("v-1")
    target = Target("trough", 10.0, 20.0)
    recommended = rig.service.recommend("v-1", target, interval_h=12.0)
    assert recommended["dose_chosen"] is False
    double = 2 * recommended["dose_mg"]
    answer = rig.service.recommend("v-1", target, interval_h=12.0, dose_mg=double)
    assert answer["dose_chosen"] is True
    assert answer["dose_mg"] == double
    np.testing.assert_allclose(
        answer["curve"]["conc_mg_l"], 2 * np.array(recommended["curve"]["conc_mg_l"]), rtol=1e-9
    )
    assert answer["trough_mg_l"] == pytest.approx(2 * recommended["trough_mg_l"])
    assert answer["in_target"] is (10.0 <= answer["predicted"] <= 20.0)
    assert answer["in_target"] is False  # twice a dose aimed at 15 mg/L overshoots 20
    assert _true_trough(double) > 20.0
    assert answer["id"] != recommended["id"]
    stored = rig.service.provenance.result(answer["id"])
    assert stored.parameters["dose_mg"] == double
    assert rig.service.provenance.result(recommended["id"]).parameters["dose_mg"] is None
    with pytest.raises(InputError, match="dose_mg"):
        rig.service.recommend("v-1", target, dose_mg=0.0)


def test_an_auc_target_gives_an_auc_in_range(rig: Rig) -> None:
    rig.add("v-1")
    answer = rig.service.recommend(
        "v-1", Target("auc24", 400.0, 600.0), interval_h=12.0, infusion_h=1.5
    )
    assert 400.0 <= answer["dose_mg"] * 2.0 / _true_params()["CL"] <= 600.0
    assert answer["predicted"] == pytest.approx(answer["auc24_mg_h_l"])
    assert answer["predicted_lower90"] <= answer["predicted"] <= answer["predicted_upper90"]


def test_the_result_is_stored_with_provenance_to_exactly_the_levels_and_doses(rig: Rig) -> None:
    rig.add("v-1")
    answer = rig.service.recommend("v-1", Target("trough", 10.0, 20.0))
    provenance = ProvenanceStore(rig.store)
    latest = provenance.latest("v-1", MODULE)
    assert latest is not None
    assert latest.fingerprint == answer["id"]
    assert latest.parameters["statement"] == STATEMENT
    assert latest.outputs["dose_mg"] == answer["dose_mg"]
    assert latest.outputs["CL"] == pytest.approx(answer["parameters"][0]["value"])
    inputs = provenance.inputs_of([answer["id"]])[answer["id"]]
    levels = {i.key for i in inputs if i.input == "level"}
    assert levels == {("lab", f"v-1-lvl-{j}", 1) for j in range(3)}
    doses = [i.value or "" for i in inputs if i.input == "dose"]
    assert len(doses) == len(DOSES)
    assert all(f"(emar|v-1-vanc-{j})" in text for j, text in enumerate(doses))
    covariates = {i.input: i.key for i in inputs if i.input in ("body_weight", "creatinine")}
    assert covariates == {
        "body_weight": ("ward", "v-1-wt", 1),
        "creatinine": ("lab", "v-1-crea", 1),
    }
    # Demographics are named as a source, never copied into the result.
    text = repr(latest) + repr(inputs)
    assert str(START.year - AGE) not in text
    assert "male" not in text
    tree = provenance.tree(answer["id"])
    codes = sorted(n.get("code") for n in tree["inputs"] if n["input"] == "level")
    assert codes == ["20578-1", "4090-7", "4092-3"]
    # The same request on the same data is the same result.
    again = rig.service.recommend("v-1", Target("trough", 10.0, 20.0))
    assert again["id"] == answer["id"]
    assert rig.store.count("module_results") == 1
    assert rig.service.recommend("v-1", Target("trough", 15.0, 20.0))["id"] != answer["id"]


def test_missing_weight_is_a_clear_error_naming_it(rig: Rig) -> None:
    rig.add("v-2", weight=False)
    with pytest.raises(InputError) as caught:
        rig.service.recommend("v-2", Target("trough", 10.0, 20.0))
    assert caught.value.location == "covariates.weight_kg"
    assert "body weight (LOINC 29463-7)" in caught.value.reason
    assert rig.store.count("module_results") == 0


def test_missing_sex_doses_and_levels_are_named(rig: Rig) -> None:
    rig.add("v-3", sex="unknown")
    with pytest.raises(InputError) as caught:
        rig.service.recommend("v-3", Target("trough", 10.0, 20.0))
    assert caught.value.location == "covariates.sex"
    with pytest.raises(InputError) as none:
        rig.service.recommend("nobody", Target("trough", 10.0, 20.0))
    assert none.value.location == "doses"


def test_summary_lists_the_course_and_the_latest_result(rig: Rig) -> None:
    rig.add("v-1")
    summary = rig.service.summary("v-1")
    assert len(summary["doses"]) == len(DOSES)
    assert [lv["conc_mg_l"] > 0 for lv in summary["levels"]] == [True] * 3
    assert summary["weight_kg"] == WEIGHT_KG
    assert summary["latest"] is None
    answer = rig.service.recommend("v-1", Target("trough", 10.0, 20.0))
    assert rig.service.summary("v-1")["latest"]["id"] == answer["id"]
    empty = rig.service.summary("nobody")
    assert empty["doses"] == []
    assert empty["levels"] == []
