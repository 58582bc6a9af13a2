"""The simulated cohort: reproducible, challenge-shaped, documented event rate and physiology."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from medtwin.models.learning.cohort import (
    BETA_BLOCKED_SHARE,
    DELTA,
    EVENT_RATE_RANGE,
    GAMMA,
    HYPOTHERMIC_SHARE,
    LEUKOPENIC_SHARE,
    PHENOTYPE_SHARES,
    GeneratedCohort,
    generate_cohort,
)
from medtwin.models.learning.physionet import FEATURES, HEADER, PatientSeries, parse_psv
from medtwin.models.learning.utility import best_predictions, cohort_utility, sepsis_onset


@pytest.fixture(scope="module")
def icu() -> GeneratedCohort:
    return generate_cohort(1000, seed=7)


def test_same_seed_same_cohort_other_seed_other_cohort() -> None:
    a, b, c = (generate_cohort(50, seed=s) for s in (3, 3, 4))
    for p, q in zip(a.patients, b.patients, strict=True):
        np.testing.assert_array_equal(p.values, q.values)  # NaN == NaN here
        np.testing.assert_array_equal(p.labels, q.labels)
        np.testing.assert_array_equal(p.extra["GCS"], q.extra["GCS"])
    np.testing.assert_array_equal(a.onset_hour, b.onset_hour)
    assert any(
        p.values.shape != q.values.shape or not np.array_equal(p.values, q.values, equal_nan=True)
        for p, q in zip(a.patients, c.patients, strict=True)
    )


def test_records_have_the_challenge_layout() -> None:
    cohort = generate_cohort(30, seed=1, min_hours=10, max_hours=40)
    assert len(cohort) == 30
    for patient in cohort.patients:
        assert isinstance(patient, PatientSeries)
        hours = len(patient)
        assert 10 <= hours <= 40
        assert patient.values.shape == (hours, len(FEATURES))
        assert patient.labels.shape == (hours,)
        assert patient.extra["GCS"].shape == (hours,)
        assert patient.column("ICULOS").tolist() == list(range(1, hours + 1))
        assert not patient.values.flags.writeable
        # Never-simulated columns stay missing, as unmeasured challenge columns are.
        assert np.isnan(patient.column("EtCO2")).all()
        assert np.isnan(patient.column("TroponinI")).all()


def test_round_trips_through_the_psv_reader() -> None:
    patient = generate_cohort(1, seed=2).patients[0]
    lines = ["|".join(HEADER)]
    for values, label in zip(patient.values, patient.labels, strict=True):
        lines.append(
            "|".join([*("NaN" if np.isnan(v) else repr(float(v)) for v in values), str(label)])
        )
    again = parse_psv("\n".join(lines), "sim.psv")
    np.testing.assert_array_equal(again.values, patient.values)
    np.testing.assert_array_equal(again.labels, patient.labels)


def test_event_rate_is_in_the_documented_range(icu: GeneratedCohort) -> None:
    assert EVENT_RATE_RANGE[0] <= icu.event_rate <= EVENT_RATE_RANGE[1]
    for seed in (8, 9):
        rate = generate_cohort(1000, seed=seed).event_rate
        assert EVENT_RATE_RANGE[0] <= rate <= EVENT_RATE_RANGE[1], (seed, rate)


def test_labels_follow_the_challenge_shift() -> None:
    cohort = generate_cohort(400, seed=11)
    assert (cohort.onset_hour >= 0).any()
    for patient, onset in zip(cohort.patients, cohort.onset_hour, strict=True):
        if onset < 0:
            assert not patient.labels.any()
            continue
        assert onset >= 6
        expected = (np.arange(len(patient)) >= onset - 6).astype(np.int8)
        np.testing.assert_array_equal(patient.labels, expected)
        assert sepsis_onset(patient.labels) == onset  # the utility finds the true onset


def test_utility_reads_the_cohort() -> None:
    cohort = generate_cohort(200, seed=5)
    labels = [p.labels for p in cohort.patients]
    perfect = cohort_utility(labels, [best_predictions(lab) for lab in labels])
    assert perfect.normalized == pytest.approx(1.0)


def _pooled(cohort: GeneratedCohort, name: str) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(severity, observed value) over every measured hour of every patient."""
    sev, val = [], []
    for patient, severity in zip(cohort.patients, cohort.severity, strict=True):
        column = patient.column(name)
        seen = ~np.isnan(column)
        sev.append(severity[seen])
        val.append(column[seen])
    return np.concatenate(sev), np.concatenate(val)


@pytest.mark.parametrize(
    ("name", "direction"),
    [
        ("HR", +1),
        ("Resp", +1),
        ("SBP", -1),
        ("MAP", -1),
        ("Temp", +1),
        ("O2Sat", -1),
        ("GCS", -1),
        ("Lactate", +1),
        ("Creatinine", +1),
        ("Bilirubin_total", +1),
        ("Platelets", -1),
        ("WBC", +1),
    ],
)
def test_vitals_and_labs_move_the_clinical_way_with_severity(
    icu: GeneratedCohort, name: str, direction: int
) -> None:
    severity, value = _pooled(icu, name)
    well = value[severity < 0.5].mean()
    sick = value[severity > 1.5].mean()
    assert direction * (sick - well) > 0, (name, well, sick)
    assert direction * np.corrcoef(severity, value)[0, 1] > 0.1


def test_sampling_frequencies(icu: GeneratedCohort) -> None:
    values = np.concatenate([p.values for p in icu.patients])
    measured = ~np.isnan(values)
    share = {name: measured[:, FEATURES.index(name)].mean() for name in FEATURES}
    assert 0.88 < share["HR"] < 0.96  # monitored hourly
    assert 0.2 < share["Temp"] < 0.3
    assert share["Creatinine"] < 0.15  # labs about daily, more often when sick
    assert share["Lactate"] < 0.2
    ward = generate_cohort(300, seed=7, setting="ward")
    ward_hr = np.concatenate([p.column("HR") for p in ward.patients])
    assert 0.2 < (~np.isnan(ward_hr)).mean() < 0.3  # 4-hourly observations
    assert np.isnan(np.concatenate([p.column("Unit1") for p in ward.patients])).all()


def test_values_are_plausible(icu: GeneratedCohort) -> None:
    values = np.concatenate([p.values for p in icu.patients])

    def col(name: str) -> NDArray[np.float64]:
        x = values[:, FEATURES.index(name)]
        return x[~np.isnan(x)]

    assert col("O2Sat").max() <= 100
    # Pressures stay physiological however deep the shock: positive, SBP > MAP > DBP.
    sbp, dbp, map_ = (values[:, FEATURES.index(name)] for name in ("SBP", "DBP", "MAP"))
    read = ~np.isnan(sbp)
    assert np.array_equal(read, ~np.isnan(dbp))
    assert dbp[read].min() > 0
    assert (sbp[read] > map_[read]).all()
    assert (map_[read] > dbp[read]).all()
    assert col("Platelets").min() > 0
    assert set(np.unique(col("Gender"))) <= {0.0, 1.0}
    assert set(np.unique(col("Age"))) <= set(range(18, 90)) | {100}
    gcs = np.concatenate([p.extra["GCS"] for p in icu.patients])
    gcs = gcs[~np.isnan(gcs)]
    assert gcs.min() >= 3
    assert gcs.max() <= 15
    assert (gcs == np.round(gcs)).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_patients": -1}, "n_patients"),
        ({"n_patients": 1, "setting": "home"}, "setting"),
        ({"n_patients": 1, "min_hours": 4}, "min_hours"),
        ({"n_patients": 1, "min_hours": 30, "max_hours": 20}, "min_hours"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        generate_cohort(seed=0, **kwargs)  # type: ignore[arg-type]


def test_empty_cohort() -> None:
    cohort = generate_cohort(0, seed=0)
    assert len(cohort) == 0
    assert cohort.event_rate == 0.0


def _slope(cohort: GeneratedCohort, name: str, who: NDArray[np.bool_]) -> float:
    """Least-squares slope of a column on the shown severity, over the chosen patients."""
    sev, val = [], []
    for i in np.flatnonzero(who):
        column = (
            cohort.patients[i].column(name) if name != "GCS" else cohort.patients[i].extra[name]
        )
        seen = ~np.isnan(column)
        sev.append(cohort.severity[i][seen])
        val.append(column[seen])
    s, v = np.concatenate(sev), np.concatenate(val)
    return float(np.polyfit(s, v, 1)[0])


def test_host_response_traits_have_the_documented_shares(icu: GeneratedCohort) -> None:
    traits = icu.traits
    assert traits is not None
    assert traits.phenotype.shape == (len(icu),)
    shares = np.bincount(traits.phenotype, minlength=4) / len(icu)
    np.testing.assert_allclose(shares, PHENOTYPE_SHARES, atol=0.04)
    assert traits.hypothermic.mean() == pytest.approx(HYPOTHERMIC_SHARE, abs=0.04)
    assert traits.leukopenic.mean() == pytest.approx(LEUKOPENIC_SHARE, abs=0.04)
    assert traits.beta_blocked.mean() == pytest.approx(BETA_BLOCKED_SHARE, abs=0.04)
    ages = np.array([p.column("Age")[0] for p in icu.patients])
    np.testing.assert_array_equal(np.where(traits.age >= 90, 100.0, traits.age), ages)


def test_host_response_shapes_the_vitals(icu: GeneratedCohort) -> None:
    """Hypothermic, leukopenic and beta-blocked patients respond the documented way."""
    traits = icu.traits
    assert traits is not None
    assert _slope(icu, "Temp", traits.hypothermic) < -0.3  # cools as it worsens
    assert _slope(icu, "Temp", ~traits.hypothermic) > 0.1  # fever
    assert _slope(icu, "WBC", traits.leukopenic) < 0  # leukopenia
    assert _slope(icu, "WBC", ~traits.leukopenic) > 1.0  # leukocytosis
    blocked = _slope(icu, "HR", traits.beta_blocked)
    assert 0 < blocked < 0.5 * _slope(icu, "HR", ~traits.beta_blocked)
    # Phenotypes: shock (delta) shows in the pressures, pulmonary (gamma) in Resp.
    delta, gamma = traits.phenotype == DELTA, traits.phenotype == GAMMA
    assert _slope(icu, "SBP", delta) < 2 * _slope(icu, "SBP", ~delta) < 0
    assert _slope(icu, "Resp", gamma) > 2 * _slope(icu, "Resp", ~gamma) > 0


def test_pressure_and_lactate_are_compensated_until_decompensation(icu: GeneratedCohort) -> None:
    """Small changes while the circulation compensates, steep ones once it fails."""
    for name, direction in (("SBP", -1), ("Lactate", +1)):
        severity, value = _pooled(icu, name)
        early, late = severity < 1.2, severity > 2.0
        slope_early = direction * np.polyfit(severity[early], value[early], 1)[0]
        slope_late = direction * np.polyfit(severity[late], value[late], 1)[0]
        assert 0 < 2 * slope_early < slope_late, (name, slope_early, slope_late)
