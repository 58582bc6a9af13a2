"""Research access: pseudonymized exports and differentially private aggregates.

Two ways out of the store for research, neither of which hands out identities.

**Pseudonymized export** (GDPR Art. 4(5) pseudonymisation, :func:`export_observations`).
Each row carries a subject pseudonym instead of the patient id, and none of the
patient id, the sending device or system (``source``), its message id
(``source_id``) or the version. The pseudonym is
``"r-" + hex(HMAC-SHA256(key, b"pseudonym:" + patient id))[:16]``: stable across
exports under one key (a researcher can link the rows of one subject, and the
subject across exports), different under another key (exports for two projects
made under two keys cannot be linked), and not reversible without the key,
which stays with the data controller. Pseudonymized data are still personal data.

Date shifting: every time of one patient moves by the same whole number of days,
``HMAC-SHA256(key, b"shift:" + patient id)`` reduced to [-180, +180]. Intervals
within a patient (time between two readings, length of a stay) and the time of
day are kept exactly; calendar dates, weekdays, seasons and the alignment of
different patients in time are not. The shift is keyed like the pseudonym, so
one subject gets the same shift in every export under one key.

Free text of codes outside the code registry is dropped: a text value is kept
only for a registered coded code and only when it is one of that code's answers
(such as an ACVPU letter). Entered-in-error observations and versions superseded
by a newer version are left out. Patients in ``excluded`` (those who opted out
of research) never appear. Rows are read page by page, one patient at a time,
patients in the order of their pseudonyms, so the order of the rows says nothing
about patient ids or arrival order.

**Differential privacy** (:func:`dp_mean`, :func:`dp_count`, with OpenDP).
The privacy unit is the patient: each patient contributes exactly one row to the
data the mechanism sees (the mean of that patient's values of the code in the
window, or the fact of having the code), and neighbouring data sets differ by
adding or removing one patient (symmetric distance 1). Guarantees are pure
epsilon-DP for that unit, whatever number of readings a patient has. The
number of patients is not treated as public: the mean is a noisy clamped sum
divided by a noisy count, epsilon split evenly between them.

Every release is paid for first: the epsilon is taken from the researcher's
:class:`PrivacyBudget` in one transaction before the mechanism runs, and a
refused spend (:class:`BudgetExhausted`) releases nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import opendp.prelude as dp
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from medtwin.core.clock import from_us
from medtwin.core.errors import ConfigurationError, InputError, MedtwinError
from medtwin.core.records import LOINC, ObservationStatus, QualityFlag
from medtwin.data.codes import DEFAULT_REGISTRY
from medtwin.data.store import SqlStore, schema

dp.enable_features("contrib")

__all__ = [
    "MAX_SHIFT_DAYS",
    "BudgetExhausted",
    "DPResult",
    "PrivacyBudget",
    "date_shift_days",
    "dp_count",
    "dp_mean",
    "export_observations",
    "pseudonym",
]

MAX_SHIFT_DAYS = 180
MIN_KEY_BYTES = 16
DAY_US = 86_400 * 1_000_000
# Public bound on the number of patients in one DP release: the float sum's
# sensitivity accounts for rounding over at most this many rows.
MAX_PATIENTS = 2**24
# Rounding allowed when comparing spent + epsilon with the limit (0.1 + 0.2 > 0.3).
_EPSILON_SLACK = 1e-9

_OBS = schema.observations
_ENTERED_IN_ERROR = ObservationStatus.ENTERED_IN_ERROR.value
_ARTIFACT = int(QualityFlag.ARTIFACT_SUSPECTED)


class BudgetExhausted(MedtwinError):  # noqa: N818 - the name says what happened
    """The researcher's privacy budget cannot pay for the epsilon asked."""


# -- pseudonyms and date shifts ---------------------------------------------


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
        raise ConfigurationError(f"research pseudonym key must be at least {MIN_KEY_BYTES} bytes")


def _mac(key: bytes, domain: bytes, patient: str) -> bytes:
    return hmac.new(key, domain + patient.encode("utf-8"), hashlib.sha256).digest()


def pseudonym(key: bytes, patient: str) -> str:
    """The research pseudonym of ``patient`` under ``key``: ``r-`` and 16 hex digits."""
    _check_key(key)
    return "r-" + _mac(key, b"pseudonym:", patient).hex()[:16]


def date_shift_days(key: bytes, patient: str) -> int:
    """Whole days (in [-180, +180]) every time of ``patient`` moves by under ``key``."""
    _check_key(key)
    # 64 bits reduced modulo 361: the bias is below 2**-55.
    draw = int.from_bytes(_mac(key, b"shift:", patient)[:8], "big")
    return draw % (2 * MAX_SHIFT_DAYS + 1) - MAX_SHIFT_DAYS


# -- export -----------------------------------------------------------------


def _id_set(values: Collection[str], name: str) -> frozenset[str]:
    if isinstance(values, str | bytes):
        raise InputError("must be a collection of strings, not one string", name)
    return frozenset(values)


def _window(start_us: int | None, end_us: int | None) -> list[sa.ColumnElement[bool]]:
    conditions: list[sa.ColumnElement[bool]] = []
    if start_us is not None:
        conditions.append(_OBS.c.effective_us >= start_us)
    if end_us is not None:
        conditions.append(_OBS.c.effective_us <= end_us)
    return conditions


def _current() -> list[sa.ColumnElement[bool]]:
    """Rows that count: not entered in error, not superseded by a newer version."""
    newer = _OBS.alias("newer")
    superseded = (
        sa.exists()
        .where(
            newer.c.source == _OBS.c.source,
            newer.c.source_id == _OBS.c.source_id,
            newer.c.version > _OBS.c.version,
        )
        .correlate(_OBS)
    )
    return [_OBS.c.status != _ENTERED_IN_ERROR, ~superseded]


def _export_value(system: str, code: str, value_num: float | None, text: str | None) -> Any:
    if value_num is not None:
        return float(value_num)
    spec = DEFAULT_REGISTRY.get(code, system)
    if text is not None and spec is not None and text in spec.values:
        return text
    return None  # free text (or no value): never exported


def export_observations(
    store: SqlStore,
    *,
    key: bytes,
    codes: Sequence[str] = (),
    excluded: Collection[str] = (),
    start_us: int | None = None,
    end_us: int | None = None,
    page_size: int = 1000,
) -> Iterator[dict[str, Any]]:
    """Pseudonymized, date-shifted observations for research, streamed.

    Yields ``{"subject", "code", "system", "value", "unit", "time", "flags"}``:
    ``subject`` is :func:`pseudonym`, ``time`` the ISO 8601 UTC time shifted by
    :func:`date_shift_days`, ``flags`` the quality flag names. ``codes`` limits the
    codes (all when empty), ``start_us``/``end_us`` the real (unshifted) effective
    times, inclusive. Patients in ``excluded`` (opted out) are never read. What is
    left out and why: see the module docstring. Each page is one short read, so no
    connection is held while the caller consumes rows.
    """
    _check_key(key)
    if page_size < 1:
        raise InputError(f"must be at least 1, got {page_size}", "page_size")
    code_list = sorted(_id_set(codes, "codes"))
    skip = _id_set(excluded, "excluded")
    filters = _window(start_us, end_us)
    if code_list:
        filters.append(_OBS.c.code.in_(code_list))
    with store._read() as conn:
        patients = [
            str(p)
            for p in conn.execute(sa.select(_OBS.c.patient_id).where(*filters).distinct()).scalars()
        ]
    subjects = sorted(
        (pseudonym(key, p), date_shift_days(key, p) * DAY_US, p) for p in patients if p not in skip
    )
    for subject, shift_us, patient in subjects:
        for row in _patient_rows(store, patient, filters, page_size):
            yield {
                "subject": subject,
                "code": row.code,
                "system": row.system,
                "value": _export_value(row.system, row.code, row.value_num, row.value_text),
                "unit": row.unit,
                "time": from_us(row.effective_us + shift_us).isoformat(),
                "flags": QualityFlag.names_of(row.flags),
            }


def _patient_rows(
    store: SqlStore, patient: str, filters: list[sa.ColumnElement[bool]], page_size: int
) -> Iterator[Any]:
    """Current observations of one patient in time order, one page per read."""
    base = (
        sa.select(
            _OBS.c.row_id,
            _OBS.c.system,
            _OBS.c.code,
            _OBS.c.value_num,
            _OBS.c.value_text,
            _OBS.c.unit,
            _OBS.c.effective_us,
            _OBS.c.flags,
        )
        .where(_OBS.c.patient_id == patient, *filters, *_current())
        .order_by(_OBS.c.effective_us, _OBS.c.row_id)
        .limit(page_size)
    )
    after: tuple[int, int] | None = None
    while True:
        query = base
        if after is not None:
            query = query.where(
                sa.or_(
                    _OBS.c.effective_us > after[0],
                    sa.and_(_OBS.c.effective_us == after[0], _OBS.c.row_id > after[1]),
                )
            )
        with store._read() as conn:
            rows = conn.execute(query).all()
        yield from rows
        if len(rows) < page_size:
            return
        after = (rows[-1].effective_us, rows[-1].row_id)


# -- privacy budget ---------------------------------------------------------


def _check_epsilon(epsilon: float, name: str = "epsilon") -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float):
        raise InputError(f"must be a number, got {type(epsilon).__name__}", name)
    value = float(epsilon)
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"must be positive and finite, got {epsilon}", name)
    return value


class PrivacyBudget:
    """The epsilon a researcher may still spend, kept in the store (``privacy_budgets``).

    A researcher without a row has ``default_limit`` and nothing spent; the row is
    written on the first :meth:`spend` or :meth:`set_limit`. Spends add up (basic
    sequential composition of pure-DP releases).
    """

    def __init__(self, store: SqlStore, researcher: str, *, default_limit: float = 1.0) -> None:
        if not isinstance(researcher, str) or not researcher:
            raise InputError("must be a non-empty string", "researcher")
        if not math.isfinite(default_limit) or default_limit < 0:
            raise InputError(f"must be finite and not negative, got {default_limit}", "limit")
        self.store = store
        self.researcher = researcher
        self.default_limit = float(default_limit)

    def __repr__(self) -> str:
        return f"PrivacyBudget(researcher={self.researcher!r})"

    def _state(self) -> tuple[float, float]:
        table = schema.privacy_budgets
        with self.store._read() as conn:
            row = conn.execute(
                sa.select(table.c.epsilon_limit, table.c.epsilon_spent).where(
                    table.c.researcher == self.researcher
                )
            ).first()
        if row is None:
            return self.default_limit, 0.0
        return float(row.epsilon_limit), float(row.epsilon_spent)

    def limit(self) -> float:
        return self._state()[0]

    def spent(self) -> float:
        return self._state()[1]

    def remaining(self) -> float:
        """Epsilon still available (never negative)."""
        limit, spent = self._state()
        return max(0.0, limit - spent)

    def _ensure_row(self, conn: Connection) -> None:
        conn.exec_driver_sql(
            "INSERT INTO privacy_budgets (researcher, epsilon_limit, epsilon_spent) "
            f"VALUES ({self.store._params(3)}) ON CONFLICT (researcher) DO NOTHING",
            (self.researcher, self.default_limit, 0.0),
        )

    def spend(self, epsilon: float) -> None:
        """Take ``epsilon`` from the budget, or raise :class:`BudgetExhausted` and take nothing.

        Check and update are one write transaction holding the row: SQLite's
        ``BEGIN IMMEDIATE`` serializes writers, PostgreSQL's ``SELECT ... FOR UPDATE``
        makes a concurrent spend wait for this one; so concurrent spends, from
        threads or processes, never exceed the limit.
        """
        amount = _check_epsilon(epsilon)
        table = schema.privacy_budgets
        with self.store._write() as conn:
            self._ensure_row(conn)
            row = conn.execute(
                sa.select(table.c.epsilon_limit, table.c.epsilon_spent)
                .where(table.c.researcher == self.researcher)
                .with_for_update()
            ).one()
            limit, spent = float(row.epsilon_limit), float(row.epsilon_spent)
            if spent + amount > limit + _EPSILON_SLACK:
                raise BudgetExhausted(
                    f"privacy budget of {self.researcher!r} exhausted: epsilon {amount:g} asked, "
                    f"{max(0.0, limit - spent):g} of {limit:g} left"
                )
            conn.execute(
                sa.update(table)
                .where(table.c.researcher == self.researcher)
                .values(epsilon_spent=spent + amount)
            )

    def set_limit(self, epsilon: float) -> None:
        """Set the researcher's total epsilon (what was spent stays spent)."""
        if isinstance(epsilon, bool) or not isinstance(epsilon, int | float):
            raise InputError(f"must be a number, got {type(epsilon).__name__}", "limit")
        if not math.isfinite(epsilon) or epsilon < 0:
            raise InputError(f"must be finite and not negative, got {epsilon}", "limit")
        with self.store._write() as conn:
            conn.exec_driver_sql(
                "INSERT INTO privacy_budgets (researcher, epsilon_limit, epsilon_spent) "
                f"VALUES ({self.store._params(3)}) ON CONFLICT (researcher) "
                "DO UPDATE SET epsilon_limit = excluded.epsilon_limit",
                (self.researcher, float(epsilon), 0.0),
            )


# -- differentially private aggregates ----------------------------------------


@dataclass(frozen=True, slots=True)
class DPResult:
    """A differentially private release.

    ``value`` is the noisy statistic, ``epsilon`` what it cost, ``n_noisy`` the noisy
    number of patients it covers (None when not released), ``mechanism`` how it was made.
    """

    value: float
    epsilon: float
    n_noisy: int | None
    mechanism: str


def _check_bounds(bounds: tuple[float, float]) -> tuple[float, float]:
    try:
        lower, upper = (float(b) for b in bounds)
    except (TypeError, ValueError) as exc:
        raise InputError("must be two numbers (lower, upper)", "bounds") from exc
    if not (math.isfinite(lower) and math.isfinite(upper)) or lower >= upper:
        raise InputError(f"must be finite with lower < upper, got {bounds}", "bounds")
    return lower, upper


def _input_space() -> tuple[dp.Domain, dp.Metric]:
    # One row per patient; neighbours differ by one patient added or removed.
    return dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.symmetric_distance()


def _laplace(prefix: dp.Transformation, epsilon: float) -> tuple[dp.Measurement, float]:
    """``prefix`` followed by Laplace noise of the least scale that is ``epsilon``-DP."""

    def chain(scale: float) -> dp.Measurement:
        return prefix >> dp.m.make_laplace(prefix.output_domain, prefix.output_metric, scale)

    scale = dp.binary_search_param(chain, d_in=1, d_out=epsilon)
    return chain(scale), scale


def _count_measurement(epsilon: float) -> tuple[dp.Measurement, float]:
    domain, metric = _input_space()
    return _laplace(dp.t.make_count(domain, metric), epsilon)


def _sum_measurement(epsilon: float, lower: float, upper: float) -> tuple[dp.Measurement, float]:
    domain, metric = _input_space()
    clamped_sum = dp.t.make_clamp(domain, metric, (lower, upper)) >> (
        dp.t.make_bounded_float_checked_sum(MAX_PATIENTS, (lower, upper))
    )
    return _laplace(clamped_sum, epsilon)


def _checked(measurement: dp.Measurement, epsilon: float) -> dp.Measurement:
    loss = float(measurement.map(1))  # type: ignore[no-untyped-call]
    if loss > epsilon * (1 + 1e-12):  # pragma: no cover - a defect, not an input error
        raise MedtwinError(f"measurement costs epsilon {loss}, more than {epsilon}")
    return measurement


def _release(measurement: dp.Measurement, data: list[float]) -> Any:
    """Run the mechanism: the one place a DP value comes into being."""
    return measurement(data)


def _aggregate_filters(
    code: str, system: str, start_us: int | None, end_us: int | None
) -> list[sa.ColumnElement[bool]]:
    if not isinstance(code, str) or not code:
        raise InputError("must be a non-empty string", "code")
    return [_OBS.c.code == code, _OBS.c.system == system, *_window(start_us, end_us), *_current()]


def _patient_means(
    store: SqlStore,
    code: str,
    system: str,
    start_us: int | None,
    end_us: int | None,
    skip: frozenset[str],
) -> list[float]:
    """One value per patient: the mean of the patient's numeric values of ``code``.

    Suspected artifacts are left out, as they are never scored.
    """
    query = (
        sa.select(_OBS.c.patient_id, sa.func.avg(_OBS.c.value_num))
        .where(
            *_aggregate_filters(code, system, start_us, end_us),
            _OBS.c.value_num.is_not(None),
            _OBS.c.flags.op("&")(_ARTIFACT) == 0,
        )
        .group_by(_OBS.c.patient_id)
    )
    with store._read() as conn:
        rows = conn.execute(query).all()
    means = [float(mean) for patient, mean in rows if patient not in skip and mean is not None]
    return [m for m in means if math.isfinite(m)]


def _patients_with(
    store: SqlStore,
    code: str,
    system: str,
    start_us: int | None,
    end_us: int | None,
    skip: frozenset[str],
) -> list[float]:
    query = (
        sa.select(_OBS.c.patient_id)
        .where(*_aggregate_filters(code, system, start_us, end_us))
        .distinct()
    )
    with store._read() as conn:
        patients = conn.execute(query).scalars().all()
    return [1.0 for patient in patients if patient not in skip]


def _check_size(data: list[float]) -> None:
    if len(data) > MAX_PATIENTS:
        raise InputError(f"more than {MAX_PATIENTS} patients in one release", "code")


def dp_mean(
    store: SqlStore,
    code: str,
    *,
    epsilon: float,
    bounds: tuple[float, float],
    budget: PrivacyBudget,
    excluded: Collection[str] = (),
    start_us: int | None = None,
    end_us: int | None = None,
    system: str = LOINC,
) -> DPResult:
    """Epsilon-DP mean over patients of each patient's mean of ``code`` in the window.

    Each patient's mean (current, not-in-error, non-artifact numeric values with
    effective time in [start_us, end_us]) is clamped to ``bounds``; the release is
    ``noisy clamped sum / noisy count`` (Laplace, epsilon/2 each, privacy unit the
    patient), clamped to ``bounds`` again. ``bounds`` must be chosen without looking
    at the data. ``epsilon`` is spent from ``budget`` before anything is computed
    with noise; :class:`BudgetExhausted` means nothing was released.
    """
    amount = _check_epsilon(epsilon)
    lower, upper = _check_bounds(bounds)
    skip = _id_set(excluded, "excluded")
    sum_measurement, sum_scale = _sum_measurement(amount / 2, lower, upper)
    count_measurement, count_scale = _count_measurement(amount / 2)
    measurement = _checked(dp.c.make_composition([sum_measurement, count_measurement]), amount)
    data = _patient_means(store, code, system, start_us, end_us, skip)
    _check_size(data)
    budget.spend(amount)
    noisy_sum, noisy_count = cast(list[Any], _release(measurement, data))
    count = max(int(noisy_count), 0)
    mean = min(max(float(noisy_sum) / max(count, 1), lower), upper)
    mechanism = (
        f"OpenDP Laplace on the sum of per-patient means clamped to [{lower:g}, {upper:g}] "
        f"(scale {sum_scale:.6g}, epsilon {amount / 2:g}) divided by the Laplace-noised "
        f"patient count (scale {count_scale:.6g}, epsilon {amount / 2:g}); "
        "privacy unit: one patient (symmetric distance 1), pure DP"
    )
    return DPResult(mean, amount, count, mechanism)


def dp_count(
    store: SqlStore,
    code: str,
    *,
    epsilon: float,
    budget: PrivacyBudget,
    excluded: Collection[str] = (),
    start_us: int | None = None,
    end_us: int | None = None,
    system: str = LOINC,
) -> DPResult:
    """Epsilon-DP number of patients with at least one current observation of ``code``.

    Counts patients (not readings), so the privacy unit is the patient and the
    count's sensitivity is 1; noise is discrete Laplace, the result is clamped at 0.
    ``epsilon`` is spent from ``budget`` before the noisy count is drawn.
    """
    amount = _check_epsilon(epsilon)
    skip = _id_set(excluded, "excluded")
    measurement, scale = _count_measurement(amount)
    measurement = _checked(measurement, amount)
    data = _patients_with(store, code, system, start_us, end_us, skip)
    _check_size(data)
    budget.spend(amount)
    count = max(int(_release(measurement, data)), 0)
    mechanism = (
        f"OpenDP discrete Laplace on the patient count (scale {scale:.6g}, epsilon {amount:g}); "
        "privacy unit: one patient (symmetric distance 1), pure DP"
    )
    return DPResult(float(count), amount, count, mechanism)
