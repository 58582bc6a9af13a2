"""Research access: pseudonymized exports and DP aggregates, on both store backends."""

from __future__ import annotations

import itertools
import json
import math
import random
import threading
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pytest

from medtwin.core.clock import to_us
from medtwin.core.errors import ConfigurationError, InputError, MedtwinError
from medtwin.core.records import LOINC, Observation, ObservationStatus, Patient, QualityFlag
from medtwin.data import research
from medtwin.data.research import (
    BudgetExhausted,
    DPResult,
    PrivacyBudget,
    date_shift_days,
    dp_count,
    dp_mean,
    export_observations,
    pseudonym,
)
from medtwin.data.store import SqlStore, open_store

if TYPE_CHECKING:
    from conftest import StoreFactory  # tests/conftest.py

HR, SPO2, ACVPU = "8867-4", "59408-5", "80288-4"
LOCAL_SYSTEM = "urn:medtwin-test:local-codes"
NOTE = "local-note"
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in µs
MINUTE = 60_000_000
DAY = 24 * 60 * MINUTE
KEY = b"k" * 32
OTHER_KEY = b"o" * 32
SOURCE = "device-acme-monitor-7731"
FREE_TEXT = "Mrs Jane Example says she feels dizzy"


def patient_id(n: int) -> str:
    return f"mrn-secret-{n:05d}"


def message_id(patient: int, n: int) -> str:
    return f"msg-{patient:05d}-{n:06d}-zq"


def obs(
    patient: int,
    n: int,
    code: str,
    value_num: float | None,
    effective_us: int,
    *,
    value_text: str | None = None,
    system: str = LOINC,
    unit: str = "/min",
    status: str = ObservationStatus.FINAL.value,
    version: int = 1,
    flags: int = 0,
) -> Observation:
    return Observation(
        SOURCE,
        message_id(patient, n),
        patient_id(patient),
        system,
        code,
        value_num,
        value_text,
        unit,
        effective_us,
        status,
        version,
        flags,
    )


def add(store: SqlStore, observations: list[Observation]) -> None:
    ids = sorted({o.patient for o in observations})
    store.append(
        observations,
        received_us=T0 + 400 * DAY,
        new_patients=[Patient(p, f"ps-{p}", 1, T0) for p in ids],
    )


def seed_small(store: SqlStore) -> list[Observation]:
    """Three patients with heart rates, an ACVPU letter and a free-text local note."""
    rows: list[Observation] = []
    for p in range(3):
        for i in range(5):
            rows.append(obs(p, i, HR, 60.0 + p + i, T0 + p * 7 * DAY + i * 37 * MINUTE))
        rows.append(obs(p, 10, ACVPU, None, T0 + p * DAY, value_text="V", unit=""))
        rows.append(
            obs(
                p,
                11,
                NOTE,
                None,
                T0 + p * DAY + MINUTE,
                value_text=FREE_TEXT,
                system=LOCAL_SYSTEM,
                unit="",
                flags=int(QualityFlag.UNMAPPED),
            )
        )
    add(store, rows)
    return rows


def export(store: SqlStore, **kwargs: Any) -> list[dict[str, Any]]:
    return list(export_observations(store, key=kwargs.pop("key", KEY), **kwargs))


def parse(iso: str) -> int:
    return to_us(datetime.fromisoformat(iso))


# -- pseudonyms and date shifts (no store) -----------------------------------------


def test_pseudonym_is_keyed_stable_and_short() -> None:
    a = pseudonym(KEY, "p1")
    assert a == pseudonym(KEY, "p1")
    assert a != pseudonym(OTHER_KEY, "p1")
    assert a != pseudonym(KEY, "p2")
    assert a.startswith("r-")
    assert len(a) == 18
    int(a[2:], 16)
    assert "p1" not in a


def test_date_shift_is_whole_days_within_half_a_year() -> None:
    shifts = {date_shift_days(KEY, f"patient-{n}") for n in range(2000)}
    assert all(-180 <= s <= 180 for s in shifts)
    assert len(shifts) > 250  # spread over the range, not a constant
    assert min(shifts) < -150
    assert max(shifts) > 150
    assert date_shift_days(KEY, "p1") == date_shift_days(KEY, "p1")


@pytest.mark.parametrize("key", [b"", b"short", "k" * 32])
def test_weak_or_wrong_key_is_refused(key: Any) -> None:
    with pytest.raises(ConfigurationError):
        pseudonym(key, "p1")


# -- export -------------------------------------------------------------------


def test_export_carries_no_identifiers(store: SqlStore) -> None:
    rows = seed_small(store)
    exported = export(store)
    assert len(exported) == len(rows)
    text = json.dumps(exported)
    for needle in (SOURCE, "mrn-secret", "msg-", FREE_TEXT, "ps-mrn"):
        assert needle not in text
    for p in range(3):
        assert patient_id(p) not in text
    for row in exported:
        assert set(row) == {"subject", "code", "system", "value", "unit", "time", "flags"}


def test_export_keeps_coded_values_and_drops_free_text(store: SqlStore) -> None:
    seed_small(store)
    exported = export(store)
    acvpu = [r for r in exported if r["code"] == ACVPU]
    notes = [r for r in exported if r["code"] == NOTE]
    hrs = [r for r in exported if r["code"] == HR]
    assert [r["value"] for r in acvpu] == ["V"] * 3
    assert [r["value"] for r in notes] == [None] * 3
    assert all(r["flags"] == ["unmapped"] for r in notes)
    assert sorted(r["value"] for r in hrs) == sorted(
        60.0 + p + i for p in range(3) for i in range(5)
    )
    assert all(r["unit"] == "/min" and r["system"] == LOINC for r in hrs)


def test_free_text_in_a_registered_code_is_dropped(store: SqlStore) -> None:
    add(store, [obs(0, 0, ACVPU, None, T0, value_text=FREE_TEXT, unit="")])
    (row,) = export(store)
    assert row["value"] is None
    assert FREE_TEXT not in json.dumps(row)


def test_pseudonyms_stable_across_exports_and_keyed(store: SqlStore) -> None:
    seed_small(store)
    first = export(store)
    again = export(store)
    other = export(store, key=OTHER_KEY)
    assert first == again
    subjects = {r["subject"] for r in first}
    assert subjects == {pseudonym(KEY, patient_id(p)) for p in range(3)}
    assert subjects.isdisjoint({r["subject"] for r in other})


def test_date_shift_constant_per_patient_and_intervals_kept(store: SqlStore) -> None:
    rows = []
    for p in range(20):
        for i in range(6):
            rows.append(obs(p, i, HR, 70.0, T0 + p * 3 * DAY + i * i * 13 * MINUTE + 17))
    add(store, rows)
    exported = export(store, codes=[HR])
    by_subject: dict[str, list[int]] = {}
    for row in exported:
        by_subject.setdefault(row["subject"], []).append(parse(row["time"]))
    shifts = set()
    for p in range(20):
        original = sorted(o.effective_us for o in rows if o.patient == patient_id(p))
        shifted = by_subject[pseudonym(KEY, patient_id(p))]
        assert shifted == sorted(shifted)  # time order within a subject
        deltas = {s - o for s, o in zip(shifted, original, strict=True)}
        assert len(deltas) == 1  # one shift per patient: every interval preserved
        (delta,) = deltas
        assert delta % DAY == 0
        assert abs(delta) <= 180 * DAY
        assert delta == date_shift_days(KEY, patient_id(p)) * DAY
        intervals = [b - a for a, b in itertools.pairwise(original)]
        assert [b - a for a, b in itertools.pairwise(shifted)] == intervals
        shifts.add(delta)
    assert len(shifts) > 1  # patients are not shifted together


def test_opted_out_patients_never_appear(store: SqlStore) -> None:
    seed_small(store)
    exported = export(store, excluded={patient_id(1)})
    subjects = {r["subject"] for r in exported}
    assert pseudonym(KEY, patient_id(1)) not in subjects
    assert subjects == {pseudonym(KEY, patient_id(p)) for p in (0, 2)}
    assert len(exported) == 2 * 7


def test_excluded_as_one_string_is_refused(store: SqlStore) -> None:
    seed_small(store)
    with pytest.raises(InputError):
        export(store, excluded=patient_id(1))


def test_export_pages_filters_and_versions(store: SqlStore) -> None:
    rows = [obs(0, i, HR, 50.0 + i, T0 + i * MINUTE) for i in range(10)]
    rows.append(obs(0, 3, HR, 99.0, T0 + 3 * MINUTE, version=2, status="amended"))
    rows.append(obs(0, 4, HR, 53.0, T0 + 4 * MINUTE, version=2, status="entered-in-error"))
    rows.append(obs(0, 20, SPO2, 97.0, T0 + 2 * MINUTE, unit="%"))
    add(store, rows)
    everything = export(store, page_size=3)
    assert everything == export(store, page_size=1000)
    hr_values = [r["value"] for r in everything if r["code"] == HR]
    # Version 1 of item 3 is superseded, item 4 was entered in error.
    assert hr_values == [50.0, 51.0, 52.0, 99.0, 55.0, 56.0, 57.0, 58.0, 59.0]
    assert [r["code"] for r in export(store, codes=[SPO2])] == [SPO2]
    window = export(store, codes=[HR], start_us=T0 + 5 * MINUTE, end_us=T0 + 7 * MINUTE)
    assert [r["value"] for r in window] == [55.0, 56.0, 57.0]
    with pytest.raises(InputError):
        export(store, page_size=0)


def test_export_is_a_lazy_stream(store: SqlStore) -> None:
    add(store, [obs(p, i, HR, 60.0, T0 + i * MINUTE) for p in range(3) for i in range(5)])
    stream = export_observations(store, key=KEY, page_size=2)
    first = next(stream)
    assert first["code"] == HR
    assert len(list(stream)) == 14


# -- privacy budget -------------------------------------------------------------


def test_budget_decreases_and_refuses_when_spent(store: SqlStore) -> None:
    budget = PrivacyBudget(store, "alice", default_limit=1.0)
    assert budget.remaining() == 1.0
    budget.spend(0.25)
    assert budget.remaining() == pytest.approx(0.75)
    budget.spend(0.75)
    assert budget.remaining() == pytest.approx(0.0)
    with pytest.raises(BudgetExhausted):
        budget.spend(0.01)
    assert budget.spent() == pytest.approx(1.0)
    assert isinstance(BudgetExhausted("x"), MedtwinError)


def test_budget_tolerates_rounding_of_sums(store: SqlStore) -> None:
    budget = PrivacyBudget(store, "bob", default_limit=0.3)
    budget.spend(0.1)
    budget.spend(0.2)  # 0.1 + 0.2 > 0.3 in floats
    with pytest.raises(BudgetExhausted):
        budget.spend(1e-6)


def test_budget_limit_can_be_raised_and_lowered(store: SqlStore) -> None:
    budget = PrivacyBudget(store, "carol", default_limit=0.5)
    budget.spend(0.5)
    budget.set_limit(2.0)
    assert budget.remaining() == pytest.approx(1.5)
    budget.set_limit(0.2)
    assert budget.remaining() == 0.0
    assert budget.spent() == pytest.approx(0.5)
    fresh = PrivacyBudget(store, "dave")
    fresh.set_limit(3.0)
    assert fresh.remaining() == 3.0
    assert PrivacyBudget(store, "dave", default_limit=1.0).remaining() == 3.0  # stored wins


def test_budgets_are_per_researcher(store: SqlStore) -> None:
    alice = PrivacyBudget(store, "alice", default_limit=1.0)
    bob = PrivacyBudget(store, "bob", default_limit=1.0)
    alice.spend(1.0)
    with pytest.raises(BudgetExhausted):
        alice.spend(0.1)
    assert bob.remaining() == 1.0
    bob.spend(0.4)
    assert alice.remaining() == 0.0
    assert bob.remaining() == pytest.approx(0.6)
    bob.set_limit(5.0)
    assert alice.remaining() == 0.0


@pytest.mark.parametrize("epsilon", [0, -1.0, math.nan, math.inf, True, "0.1"])
def test_bad_epsilon_is_refused(store: SqlStore, epsilon: Any) -> None:
    budget = PrivacyBudget(store, "alice")
    with pytest.raises(InputError):
        budget.spend(epsilon)
    add(store, [obs(0, 0, HR, 60.0, T0)])
    with pytest.raises(InputError):
        dp_mean(store, HR, epsilon=epsilon, bounds=(0.0, 200.0), budget=budget)
    with pytest.raises(InputError):
        dp_count(store, HR, epsilon=epsilon, budget=budget)
    assert budget.remaining() == 1.0


def test_concurrent_spends_never_exceed_the_limit(store: SqlStore, stores: StoreFactory) -> None:
    """Threads each with their own store object: only the database serializes them."""
    PrivacyBudget(store, "eve").set_limit(1.0)
    handles = [stores.open(store.url) for _ in range(4)]
    outcomes: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        budget = PrivacyBudget(handles[n % len(handles)], "eve")
        start.wait()
        for _ in range(5):
            try:
                budget.spend(0.1)
                result = "ok"
            except BudgetExhausted:
                result = "refused"
            with lock:
                outcomes.append(result)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcomes) == 40
    assert outcomes.count("ok") == 10
    assert PrivacyBudget(store, "eve").spent() == pytest.approx(1.0)


def test_concurrent_first_spends_create_one_row(store: SqlStore, stores: StoreFactory) -> None:
    """No row yet: concurrent first spends must not collide on inserting it."""
    handles = [stores.open(store.url) for _ in range(4)]
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def worker(n: int) -> None:
        start.wait()
        try:
            PrivacyBudget(handles[n], "frank", default_limit=0.5).spend(0.2)
        except BudgetExhausted:
            pass
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert PrivacyBudget(store, "frank").spent() == pytest.approx(0.4)


def test_budgets_survive_reopening(store: SqlStore) -> None:
    PrivacyBudget(store, "gina", default_limit=2.0).spend(0.5)
    reopened = open_store(store.url)
    try:
        assert PrivacyBudget(reopened, "gina", default_limit=2.0).remaining() == pytest.approx(1.5)
    finally:
        reopened.close()


# -- DP aggregates ----------------------------------------------------------------


def seed_cohort(store: SqlStore, patients: int = 300, seed: int = 7) -> dict[str, float]:
    """Patients with several heart rates each; returns each patient's true mean."""
    rng = random.Random(seed)
    rows: list[Observation] = []
    for p in range(patients):
        centre = rng.uniform(55.0, 110.0)
        for i in range(rng.randint(1, 6)):
            rows.append(obs(p, i, HR, round(centre + rng.gauss(0, 5), 1), T0 + i * 10 * MINUTE))
    add(store, rows)
    means: dict[str, list[float]] = {}
    for o in rows:
        assert o.value_num is not None
        means.setdefault(o.patient, []).append(o.value_num)
    return {p: sum(v) / len(v) for p, v in means.items()}


def test_dp_mean_is_near_the_true_mean_for_large_epsilon(store: SqlStore) -> None:
    truth = seed_cohort(store)
    true_mean = sum(truth.values()) / len(truth)
    budget = PrivacyBudget(store, "alice", default_limit=10_000.0)
    result = dp_mean(store, HR, epsilon=2_000.0, bounds=(0.0, 250.0), budget=budget)
    assert isinstance(result, DPResult)
    # Sum noise scale 250/1000 and count noise scale 1/1000: error far below 0.5.
    assert result.value == pytest.approx(true_mean, abs=0.5)
    assert result.n_noisy is not None
    assert abs(result.n_noisy - len(truth)) <= 2
    assert result.epsilon == 2_000.0
    assert "Laplace" in result.mechanism
    assert "patient" in result.mechanism
    assert budget.remaining() == pytest.approx(8_000.0)


def test_dp_mean_is_per_patient_not_per_reading(store: SqlStore) -> None:
    # One patient with many high readings must weigh as much as one with a single low one.
    rows = [obs(0, i, HR, 150.0, T0 + i * MINUTE) for i in range(200)]
    rows.append(obs(1, 0, HR, 50.0, T0))
    add(store, rows)
    budget = PrivacyBudget(store, "alice", default_limit=1e6)
    result = dp_mean(store, HR, epsilon=1e5, bounds=(0.0, 250.0), budget=budget)
    assert result.value == pytest.approx(100.0, abs=0.5)
    assert result.n_noisy == 2


def test_dp_mean_clamps_to_bounds(store: SqlStore) -> None:
    add(store, [obs(p, 0, HR, 300.0, T0) for p in range(50)])
    budget = PrivacyBudget(store, "alice", default_limit=1e6)
    result = dp_mean(store, HR, epsilon=1e4, bounds=(40.0, 180.0), budget=budget)
    assert 40.0 <= result.value <= 180.0
    assert result.value == pytest.approx(180.0, abs=1.0)


def test_dp_releases_carry_noise_at_small_epsilon(store: SqlStore) -> None:
    seed_cohort(store, patients=100)
    budget = PrivacyBudget(store, "alice", default_limit=100.0)
    means = {
        dp_mean(store, HR, epsilon=0.5, bounds=(0.0, 250.0), budget=budget).value for _ in range(6)
    }
    counts = {dp_count(store, HR, epsilon=0.2, budget=budget).value for _ in range(6)}
    assert len(means) > 1
    assert len(counts) > 1
    assert budget.spent() == pytest.approx(6 * 0.5 + 6 * 0.2)


def test_dp_count_counts_patients_in_the_window(store: SqlStore) -> None:
    rows = [obs(p, i, HR, 70.0, T0 + p * DAY + i * MINUTE) for p in range(40) for i in range(3)]
    rows += [obs(p, 9, SPO2, 97.0, T0, unit="%") for p in range(40, 45)]
    add(store, rows)
    budget = PrivacyBudget(store, "alice", default_limit=1e6)
    everyone = dp_count(store, HR, epsilon=1e4, budget=budget)
    assert everyone.value == 40.0
    assert everyone.n_noisy == 40
    window = dp_count(store, HR, epsilon=1e4, budget=budget, start_us=T0 + 10 * DAY)
    assert window.value == 30.0
    opted_out = dp_count(
        store, HR, epsilon=1e4, budget=budget, excluded={patient_id(p) for p in range(5)}
    )
    assert opted_out.value == 35.0
    assert dp_count(store, SPO2, epsilon=1e4, budget=budget).value == 5.0


def test_dp_mean_leaves_out_opted_out_patients(store: SqlStore) -> None:
    add(store, [obs(p, 0, HR, 60.0 if p < 20 else 120.0, T0) for p in range(40)])
    budget = PrivacyBudget(store, "alice", default_limit=1e6)
    result = dp_mean(
        store,
        HR,
        epsilon=1e5,
        bounds=(0.0, 250.0),
        budget=budget,
        excluded=[patient_id(p) for p in range(20, 40)],
    )
    assert result.value == pytest.approx(60.0, abs=0.5)
    assert result.n_noisy == 20


def test_exhausted_budget_releases_nothing(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_cohort(store, patients=30)
    budget = PrivacyBudget(store, "alice", default_limit=1.0)
    releases: list[Any] = []
    real_release = research._release

    def spy(measurement: Any, data: list[float]) -> Any:
        releases.append(len(data))
        return real_release(measurement, data)

    monkeypatch.setattr(research, "_release", spy)
    dp_mean(store, HR, epsilon=0.6, bounds=(0.0, 250.0), budget=budget)
    assert len(releases) == 1
    with pytest.raises(BudgetExhausted):
        dp_mean(store, HR, epsilon=0.6, bounds=(0.0, 250.0), budget=budget)
    with pytest.raises(BudgetExhausted):
        dp_count(store, HR, epsilon=0.5, budget=budget)
    assert len(releases) == 1  # the mechanism never ran for a refused spend
    assert budget.remaining() == pytest.approx(0.4)
    dp_count(store, HR, epsilon=0.4, budget=budget)
    assert len(releases) == 2
    assert budget.remaining() == pytest.approx(0.0)


def test_budget_is_spent_before_the_release(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_cohort(store, patients=10)
    budget = PrivacyBudget(store, "alice", default_limit=1.0)
    seen: list[float] = []

    def spy(measurement: Any, data: list[float]) -> Any:
        seen.append(budget.spent())
        return [0.0, 1]

    monkeypatch.setattr(research, "_release", spy)
    dp_mean(store, HR, epsilon=0.3, bounds=(0.0, 250.0), budget=budget)
    assert seen == [pytest.approx(0.3)]


@pytest.mark.parametrize(
    "bounds",
    [(0.0, math.inf), (-math.inf, 1.0), (math.nan, 1.0), (5.0, 5.0), (10.0, 1.0), (1.0,)],
)
def test_bad_bounds_are_refused(store: SqlStore, bounds: Any) -> None:
    budget = PrivacyBudget(store, "alice")
    with pytest.raises(InputError):
        dp_mean(store, HR, epsilon=0.1, bounds=bounds, budget=budget)
    assert budget.remaining() == 1.0


def test_dp_on_an_empty_store(store: SqlStore) -> None:
    budget = PrivacyBudget(store, "alice", default_limit=10.0)
    mean = dp_mean(store, HR, epsilon=1.0, bounds=(40.0, 180.0), budget=budget)
    assert 40.0 <= mean.value <= 180.0
    count = dp_count(store, HR, epsilon=1.0, budget=budget)
    assert count.value >= 0.0
    assert budget.remaining() == pytest.approx(8.0)
