"""Vancomycin dose individualization on request: MAP PK parameters and a dose.

For one patient, :class:`DosingService` gathers from the store

- the vancomycin doses: drug-dose interventions whose drug is RxNorm 11124 or
  whose name contains "vancomycin" (any case), given intravenously (a route
  that names another way in, such as oral vancomycin, which stays in the gut,
  is left out); an infusion lasts its ``duration_s``, a dose without one is a
  bolus;
- the drug levels: LOINC 20578-1 (random), 4092-3 (trough) and 4090-7
  (peak), mg/L, measured after the first dose (the newest version of each;
  entered-in-error, imputed and suspected artifacts are not used);
- the covariates of the population model: body weight (LOINC 29463-7) and
  serum creatinine (LOINC 2160-0), the newest of each, with age and sex from
  the patient vault for the Cockcroft-Gault creatinine clearance; dialysis
  is the caller's word. Age and sex are read, never stored or logged: the
  result names only the vault as their source.

It then fits the individual parameters (:func:`map_estimate` of
``GOTI_2018_VANCOMYCIN``, times in minutes from the first dose on its 5-minute
grid) and recommends a dose for the caller's target (:func:`recommend_dose`).
Each answer is stored as a module result ``vancomycin.dosing`` whose inputs
are the levels, the doses and the covariate observations used; its
fingerprint hashes exactly those, the covariate values and the request, so the
same request on the same data is the same result. Like every estimate here,
it supports, and does not replace, clinical judgement (``STATEMENT``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import numpy as np

from medtwin.core.clock import Clock, to_iso
from medtwin.core.errors import InputError
from medtwin.core.records import Intervention, InterventionKind, QualityFlag
from medtwin.data.provenance import InputRecord, ProvenanceStore, ResultRecord
from medtwin.data.readings import usable_readings
from medtwin.data.store import SqlStore
from medtwin.data.vault import PatientVault
from medtwin.models.assimilation.pk_map import (
    GOTI_2018_VANCOMYCIN,
    STATEMENT,
    Level,
    MapResult,
    Recommendation,
    Target,
    crcl_cockcroft_gault,
    map_estimate,
    recommend_dose,
)
from medtwin.models.physiology.pkpd import Dose

__all__ = [
    "BODY_WEIGHT",
    "CREATININE",
    "LEVEL_CODES",
    "MODULE",
    "STATEMENT",
    "VANCOMYCIN_RXNORM",
    "VERSION",
    "DosingInputs",
    "DosingService",
    "is_vancomycin",
]

MODULE = "vancomycin.dosing"
VERSION = "1"
VANCOMYCIN_RXNORM = "11124"
LEVEL_CODES = ("20578-1", "4092-3", "4090-7")  # random, trough, peak; mg/L
LEVEL_KINDS = {"20578-1": "random", "4092-3": "trough", "4090-7": "peak"}
BODY_WEIGHT = "29463-7"
CREATININE = "2160-0"
MODEL = GOTI_2018_VANCOMYCIN
DT_MIN = 5.0
MINUTE_US = 60_000_000
_UNUSABLE = int(QualityFlag.ARTIFACT_SUSPECTED | QualityFlag.IMPUTED)
# Routes that do not reach the blood as an IV dose does (medtwin's names, SNOMED oral).
_NOT_IV = frozenset(
    {"oral", "enteral", "nasal", "inhalation", "subcutaneous", "intramuscular", "26643006"}
)
_Z90 = 1.6448536269514722  # the 95th percentile of the standard normal

ObservationKey = tuple[str, str, int]


@dataclass(frozen=True, slots=True)
class Measured:
    """A stored numeric observation in the model's unit."""

    key: ObservationKey
    code: str
    at_us: int
    value: float


@dataclass(frozen=True)
class DosingInputs:
    """What the store holds for a patient's vancomycin dosing (no demographics)."""

    patient: str
    doses: list[Intervention]
    levels: list[Measured]
    weight: Measured | None
    creatinine: Measured | None

    @property
    def first_dose_us(self) -> int | None:
        return self.doses[0].start_us if self.doses else None


def is_vancomycin(item: Intervention) -> bool:
    """A vancomycin dose given into the blood (see the module docstring)."""
    if item.kind is not InterventionKind.DRUG_DOSE or not item.drug:
        return False
    drug = item.drug.strip()
    if drug != VANCOMYCIN_RXNORM and "vancomycin" not in drug.lower():
        return False
    return (item.route or "").strip().lower() not in _NOT_IV


def _dose_mg(item: Intervention) -> float | None:
    factor = {"mg": 1.0, "g": 1000.0, "ug": 0.001}.get(item.unit)
    return None if factor is None else item.amount * factor


def _age_years(birth: date, at_us: int) -> float:
    today = datetime.fromtimestamp(at_us / 1e6, tz=UTC).date()
    return (today - birth).days / 365.25


def _band(typical: float, eta: float, var: float) -> tuple[float, float]:
    sd = math.sqrt(max(var, 0.0))
    return typical * math.exp(eta - _Z90 * sd), typical * math.exp(eta + _Z90 * sd)


class DosingService:
    """Vancomycin MAP estimates and dose recommendations, computed on request.

    ``history_s`` bounds how far back doses and levels are read (a course of
    treatment; two weeks by default). Thread-safe: it holds no state between calls.
    """

    def __init__(
        self,
        store: SqlStore,
        vault: PatientVault,
        clock: Clock,
        *,
        history_s: float = 14 * 86_400.0,
        samples: int = 500,
        seed: int = 0,
        increment_mg: float = 250.0,
    ) -> None:
        self.store = store
        self.vault = vault
        self.clock = clock
        self.provenance = ProvenanceStore(store)
        self.history_us = round(history_s * 1_000_000)
        self.samples = samples
        self.seed = seed
        self.increment_mg = increment_mg

    # -- reading the store ----------------------------------------------------

    def inputs(self, patient: str) -> DosingInputs:
        """The vancomycin doses, levels after the first dose, weight and creatinine."""
        now = self.clock.now_us()
        since = now - self.history_us
        doses = [
            i
            for i in self.store.interventions_of(patient, since_us=since, until_us=now)
            if is_vancomycin(i) and _dose_mg(i) is not None
        ]
        doses.sort(key=lambda i: (i.start_us, i.source, i.source_id))
        found = self._observations(patient, (*LEVEL_CODES, BODY_WEIGHT, CREATININE), now)
        first = doses[0].start_us if doses else None
        levels = [
            m
            for m in found
            if m.code in LEVEL_CODES and first is not None and m.at_us >= first and m.at_us >= since
        ]
        weights = [m for m in found if m.code == BODY_WEIGHT and 1.0 <= m.value <= 400.0]
        creatinine = [m for m in found if m.code == CREATININE and m.value > 0]
        return DosingInputs(
            patient,
            doses,
            levels,
            weights[-1] if weights else None,
            creatinine[-1] if creatinine else None,
        )

    def _observations(self, patient: str, codes: Sequence[str], until_us: int) -> list[Measured]:
        """Usable numeric observations of ``codes`` up to ``until``, oldest first, in the
        registry's canonical units (mg/L, kg, mg/dL: the model's)."""
        out = [
            Measured(key, code, at, value)
            for code in codes
            for key, at, value in usable_readings(
                self.store, [patient], code, -1, until_us, exclude_flags=_UNUSABLE
            )[0]
            if math.isfinite(value) and value >= 0
        ]
        out.sort(key=lambda m: (m.at_us, m.key))
        return out

    def summary(self, patient: str) -> dict[str, Any]:
        """What the dashboard needs before asking for a dose: the doses, the levels,
        which covariates are on record, and the latest stored recommendation."""
        found = self.inputs(patient)
        latest = self.provenance.latest(patient, MODULE)
        return {
            "patient": patient,
            "doses": [self._dose_view(d) for d in found.doses],
            "levels": [self._level_view(m, found.first_dose_us) for m in found.levels],
            "weight_kg": None if found.weight is None else found.weight.value,
            "creatinine_mg_dl": None if found.creatinine is None else found.creatinine.value,
            "latest": None
            if latest is None
            else {
                "id": latest.fingerprint,
                "computed": to_iso(latest.computed_us),
                "outputs": latest.outputs,
                "parameters": latest.parameters,
                "provenance": f"/api/v1/derived/{latest.fingerprint}/provenance",
            },
            "statement": STATEMENT,
        }

    @staticmethod
    def _dose_view(item: Intervention) -> dict[str, Any]:
        return {
            "time": to_iso(item.start_us),
            "amount_mg": _dose_mg(item),
            "duration_h": item.duration_s / 3600.0,
            "drug": item.drug,
            "route": item.route,
            "id": f"{item.source}|{item.source_id}",
        }

    @staticmethod
    def _level_view(m: Measured, first_us: int | None) -> dict[str, Any]:
        return {
            "time": to_iso(m.at_us),
            "code": m.code,
            "kind": LEVEL_KINDS[m.code],
            "conc_mg_l": m.value,
            "hours_after_first_dose": None if first_us is None else (m.at_us - first_us) / 3.6e9,
            "id": f"{m.key[0]}|{m.key[1]}|{m.key[2]}",
        }

    # -- the recommendation ---------------------------------------------------

    def _covariates(
        self, patient: str, found: DosingInputs, dialysis: bool, now: int
    ) -> dict[str, float]:
        """The model's covariates; InputError naming everything missing."""
        demographics = self.vault.get(patient)
        birth = demographics.birth_date if demographics is not None else None
        sex = demographics.sex if demographics is not None else None
        missing: list[tuple[str, str]] = []
        if found.weight is None:
            missing.append(("covariates.weight_kg", f"body weight (LOINC {BODY_WEIGHT})"))
        if found.creatinine is None:
            missing.append(
                ("covariates.creatinine_mg_dl", f"serum creatinine (LOINC {CREATININE})")
            )
        if birth is None:
            missing.append(("covariates.age_years", "birth date (patient demographics)"))
        if sex not in ("female", "male"):
            missing.append(("covariates.sex", "sex, female or male (patient demographics)"))
        if missing:
            raise InputError(
                "the vancomycin model needs "
                + ", ".join(text for _, text in missing)
                + "; not on record for this patient",
                missing[0][0],
            )
        assert found.weight is not None
        assert found.creatinine is not None
        assert birth is not None
        age = _age_years(birth, now)
        if not age > 0:
            raise InputError("the birth date is not before today", "covariates.age_years")
        crcl = crcl_cockcroft_gault(
            age, found.weight.value, found.creatinine.value, female=sex == "female"
        )
        return {
            "weight_kg": found.weight.value,
            "crcl_ml_min": crcl,
            "dialysis": 1.0 if dialysis else 0.0,
        }

    def recommend(
        self,
        patient: str,
        target: Target,
        *,
        interval_h: float = 12.0,
        infusion_h: float = 1.0,
        dialysis: bool = False,
        dose_mg: float | None = None,
    ) -> dict[str, Any]:
        """MAP fit and dose for ``target``, stored as a ``vancomycin.dosing`` result;
        given ``dose_mg`` (mg per infusion), the prediction for that dose instead (a
        what-if: whether it lands in the target).

        InputError (422) for what is missing (doses, levels, covariates, with
        ``covariates.<name>``, ``doses`` or ``levels`` as the location) or refused
        (``target``, ``interval_h``, ``infusion_h``).
        """
        now = self.clock.now_us()
        found = self.inputs(patient)
        if not found.doses:
            raise InputError("no vancomycin doses on record for this patient", "doses")
        if not found.levels:
            raise InputError(
                "no vancomycin level (LOINC 20578-1, 4092-3 or 4090-7) after the first dose",
                "levels",
            )
        covariates = self._covariates(patient, found, dialysis, now)
        t0 = found.doses[0].start_us
        doses: list[Dose] = []
        for item in found.doses:
            at_min = (item.start_us - t0) / MINUTE_US
            amount = _dose_mg(item)
            assert amount is not None
            if item.duration_s > 0:
                doses.append(Dose(at_min, amount, "iv-infusion", item.duration_s / 60.0))
            else:  # a bolus enters on the model's grid
                doses.append(Dose(round(at_min / DT_MIN) * DT_MIN, amount, "iv-bolus"))
        levels = [
            Level(round((m.at_us - t0) / MINUTE_US / DT_MIN) * DT_MIN, m.value)
            for m in found.levels
        ]
        fit = map_estimate(MODEL, covariates, doses, levels, dt_min=DT_MIN)
        rec = recommend_dose(
            MODEL,
            fit,
            target,
            interval_h=interval_h,
            infusion_h=infusion_h,
            increment_mg=self.increment_mg,
            samples=self.samples,
            seed=self.seed,
            dt_min=DT_MIN,
            dose_mg=dose_mg,
        )
        return self._store(patient, found, covariates, fit, rec, levels, now, chosen=dose_mg)

    def _store(
        self,
        patient: str,
        found: DosingInputs,
        covariates: dict[str, float],
        fit: MapResult,
        rec: Recommendation,
        levels: Sequence[Level],
        now: int,
        *,
        chosen: float | None = None,
    ) -> dict[str, Any]:
        parameters: dict[str, Any] = {
            "model": MODEL.name,
            # A dose the clinician asked about (a what-if), else null: recommended.
            "dose_mg": chosen,
            "citation": MODEL.citation,
            "target": {"kind": rec.target.kind, "low": rec.target.low, "high": rec.target.high},
            "interval_h": rec.interval_h,
            "infusion_h": rec.infusion_h,
            "dialysis": bool(covariates["dialysis"]),
            "increment_mg": self.increment_mg,
            "samples": self.samples,
            "seed": self.seed,
            "dt_min": DT_MIN,
            "statement": STATEMENT,
        }
        ranges: dict[str, tuple[float, float]] = {}
        for j, name in enumerate(fit.eta_names):
            ranges[name] = _band(fit.typical[name], float(fit.eta[j]), fit.covariance[j, j])
        peak_k = int(np.argmax(rec.conc_mg_l))
        outputs: dict[str, float | None] = {
            "dose_mg": rec.dose_mg,
            "interval_h": rec.interval_h,
            "infusion_h": rec.infusion_h,
            "predicted": rec.predicted,
            "predicted_lower90": rec.predicted_band[0],
            "predicted_upper90": rec.predicted_band[1],
            "in_target": 1.0 if rec.in_target else 0.0,
            "trough_mg_l": rec.trough_mg_l,
            "trough_lower90": float(rec.band_5[-1]),
            "trough_upper90": float(rec.band_95[-1]),
            "peak_mg_l": float(rec.conc_mg_l[peak_k]),
            "peak_lower90": float(rec.band_5[peak_k]),
            "peak_upper90": float(rec.band_95[peak_k]),
            "peak_at_h": float(rec.t_h[peak_k]),
            "auc24_mg_h_l": rec.auc24_mg_h_l,
        }
        for name in MODEL.params:
            outputs[name] = fit.params[name]
            outputs[f"{name}_typical"] = fit.typical[name]
            if name in ranges:
                outputs[f"{name}_lower90"], outputs[f"{name}_upper90"] = ranges[name]
        outputs["crcl_ml_min"] = covariates["crcl_ml_min"]
        outputs["weight_kg"] = covariates["weight_kg"]
        outputs["converged"] = 1.0 if fit.converged else 0.0
        inputs = [InputRecord("level", "observation", m.key) for m in found.levels]
        inputs += [InputRecord("dose", "attribute", value=d.describe()) for d in found.doses]
        for name, m in (("body_weight", found.weight), ("creatinine", found.creatinine)):
            assert m is not None
            inputs.append(InputRecord(name, "observation", m.key))
        # Age and sex are read from the vault for the creatinine clearance: named, not copied.
        inputs.append(InputRecord("demographics", "attribute", value="age and sex (patient vault)"))
        identity = "\x1e".join(
            [
                MODULE,
                VERSION,
                json.dumps(parameters, sort_keys=True, separators=(",", ":")),
                patient,
                json.dumps(covariates, sort_keys=True),
            ]
            + [f"{i.input}\x1f{i.key}\x1f{i.value}" for i in inputs]
        )
        fingerprint = hashlib.blake2b(identity.encode(), digest_size=16).hexdigest()
        record = ResultRecord(fingerprint, MODULE, VERSION, patient, now, outputs, parameters)
        self.provenance.save([(record, inputs)])
        first = found.doses[0].start_us
        # The steady-state interval is drawn from the next dose on a 5-minute grid after now.
        start = -(-now // (round(DT_MIN) * MINUTE_US)) * round(DT_MIN) * MINUTE_US
        return {
            "patient": patient,
            "id": fingerprint,
            "module": MODULE,
            "version": VERSION,
            "computed": to_iso(now),
            "model": MODEL.name,
            "citation": MODEL.citation,
            "target": parameters["target"],
            "dose_mg": rec.dose_mg,
            "dose_chosen": chosen is not None,
            "interval_h": rec.interval_h,
            "infusion_h": rec.infusion_h,
            "daily_dose_mg": rec.dose_mg * 24.0 / rec.interval_h,
            "predicted": rec.predicted,
            "predicted_lower90": rec.predicted_band[0],
            "predicted_upper90": rec.predicted_band[1],
            "in_target": rec.in_target,
            "trough_mg_l": rec.trough_mg_l,
            "auc24_mg_h_l": rec.auc24_mg_h_l,
            "curve": {
                "description": "one dosing interval at steady state, starting with an infusion",
                "t_h": rec.t_h.tolist(),
                "time": [to_iso(start + round(t * 60) * MINUTE_US) for t in rec.t_h.tolist()],
                "conc_mg_l": rec.conc_mg_l.tolist(),
                "lower90": rec.band_5.tolist(),
                "upper90": rec.band_95.tolist(),
            },
            "parameters": [
                {
                    "name": name,
                    "unit": "L/h" if name in ("CL", "Q2") else "L",
                    "value": fit.params[name],
                    "typical": fit.typical[name],
                    "lower90": ranges[name][0] if name in ranges else None,
                    "upper90": ranges[name][1] if name in ranges else None,
                }
                for name in MODEL.params
            ],
            "covariates": {
                "weight_kg": covariates["weight_kg"],
                "creatinine_mg_dl": None if found.creatinine is None else found.creatinine.value,
                "crcl_ml_min": covariates["crcl_ml_min"],
                "dialysis": bool(covariates["dialysis"]),
            },
            "converged": fit.converged,
            "levels": [
                {
                    **self._level_view(m, first),
                    "model_h": lv.at_min / 60.0,
                    "predicted_mg_l": float(fit.ipred[j]),
                }
                for j, (m, lv) in enumerate(zip(found.levels, levels, strict=True))
            ],
            "doses": [self._dose_view(d) for d in found.doses],
            "provenance": f"/api/v1/derived/{fingerprint}/provenance",
            "statement": STATEMENT,
        }
