"""Beat detection in PPG and ECG, RR intervals and time-domain heart-rate variability.

Detection is an adaptive moving-average threshold (after van Gent et al., HeartPy,
2019; an independent implementation in numba, with its own scale and fit criterion):

1. a centred moving average over ``window_s`` (0.75 s) follows the baseline;
2. the signal minus that baseline is compared with a lift of ``c * s``, where ``s``
   is the robust spread of the detrended signal and ``c`` runs over a grid
   (:data:`LIFTS`); every run of samples above the lifted baseline is one beat,
   its peak the largest sample of the run (runs cut by the start or end of the
   record are incomplete beats and are dropped; two runs closer than
   :data:`REFRACTORY` x 60 / ``bpm_max`` s, 250 ms by default, are one beat);
3. of the lifts whose beat rate lies within ``bpm_min``–``bpm_max``, the one with
   the most consistent rhythm wins: the most pairs of successive peak-to-peak
   intervals whose ratio lies within :data:`CONSISTENT_RATIO` (0.8–1.25), ties going
   to the smallest standard deviation of the intervals (HeartPy's sole criterion).

Lifting in units of the detrended signal's robust spread (1.4826 x MAD, not the
signal mean as in HeartPy) makes the result independent of the signal's offset and
gain and keeps drop-outs and clipping from inflating the scale. Counting consistent
interval pairs, rather than only minimising the interval SD, keeps a single long
drop-out (one huge interval) from deciding the threshold; split beats (a dicrotic
notch counted as a beat) alternate short and long intervals and score badly.

For ECG the detector runs on a QRS energy envelope (5–20 Hz band-pass, squared
derivative, 120 ms moving integration), and each beat is then placed on the R peak:
the extreme of the 0.5–40 Hz band-passed signal within ±100 ms, with the lead's
polarity taken from the majority of beats.

RR intervals (ms) come from the sample rate or from a per-sample timer column (ms)
for irregular sampling. Outliers are rejected much as HeartPy does: an interval is
rejected when it lies outside the median RR ± max(30 % of the median, 300 ms); the
interval after it is dropped too, as the beat that ended the bad interval is
suspect. RMSSD uses successive differences of accepted adjacent intervals only.
"""

from __future__ import annotations

import math
from typing import Any, Literal, TypedDict

import numpy as np
from numba import njit
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from medtwin.core.errors import InputError
from medtwin.devices.conditioning.waveforms import bandpass

__all__ = [
    "LIFTS",
    "HrvSummary",
    "RecordingHrv",
    "detect_peaks",
    "detect_peaks_batch",
    "gap_free_stretches",
    "heart_rate_bpm",
    "hrv_of_recording",
    "hrv_summary",
    "reject_outliers",
    "rmssd_ms",
    "rr_intervals_ms",
    "sample_rate_from_timer",
    "sdnn_ms",
]

PeakKind = Literal["ppg", "ecg"]

#: Threshold lifts tried, in robust standard deviations (1.4826 MAD) of the detrended signal.
LIFTS: NDArray[np.float64] = np.concatenate(([0.0], np.geomspace(0.1, 20.0, 24)))

#: Peaks closer than this fraction of the shortest admissible RR (60 / bpm_max s) merge.
REFRACTORY = 0.75

#: Two successive RR intervals are consistent when their ratio lies in this range.
CONSISTENT_RATIO = (0.8, 1.25)


class HrvSummary(TypedDict):
    """Heart rate (/min), mean RR and time-domain HRV (ms), beat counts."""

    bpm: float
    ibi_ms: float
    rmssd_ms: float
    sdnn_ms: float
    n_peaks: int
    n_rejected: int


# --------------------------------------------------------------------------- kernels


@njit(cache=True, nogil=True)
def _centred_mean(x: Any, width: int) -> Any:  # pragma: no cover - compiled
    """Moving average over ``width`` samples centred on each one (shorter at the ends)."""
    n = x.size
    cs = np.empty(n + 1)
    cs[0] = 0.0
    for i in range(n):
        cs[i + 1] = cs[i] + x[i]
    out = np.empty(n)
    half = width // 2
    for i in range(n):
        lo = max(0, i - half)
        hi = min(n, i - half + width)
        out[i] = (cs[hi] - cs[lo]) / (hi - lo)
    return out


@njit(cache=True, nogil=True)
def _runs_above(x: Any, d: Any, level: float, gap: int, out: Any) -> int:  # pragma: no cover
    """Peaks (argmax of ``x``) of complete runs where ``d > level``; returns how many.

    A peak closer than ``gap`` samples to the previous one is the same beat (a double
    hump): the higher of the two stays.
    """
    n = d.size
    k = 0
    inside = False
    start = 0
    best = 0
    best_v = 0.0
    for i in range(n):
        if d[i] > level:
            if not inside:
                inside = True
                start = i
                best = i
                best_v = x[i]
            elif x[i] > best_v:
                best = i
                best_v = x[i]
        elif inside:
            inside = False
            if start == 0:
                continue
            if k > 0 and best - out[k - 1] < gap:
                if best_v > x[out[k - 1]]:
                    out[k - 1] = best
            else:
                out[k] = best
                k += 1
    return k


@njit(cache=True, nogil=True)
def _regularity(p: Any, k: int, lo: float, hi: float) -> tuple[int, float]:  # pragma: no cover
    """Consistent successive interval pairs (ratio in ``lo``–``hi``) and the interval SD."""
    m = k - 1
    s = 0.0
    for j in range(m):
        s += p[j + 1] - p[j]
    mean = s / m
    v = 0.0
    consistent = 0
    for j in range(m):
        r = p[j + 1] - p[j]
        v += (r - mean) * (r - mean)
        if j > 0:
            ratio = r / (p[j] - p[j - 1])
            if lo < ratio < hi:
                consistent += 1
    return consistent, math.sqrt(v / m)


@njit(cache=True, nogil=True)
def _fit_row(
    x: Any,
    rate: float,
    width: int,
    lifts: Any,
    bpm_min: float,
    bpm_max: float,
    lo: float,
    hi: float,
    out: Any,
) -> int:  # pragma: no cover - compiled
    """Peaks of one record at the most regular admissible lift; returns how many (0: none)."""
    n = x.size
    base = _centred_mean(x, width)
    d = np.empty(n)
    for i in range(n):
        d[i] = x[i] - base[i]
    dev = np.abs(d - np.median(d))
    spread = 1.4826 * np.median(dev)
    if not spread > 0.0:
        spread = d.std()
    if not spread > 0.0:
        return 0
    minutes = n / rate / 60.0
    gap = int(REFRACTORY * 60.0 / bpm_max * rate)
    best_consistent = -1
    best_sd = np.inf
    best_lift = -1.0
    for c in lifts:
        k = _runs_above(x, d, c * spread, gap, out)
        if k < 3:
            continue
        bpm = k / minutes
        if bpm < bpm_min or bpm > bpm_max:
            continue
        consistent, sd = _regularity(out, k, lo, hi)
        if consistent > best_consistent or (consistent == best_consistent and sd < best_sd):
            best_consistent = consistent
            best_sd = sd
            best_lift = c
    if best_lift < 0.0:
        return 0
    return _runs_above(x, d, best_lift * spread, gap, out)


@njit(cache=True, nogil=True)
def _fit_batch(
    xs: Any,
    rate: float,
    width: int,
    lifts: Any,
    bpm_min: float,
    bpm_max: float,
    lo: float,
    hi: float,
    kmax: int,
) -> Any:  # pragma: no cover - compiled
    rows, n = xs.shape
    peaks = np.zeros((rows, kmax), dtype=np.int64)
    counts = np.zeros(rows, dtype=np.int64)
    scratch = np.empty(n // 2 + 2, dtype=np.int64)
    for r in range(rows):
        k = _fit_row(xs[r], rate, width, lifts, bpm_min, bpm_max, lo, hi, scratch)
        k = min(k, kmax)
        peaks[r, :k] = scratch[:k]
        counts[r] = k
    return peaks, counts


# --------------------------------------------------------------------------- detection


def _check_rate(rate_hz: float) -> float:
    rate = float(rate_hz)
    if not (math.isfinite(rate) and rate > 0):
        raise InputError(f"rate_hz must be positive and finite, got {rate_hz}")
    return rate


def _ecg_envelope(xs: NDArray[np.float64], rate: float) -> NDArray[np.float64]:
    """QRS energy: 5–20 Hz band-pass, squared derivative, 120 ms moving integration."""
    qrs = bandpass(xs, rate, "ecg", low_hz=5.0, high_hz=20.0)
    energy = np.gradient(qrs, axis=-1) ** 2
    width = max(1, round(0.12 * rate))
    out: NDArray[np.float64] = ndimage.uniform_filter1d(energy, width, axis=-1, mode="nearest")
    return out


def _refine_r(
    xs: NDArray[np.float64], rate: float, found: list[NDArray[np.intp]]
) -> list[NDArray[np.intp]]:
    """Move envelope peaks onto the R peak (extreme of the 0.5–40 Hz signal within ±100 ms).

    R peaks within 100 ms of either end (filter edge effects, a beat not seen whole)
    are dropped.
    """
    clean = np.atleast_2d(bandpass(xs, rate, "ecg"))
    half = max(1, round(0.1 * rate))
    offsets = np.arange(-half, half + 1)
    n = clean.shape[-1]
    refined: list[NDArray[np.intp]] = []
    for row, p in zip(clean, found, strict=True):
        if p.size == 0:
            refined.append(p)
            continue
        idx = np.clip(p[:, None] + offsets, 0, n - 1)
        win = row[idx]
        positive = np.median(win.max(axis=1)) >= np.median(-win.min(axis=1))
        pick = win.argmax(axis=1) if positive else win.argmin(axis=1)
        r = np.unique(idx[np.arange(p.size), pick])
        refined.append(r[(r >= half) & (r < n - half)].astype(np.intp))
    return refined


def detect_peaks_batch(
    xs: ArrayLike,
    rate_hz: float,
    kind: PeakKind = "ppg",
    *,
    window_s: float = 0.75,
    bpm_min: float = 40.0,
    bpm_max: float = 180.0,
) -> list[NDArray[np.intp]]:
    """Beat peaks (sample indices) of each row of a 2-D batch (segments x samples).

    ``kind`` "ppg" finds systolic peaks, "ecg" R peaks. An empty array means no
    admissible beat sequence (flat, too short, or a rate outside ``bpm_min``–``bpm_max``
    per minute). Samples must be finite: split recordings at gaps first.
    """
    rate = _check_rate(rate_hz)
    arr = np.asarray(xs, dtype=np.float64)
    if arr.ndim != 2:
        raise InputError(f"detect_peaks_batch takes a 2-D array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError("samples must be finite (split the recording at gaps first)")
    if kind not in ("ppg", "ecg"):
        raise InputError(f"kind must be 'ppg' or 'ecg', got {kind!r}")
    rows, n = arr.shape
    if rows == 0 or n < 3:
        return [np.empty(0, dtype=np.intp) for _ in range(rows)]
    work = _ecg_envelope(arr, rate) if kind == "ecg" else arr
    width = max(1, round(window_s * rate))
    kmax = int(bpm_max / 60.0 * n / rate) + 2
    lo, hi = CONSISTENT_RATIO
    peaks, counts = _fit_batch(
        np.ascontiguousarray(work), rate, width, LIFTS, float(bpm_min), float(bpm_max), lo, hi, kmax
    )
    found = [peaks[r, : counts[r]].astype(np.intp) for r in range(rows)]
    if kind == "ecg":
        found = _refine_r(arr, rate, found)
    return found


def detect_peaks(
    x: ArrayLike,
    rate_hz: float,
    kind: PeakKind = "ppg",
    *,
    window_s: float = 0.75,
    bpm_min: float = 40.0,
    bpm_max: float = 180.0,
) -> NDArray[np.intp]:
    """Beat peaks (sample indices) of a 1-D PPG (systolic peaks) or ECG (R peaks) record."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise InputError(f"detect_peaks takes a 1-D array, got shape {arr.shape}")
    return detect_peaks_batch(
        arr[None, :], rate_hz, kind, window_s=window_s, bpm_min=bpm_min, bpm_max=bpm_max
    )[0]


# --------------------------------------------------------------------------- intervals


def sample_rate_from_timer(timer: ArrayLike) -> float:
    """Mean sampling rate (Hz) of a per-sample timer column in ms."""
    t = np.asarray(timer, dtype=np.float64)
    if t.ndim != 1 or t.size < 2 or not t[-1] > t[0]:
        raise InputError("timer must be 1-D, increasing, with at least two samples (ms)")
    return float((t.size - 1) / (t[-1] - t[0]) * 1000.0)


def rr_intervals_ms(
    peaks: ArrayLike, rate_hz: float | None = None, timer: ArrayLike | None = None
) -> NDArray[np.float64]:
    """Peak-to-peak (RR) intervals in ms.

    From the sample rate (``rate_hz``), or, for irregular sampling, from ``timer``:
    the time of every sample in ms (e.g. a device's timer column), read at the peaks.
    """
    p = np.asarray(peaks, dtype=np.int64)
    if timer is not None:
        t = np.asarray(timer, dtype=np.float64)
        if p.size and (p.min() < 0 or p.max() >= t.size):
            raise InputError("a peak lies outside the timer column")
        return np.diff(t[p])
    if rate_hz is None:
        raise InputError("rr_intervals_ms needs rate_hz or a timer column")
    return np.diff(p).astype(np.float64) * (1000.0 / _check_rate(rate_hz))


def reject_outliers(
    rr_ms: ArrayLike, *, fraction: float = 0.3, floor_ms: float = 300.0
) -> NDArray[np.bool_]:
    """Mask of accepted RR intervals.

    An interval is rejected when it lies outside median ± max(``fraction`` * median,
    ``floor_ms``); the interval that follows a rejected one is rejected with it (it
    starts at the suspect beat). HeartPy centres the band on the mean; the median
    keeps a few gross artefacts from shifting it.
    """
    rr = np.asarray(rr_ms, dtype=np.float64)
    if rr.size == 0:
        return np.zeros(0, dtype=np.bool_)
    centre = float(np.median(rr))
    band = max(fraction * centre, floor_ms)
    bad = (rr <= centre - band) | (rr >= centre + band)
    bad[1:] |= bad[:-1]
    return ~bad


def _accepted(rr_ms: ArrayLike, accepted: ArrayLike | None) -> tuple[Any, Any]:
    rr = np.asarray(rr_ms, dtype=np.float64)
    ok = np.ones(rr.shape, dtype=np.bool_) if accepted is None else np.asarray(accepted, bool)
    if ok.shape != rr.shape:
        raise InputError("accepted mask and RR intervals differ in length")
    return rr, ok


def heart_rate_bpm(rr_ms: ArrayLike, accepted: ArrayLike | None = None) -> float:
    """Heart rate in beats per minute, 60000 / mean accepted RR (ms); NaN if none."""
    rr, ok = _accepted(rr_ms, accepted)
    return float(60000.0 / rr[ok].mean()) if ok.any() else math.nan


def sdnn_ms(rr_ms: ArrayLike, accepted: ArrayLike | None = None) -> float:
    """SDNN in ms: standard deviation (population, ddof=0) of the accepted RR intervals."""
    rr, ok = _accepted(rr_ms, accepted)
    return float(rr[ok].std()) if ok.any() else math.nan


def rmssd_ms(rr_ms: ArrayLike, accepted: ArrayLike | None = None) -> float:
    """RMSSD in ms: root mean square of successive RR differences.

    Only pairs of adjacent intervals that are both accepted count; NaN if there is none.
    """
    rr, ok = _accepted(rr_ms, accepted)
    pair = ok[1:] & ok[:-1]
    if not pair.any():
        return math.nan
    return float(np.sqrt(np.mean(np.diff(rr)[pair] ** 2)))


def hrv_summary(
    x: ArrayLike,
    rate_hz: float | None = None,
    kind: PeakKind = "ppg",
    *,
    timer: ArrayLike | None = None,
    peaks: ArrayLike | None = None,
    window_s: float = 0.75,
    bpm_min: float = 40.0,
    bpm_max: float = 180.0,
) -> HrvSummary:
    """Detect beats in ``x`` and summarise: bpm, mean RR, RMSSD and SDNN (ms), counts.

    Give ``rate_hz`` (Hz), or a ``timer`` column (ms per sample) from which the mean
    rate is taken for detection and the RR intervals are read. ``peaks`` skips the
    detection. ``n_rejected`` counts RR intervals rejected as outliers.
    """
    if timer is not None and rate_hz is None:
        rate_hz = sample_rate_from_timer(timer)
    if rate_hz is None:
        raise InputError("hrv_summary needs rate_hz or a timer column")
    p = (
        detect_peaks(x, rate_hz, kind, window_s=window_s, bpm_min=bpm_min, bpm_max=bpm_max)
        if peaks is None
        else np.asarray(peaks, dtype=np.intp)
    )
    rr = rr_intervals_ms(p, rate_hz, timer)
    ok = reject_outliers(rr)
    return HrvSummary(
        bpm=heart_rate_bpm(rr, ok),
        ibi_ms=float(rr[ok].mean()) if ok.any() else math.nan,
        rmssd_ms=rmssd_ms(rr, ok),
        sdnn_ms=sdnn_ms(rr, ok),
        n_peaks=int(p.size),
        n_rejected=int((~ok).sum()),
    )


class RecordingHrv(TypedDict):
    """:func:`hrv_of_recording`: ``first``/``last`` are the sample indices [first, last)
    of the stretches used; ``seconds`` their total length."""

    bpm: float
    ibi_ms: float
    rmssd_ms: float | None
    sdnn_ms: float
    n_peaks: int
    n_rejected: int
    seconds: float
    first: int
    last: int


def gap_free_stretches(x: ArrayLike) -> list[tuple[int, int]]:
    """``[start, stop)`` of each run of finite samples (gaps are NaN)."""
    finite = np.concatenate(([False], np.isfinite(np.asarray(x, dtype=np.float64)), [False]))
    edges = np.flatnonzero(np.diff(finite.astype(np.int8)))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def hrv_of_recording(
    samples: ArrayLike, rate_hz: float, kind: PeakKind = "ppg", *, min_stretch_s: float = 20.0
) -> RecordingHrv:
    """Heart rate and HRV of a recording with gaps (NaN), over its stretches of at least
    ``min_stretch_s`` seconds.

    Over one stretch this is :func:`hrv_summary` of its samples; over several, the beat
    intervals of every stretch are pooled (outliers judged against all of them) and
    RMSSD only pairs successive intervals of one stretch: no interval spans a gap.
    InputError when no stretch is long enough or no regular beat is found.
    """
    x = np.asarray(samples, dtype=np.float64)
    shortest = math.ceil(min_stretch_s * rate_hz)
    runs = gap_free_stretches(x)
    used = [(a, b) for a, b in runs if b - a >= shortest]
    if not used:
        longest = max((b - a for a, b in runs), default=0) / rate_hz
        raise InputError(
            f"HRV needs a gap-free stretch of at least {min_stretch_s:g} s of {kind}; "
            f"the longest is {longest:.3g} s",
            "samples",
        )
    rr_parts: list[NDArray[np.float64]] = []
    n_peaks = 0
    for a, b in used:
        peaks = detect_peaks(x[a:b], rate_hz, kind)
        n_peaks += int(peaks.size)
        rr_parts.append(rr_intervals_ms(peaks, rate_hz))
    rr = np.concatenate(rr_parts)
    ok = reject_outliers(rr)
    if not ok.any():
        raise InputError(f"no regular heartbeat found in the {kind}", "samples")
    stretch = np.concatenate([np.full(p.size, k) for k, p in enumerate(rr_parts)])
    pair = ok[1:] & ok[:-1] & (stretch[1:] == stretch[:-1])
    rmssd = float(np.sqrt(np.mean(np.diff(rr)[pair] ** 2))) if pair.any() else None
    return {
        "bpm": heart_rate_bpm(rr, ok),
        "ibi_ms": float(rr[ok].mean()),
        "rmssd_ms": rmssd,
        "sdnn_ms": sdnn_ms(rr, ok),
        "n_peaks": n_peaks,
        "n_rejected": int((~ok).sum()),
        "seconds": sum(b - a for a, b in used) / rate_hz,
        "first": used[0][0],
        "last": used[-1][1],
    }
