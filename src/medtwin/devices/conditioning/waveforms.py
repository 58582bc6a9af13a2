"""Waveform segments (ECG, PPG): storage codec, chunking, band-pass and wavelet denoising.

A waveform is stored as chunks, not one row per sample: a :class:`WaveformSegment`
holds a start time (µs since the epoch, int64), a sampling rate (Hz) and a 1-D
float32 array of samples. Sample ``i`` of a segment was taken at
``start_us + round(i * 1e6 / rate_hz)``.

The sample codec (:func:`encode_samples` / :func:`decode_samples`) is lossless:
little-endian float32, bytes regrouped by significance (a "byte shuffle", so the
slowly changing sign/exponent bytes sit together) and zlib-compressed. Bit
patterns survive exactly, NaN payloads included. :meth:`WaveformSegment.to_bytes`
adds the metadata in a small header, and :meth:`WaveformSegment.to_row` gives one
flat row per chunk (metadata columns plus the sample blob) for a table.

:func:`chunk` cuts a long recording into fixed-length chunks whose start times are
computed from the recording's start (no drift); :func:`join` puts chunks back
together and reports the gaps where chunks are missing.

Filters work on 1-D arrays or on 2-D batches (segments x samples, along the last
axis): :func:`bandpass` (Butterworth, zero phase, ``sosfiltfilt``) and
:func:`wavelet_denoise` (PyWavelets, universal threshold).
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pywt
from numpy.typing import ArrayLike, NDArray
from scipy import signal

from medtwin.core.errors import InputError

__all__ = [
    "CODE_SYSTEM_MDC",
    "PASS_BANDS",
    "WAVEFORM_CODES",
    "JoinedWaveform",
    "WaveformGap",
    "WaveformSegment",
    "as_batch",
    "bandpass",
    "chunk",
    "decode_samples",
    "encode_samples",
    "join",
    "wavelet_denoise",
]

#: ISO/IEEE 11073-10101 nomenclature (MDC), the code system of bedside monitor waveforms.
CODE_SYSTEM_MDC = "urn:iso:std:iso:11073:10101"

#: Default (code, unit) per waveform kind: MDC_PULS_OXIM_PLETH and MDC_ECG_ELEC_POTL_II.
WAVEFORM_CODES: dict[str, tuple[str, str]] = {
    "ppg": ("150452", "[arb'U]"),
    "ecg": ("131330", "mV"),
}

WaveformKind = Literal["ppg", "ecg"]

#: Default pass bands (Hz) for :func:`bandpass`.
PASS_BANDS: dict[str, tuple[float, float]] = {"ppg": (0.5, 8.0), "ecg": (0.5, 40.0)}

_MAGIC = b"MTWF"
_VERSION = 1
_FILTER_SHUFFLE_ZLIB = 1
# magic, version, filter, start_us, rate_hz, n_samples, metadata length
_HEADER = struct.Struct("<4sBBqdII")
_BLOB_HEADER = struct.Struct("<BI")  # filter, n_samples
_DEFAULT_LEVEL = 4


def encode_samples(samples: ArrayLike, level: int = 6) -> bytes:
    """Samples as a compact, lossless blob: float32 LE, byte-shuffled, zlib (``level``)."""
    x = np.ascontiguousarray(samples, dtype="<f4")
    if x.ndim != 1:
        raise InputError(f"samples must be 1-D, got shape {x.shape}")
    shuffled = x.view(np.uint8).reshape(-1, 4).T.tobytes()
    return _BLOB_HEADER.pack(_FILTER_SHUFFLE_ZLIB, x.size) + zlib.compress(shuffled, level)


def decode_samples(blob: bytes) -> NDArray[np.float32]:
    """The float32 samples of a blob from :func:`encode_samples` (bit-exact)."""
    if len(blob) < _BLOB_HEADER.size:
        raise InputError("waveform blob too short")
    kind, n = _BLOB_HEADER.unpack_from(blob)
    if kind != _FILTER_SHUFFLE_ZLIB:
        raise InputError(f"unknown waveform encoding {kind}")
    try:
        raw = zlib.decompress(blob[_BLOB_HEADER.size :])
    except zlib.error as exc:
        raise InputError(f"corrupt waveform blob: {exc}") from exc
    if len(raw) != 4 * n:
        raise InputError(f"waveform blob holds {len(raw)} bytes, header says {n} samples")
    planes = np.frombuffer(raw, dtype=np.uint8).reshape(4, n)
    return np.ascontiguousarray(planes.T).view("<f4").reshape(n).astype(np.float32, copy=False)


def _offset_us(index: int | NDArray[np.int64], rate_hz: float) -> Any:
    """µs from the segment start to sample ``index`` (rounded to the nearest µs)."""
    return np.rint(np.asarray(index, dtype=np.float64) * (1e6 / rate_hz)).astype(np.int64)


@dataclass(frozen=True, eq=False)
class WaveformSegment:
    """One chunk of a regularly sampled waveform.

    ``start_us`` is the time of sample 0 in µs since the Unix epoch; ``rate_hz`` the
    sampling rate in Hz; ``samples`` a 1-D float32 array in ``unit``. ``kind`` is the
    signal family ("ppg" or "ecg"); ``code``/``system`` name the signal (MDC by default).
    """

    patient: str
    source: str
    kind: str
    start_us: int
    rate_hz: float
    samples: NDArray[np.float32]
    unit: str = ""
    code: str = ""
    system: str = CODE_SYSTEM_MDC

    def __post_init__(self) -> None:
        x = np.ascontiguousarray(self.samples, dtype=np.float32)
        if x.ndim != 1:
            raise InputError(f"samples must be 1-D, got shape {x.shape}")
        if not (math.isfinite(self.rate_hz) and self.rate_hz > 0):
            raise InputError(f"rate_hz must be positive and finite, got {self.rate_hz}")
        object.__setattr__(self, "samples", x)
        object.__setattr__(self, "start_us", int(self.start_us))
        object.__setattr__(self, "rate_hz", float(self.rate_hz))
        default_code, default_unit = WAVEFORM_CODES.get(self.kind, ("", ""))
        if not self.code:
            object.__setattr__(self, "code", default_code)
        if not self.unit:
            object.__setattr__(self, "unit", default_unit)

    @property
    def n_samples(self) -> int:
        return int(self.samples.size)

    @property
    def end_us(self) -> int:
        """Time (µs) where the next contiguous chunk starts: one period after the last sample."""
        return self.start_us + int(_offset_us(self.n_samples, self.rate_hz))

    def times_us(self) -> NDArray[np.int64]:
        """Sample times in µs since the epoch (int64)."""
        return self.start_us + _offset_us(np.arange(self.n_samples, dtype=np.int64), self.rate_hz)  # type: ignore[no-any-return]

    def _meta(self) -> dict[str, str]:
        return {
            "patient": self.patient,
            "source": self.source,
            "kind": self.kind,
            "code": self.code,
            "system": self.system,
            "unit": self.unit,
        }

    def same_series(self, other: WaveformSegment) -> bool:
        """True when both chunks belong to one recording (metadata and rate equal)."""
        return self._meta() == other._meta() and self.rate_hz == other.rate_hz

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WaveformSegment):
            return NotImplemented
        return (
            self.same_series(other)
            and self.start_us == other.start_us
            and self.samples.tobytes() == other.samples.tobytes()
        )

    __hash__ = None  # type: ignore[assignment]

    def to_bytes(self, level: int = 6) -> bytes:
        """The whole record (metadata and samples) as one self-describing blob."""
        meta = json.dumps(self._meta(), separators=(",", ":")).encode()
        header = _HEADER.pack(
            _MAGIC,
            _VERSION,
            _FILTER_SHUFFLE_ZLIB,
            self.start_us,
            self.rate_hz,
            self.n_samples,
            len(meta),
        )
        return header + meta + encode_samples(self.samples, level)

    @classmethod
    def from_bytes(cls, data: bytes) -> WaveformSegment:
        """Inverse of :meth:`to_bytes`."""
        if len(data) < _HEADER.size:
            raise InputError("waveform record too short")
        magic, version, _filter, start_us, rate_hz, n, meta_len = _HEADER.unpack_from(data)
        if magic != _MAGIC or version != _VERSION:
            raise InputError("not a medtwin waveform record")
        end = _HEADER.size + meta_len
        try:
            meta = json.loads(data[_HEADER.size : end])
        except ValueError as exc:
            raise InputError(f"corrupt waveform metadata: {exc}") from exc
        samples = decode_samples(data[end:])
        if samples.size != n:
            raise InputError(f"waveform record holds {samples.size} samples, header says {n}")
        return cls(start_us=start_us, rate_hz=rate_hz, samples=samples, **meta)

    def to_row(self, level: int = 6) -> dict[str, Any]:
        """One table row per chunk: metadata columns, time span (µs) and the sample blob."""
        return {
            **self._meta(),
            "start_us": self.start_us,
            "end_us": self.end_us,
            "rate_hz": self.rate_hz,
            "n_samples": self.n_samples,
            "samples": encode_samples(self.samples, level),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> WaveformSegment:
        """Inverse of :meth:`to_row` (extra keys such as ``end_us`` are ignored)."""
        samples = decode_samples(bytes(row["samples"]))
        if "n_samples" in row and samples.size != int(row["n_samples"]):
            raise InputError(f"row holds {samples.size} samples, n_samples says {row['n_samples']}")
        return cls(
            patient=row["patient"],
            source=row["source"],
            kind=row["kind"],
            code=row.get("code", ""),
            system=row.get("system", CODE_SYSTEM_MDC),
            unit=row.get("unit", ""),
            start_us=int(row["start_us"]),
            rate_hz=float(row["rate_hz"]),
            samples=samples,
        )

    def chunk(self, seconds: float = 60.0) -> list[WaveformSegment]:
        """This segment cut into chunks of ``seconds`` (see :func:`chunk`)."""
        return chunk(
            self.samples,
            self.start_us,
            self.rate_hz,
            seconds=seconds,
            patient=self.patient,
            source=self.source,
            kind=self.kind,
            code=self.code,
            system=self.system,
            unit=self.unit,
        )


def chunk(
    samples: ArrayLike,
    start_us: int,
    rate_hz: float,
    seconds: float = 60.0,
    *,
    patient: str = "",
    source: str = "",
    kind: str = "ppg",
    code: str = "",
    system: str = CODE_SYSTEM_MDC,
    unit: str = "",
) -> list[WaveformSegment]:
    """Cut a recording into chunks of ``round(seconds * rate_hz)`` samples (the last may be less).

    Chunk ``k`` starts at ``start_us + round(k * size * 1e6 / rate_hz)``, computed from
    the recording start so rounding never accumulates.
    """
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise InputError(f"samples must be 1-D, got shape {x.shape}")
    size = round(seconds * rate_hz)
    if size < 1:
        raise InputError(f"a chunk of {seconds} s at {rate_hz} Hz holds no sample")
    return [
        WaveformSegment(
            patient=patient,
            source=source,
            kind=kind,
            code=code,
            system=system,
            unit=unit,
            start_us=int(start_us) + int(_offset_us(i, rate_hz)),
            rate_hz=rate_hz,
            samples=x[i : i + size],
        )
        for i in range(0, x.size, size)
    ]


@dataclass(frozen=True)
class WaveformGap:
    """Samples missing between two chunks: ``[start_us, end_us)`` and how many samples."""

    start_us: int
    end_us: int
    n_samples: int


@dataclass(frozen=True)
class JoinedWaveform:
    """A reassembled recording: ``segment`` (gaps filled with ``fill``) and the ``gaps``."""

    segment: WaveformSegment
    gaps: list[WaveformGap] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.gaps


def join(chunks: Iterable[WaveformSegment], fill: float = math.nan) -> JoinedWaveform:
    """Reassemble chunks of one recording (any order) on a regular time axis.

    Chunk positions come from their start times: a chunk that starts later than the
    previous one ends leaves a :class:`WaveformGap`, filled with ``fill`` (NaN by default) so
    sample ``i`` stays at ``start_us + round(i * 1e6 / rate_hz)``. A chunk sent twice
    (same start and samples) is kept once; chunks of different recordings, or that
    overlap with different samples, raise :class:`InputError`.
    """
    parts = sorted(chunks, key=lambda c: c.start_us)
    if not parts:
        raise InputError("nothing to join")
    first = parts[0]
    rate = first.rate_hz
    pieces: list[NDArray[np.float32]] = []
    gaps: list[WaveformGap] = []
    filled = 0  # samples placed so far
    for part in parts:
        if not part.same_series(first):
            raise InputError(
                f"chunk at {part.start_us} belongs to another recording "
                f"({part.patient}/{part.source}/{part.code} at {part.rate_hz} Hz)"
            )
        index = round((part.start_us - first.start_us) * rate / 1e6)
        if index < filled:
            overlap = min(filled - index, part.n_samples)
            placed = np.concatenate(pieces)[index : index + overlap]
            if placed.tobytes() != part.samples[:overlap].tobytes():
                raise InputError(f"chunk at {part.start_us} overlaps different samples")
            tail = part.samples[overlap:]
        else:
            if index > filled:
                missing = index - filled
                gaps.append(
                    WaveformGap(
                        start_us=first.start_us + int(_offset_us(filled, rate)),
                        end_us=first.start_us + int(_offset_us(index, rate)),
                        n_samples=missing,
                    )
                )
                pieces.append(np.full(missing, fill, dtype=np.float32))
                filled = index
            tail = part.samples
        if tail.size:
            pieces.append(tail)
            filled += tail.size
    samples = np.concatenate(pieces) if pieces else np.empty(0, dtype=np.float32)
    joined = WaveformSegment(
        patient=first.patient,
        source=first.source,
        kind=first.kind,
        code=first.code,
        system=first.system,
        unit=first.unit,
        start_us=first.start_us,
        rate_hz=rate,
        samples=samples,
    )
    return JoinedWaveform(joined, gaps)


def bandpass(
    x: ArrayLike,
    rate_hz: float,
    kind: WaveformKind = "ppg",
    *,
    low_hz: float | None = None,
    high_hz: float | None = None,
    order: int = 2,
) -> NDArray[np.floating[Any]]:
    """Zero-phase Butterworth band-pass along the last axis (1-D or segments x samples).

    Pass band defaults by ``kind``: PPG 0.5–8 Hz, ECG 0.5–40 Hz; ``high_hz`` is capped
    below Nyquist. ``order`` is per pass of the forward-backward filter.
    """
    lo_default, hi_default = PASS_BANDS[kind]
    low = lo_default if low_hz is None else low_hz
    high = min(hi_default if high_hz is None else high_hz, 0.45 * rate_hz)
    if not 0 < low < high:
        raise InputError(f"invalid pass band {low}–{high} Hz at {rate_hz} Hz")
    sos = signal.butter(order, [low, high], btype="bandpass", fs=rate_hz, output="sos")
    arr = np.asarray(x)
    dtype = arr.dtype if arr.dtype in (np.float32, np.float64) else np.float64
    out: NDArray[np.floating[Any]] = signal.sosfiltfilt(sos, arr, axis=-1).astype(dtype, copy=False)
    return out


def _threshold(
    coeffs: NDArray[np.floating[Any]], thr: NDArray[np.floating[Any]], mode: str
) -> NDArray[np.floating[Any]]:
    if mode == "soft":
        mag = np.abs(coeffs)
        return np.sign(coeffs) * np.maximum(mag - thr, 0)  # type: ignore[no-any-return]
    if mode == "hard":
        return np.where(np.abs(coeffs) > thr, coeffs, 0)
    raise InputError(f"threshold mode must be 'soft' or 'hard', got {mode!r}")


def wavelet_denoise(
    x: ArrayLike,
    wavelet: str = "db4",
    level: int | None = None,
    mode: Literal["soft", "hard"] = "soft",
    *,
    rate_hz: float | None = None,
    keep_below_hz: float = 3.0,
    signal_extension: str = "symmetric",
) -> NDArray[np.floating[Any]]:
    """Wavelet shrinkage denoising (VisuShrink) along the last axis.

    ``x`` is 1-D or a 2-D batch (segments x samples); the whole batch goes through one
    ``pywt.wavedec``/``waverec`` pair. Per row, the noise level is estimated from the
    finest detail coefficients, ``sigma = median(|d1|) / 0.6745``, and every detail
    level is thresholded (``mode`` "soft" or "hard") at the universal threshold
    ``sigma * sqrt(2 ln n)``; the approximation is kept. float32 input stays float32.
    Rows with NaN come back NaN (fill gaps first).

    Soft shrinkage biases every coefficient it keeps by the threshold, so the pulse
    itself should sit in the approximation, not in thresholded detail bands. With
    ``level=None`` the depth is therefore the deepest whose approximation band
    ``[0, rate_hz / 2**(level+1)]`` still reaches ``keep_below_hz`` (default 3 Hz: the
    PPG fundamental up to 180 /min; raise it for ECG, e.g. 20 Hz). Without ``rate_hz``
    the default depth is 4. Either way it is capped by what the length allows.
    """
    arr = np.asarray(x)
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    if arr.ndim not in (1, 2):
        raise InputError(f"wavelet_denoise takes 1-D or 2-D input, got shape {arr.shape}")
    n = arr.shape[-1]
    w = pywt.Wavelet(wavelet)
    max_level = pywt.dwt_max_level(n, w.dec_len)
    if max_level < 1:
        return arr.copy()
    if level is None:
        if rate_hz is None:
            level = _DEFAULT_LEVEL
        else:
            level = max(1, math.floor(math.log2(rate_hz / (2.0 * keep_below_hz))))
    lev = max(1, min(int(level), max_level))
    coeffs = pywt.wavedec(arr, w, mode=signal_extension, level=lev, axis=-1)
    finest = coeffs[-1]
    sigma = np.median(np.abs(finest), axis=-1, keepdims=True) / 0.6745
    thr = (sigma * math.sqrt(2.0 * math.log(n))).astype(arr.dtype)
    shrunk = [coeffs[0]] + [_threshold(c, thr, mode) for c in coeffs[1:]]
    out: NDArray[np.floating[Any]] = pywt.waverec(shrunk, w, mode=signal_extension, axis=-1)
    return out[..., :n].astype(arr.dtype, copy=False)


def as_batch(segments: Sequence[WaveformSegment]) -> NDArray[np.float32]:
    """Equal-length segments stacked into a 2-D float32 array (segments x samples)."""
    if not segments:
        return np.empty((0, 0), dtype=np.float32)
    return np.stack([s.samples for s in segments])
