"""Conditioning pipelines per stream, applied to each ingestion batch.

A pipeline names the code it conditions, the sources (device or system ids, a
glob such as ``spo2-probe-*``) it applies to, and its steps in order:

- ``calibrate``: the newest calibration registered for the (source, code), if
  any, maps the reading onto the reference scale (flag ``calibrated``);
- ``rate_of_change``: a change from the last accepted reading larger than
  ``max_per_min`` (canonical unit per minute) times the minutes since it, and
  than that budget for one minute (``min_interval_s``, default 60 s), is suspect;
- ``hampel``: a reading more than ``k`` robust SDs from the median of the
  ``window`` readings ending at it (the stream's recent ones and this batch's)
  is suspect; judged as readings arrive, never waiting for later ones.

Suspect readings are kept and flagged ``artifact-suspected``, never dropped; a
real change outlasts both detectors (the rate check compares with the last
accepted reading as time passes, the Hampel median moves with the new level),
so a sustained drop is accepted after minutes, not hidden. What a pipeline did
to a reading is described as JSON for its provenance (:meth:`Conditioner.condition`).

Configuration (TOML, ``MEDTWIN_CONDITIONING_FILE``)::

    [[stream]]
    code = "59408-5"          # SpO2
    sources = "*"
    steps = [
      { kind = "rate_of_change", max_per_min = 10 },
      { kind = "hampel", window = 11, k = 3, min_sigma = 1 },
    ]

Without a file, every code with default rate limits (heart and respiratory rate,
SpO2, blood pressure, temperature, glucose) is calibrated when its device has a
calibration, then gets rate-of-change and Hampel checks.
"""

from __future__ import annotations

import fnmatch
import json
import threading
import tomllib
import warnings
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

from medtwin.core.errors import ConfigurationError
from medtwin.core.records import Observation, QualityFlag
from medtwin.data.codes import DEFAULT_REGISTRY, CodeRegistry
from medtwin.devices.conditioning.artifacts import (
    DEFAULT_RATE_LIMITS,
    MAD_TO_SD,
    ArtifactRule,
    rate_of_change_mask,
)
from medtwin.devices.conditioning.calibration import Calibration
from medtwin.devices.conditioning.streams import pad_streams

__all__ = ["Conditioner", "PipelineConfig", "Step", "StreamPipeline"]

STEP_KINDS = ("calibrate", "rate_of_change", "hampel")
_ARTIFACT = int(QualityFlag.ARTIFACT_SUSPECTED)
_CALIBRATED = int(QualityFlag.CALIBRATED)
# A change within a minute may use the whole minute's budget: readings a second apart
# (beat-to-beat heart rate) move more per second than the per-minute limit allows.
_MIN_INTERVAL_S = 60.0
_MIN_TRAILING = 5  # readings a stream needs before the Hampel check judges: a short
# memory would let a burst outvote the baseline


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a pipeline: its kind and parameters."""

    kind: str
    params: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class StreamPipeline:
    """The steps applied to readings of ``code`` from sources matching ``sources``."""

    code: str
    steps: tuple[Step, ...]
    sources: str = "*"

    def matches(self, source: str, code: str) -> bool:
        return code == self.code and fnmatch.fnmatchcase(source, self.sources)

    def rule(self, registry: CodeRegistry = DEFAULT_REGISTRY) -> ArtifactRule:
        """The detector settings of this pipeline's rate and Hampel steps."""
        rule = ArtifactRule.for_code(self.code, registry)
        rate = next((s for s in self.steps if s.kind == "rate_of_change"), None)
        hampel = next((s for s in self.steps if s.kind == "hampel"), None)
        rule = replace(
            rule,
            max_rate_per_min=(
                float(rate.params.get("max_per_min", rule.max_rate_per_min))
                if rate
                else float("inf")
            ),
        )
        if hampel is not None:
            rule = replace(
                rule,
                hampel_window=int(hampel.params.get("window", rule.hampel_window)),
                hampel_k=float(hampel.params.get("k", rule.hampel_k)),
                hampel_min_sigma=float(hampel.params.get("min_sigma", rule.hampel_min_sigma)),
            )
        return rule

    @property
    def calibrates(self) -> bool:
        return any(step.kind == "calibrate" for step in self.steps)

    @property
    def hampel(self) -> bool:
        return any(step.kind == "hampel" for step in self.steps)


@dataclass(frozen=True)
class PipelineConfig:
    """Every stream pipeline; the first that matches a reading applies."""

    pipelines: tuple[StreamPipeline, ...]

    @classmethod
    def default(cls) -> PipelineConfig:
        """For each code with a default rate limit: the device's calibration if one is
        registered, then rate-of-change and Hampel checks."""
        return cls(
            tuple(
                StreamPipeline(code, (Step("calibrate"), Step("rate_of_change"), Step("hampel")))
                for code in DEFAULT_RATE_LIMITS
            )
        )

    @classmethod
    def from_toml(cls, path: Path) -> PipelineConfig:
        """Read a configuration file; ConfigurationError naming the fault and its place."""
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigurationError(f"conditioning file {path}: {exc}") from exc
        return cls.from_dict(document, where=str(path))

    @classmethod
    def from_dict(
        cls, document: Mapping[str, Any], *, where: str = "conditioning"
    ) -> PipelineConfig:
        streams = document.get("stream", [])
        if not isinstance(streams, list):
            raise ConfigurationError(f"{where}: 'stream' must be an array of tables")
        pipelines = []
        for i, item in enumerate(streams):
            at = f"{where}: stream[{i}]"
            if not isinstance(item, dict) or not isinstance(item.get("code"), str):
                raise ConfigurationError(f"{at}: needs a string 'code'")
            sources = item.get("sources", "*")
            if not isinstance(sources, str):
                raise ConfigurationError(f"{at}.sources: must be a glob string")
            steps = []
            for j, raw in enumerate(item.get("steps", [])):
                step_at = f"{at}.steps[{j}]"
                if isinstance(raw, str):
                    raw = {"kind": raw}
                if not isinstance(raw, dict) or raw.get("kind") not in STEP_KINDS:
                    raise ConfigurationError(
                        f"{step_at}: kind must be one of {', '.join(STEP_KINDS)}"
                    )
                params = {k: v for k, v in raw.items() if k != "kind"}
                bad = [
                    k
                    for k, v in params.items()
                    if not isinstance(v, int | float) or isinstance(v, bool)
                ]
                if bad:
                    raise ConfigurationError(f"{step_at}.{bad[0]}: must be a number")
                steps.append(Step(raw["kind"], params))
            pipelines.append(StreamPipeline(item["code"], tuple(steps), sources))
        return cls(tuple(pipelines))

    def for_reading(self, source: str, code: str) -> StreamPipeline | None:
        for pipeline in self.pipelines:
            if pipeline.matches(source, code):
                return pipeline
        return None


class Conditioner:
    """Applies the pipelines to batches of observations, remembering each stream's recent
    readings (a stream is one device's readings of one code for one patient) so that
    detectors see across batches.

    Thread-safe. The memory is of readings conditioned, so a batch that later fails
    to be stored still counts in it: detectors are heuristics, and the store's
    idempotency makes a resent batch condition the same way.
    """

    def __init__(
        self,
        config: PipelineConfig | None = None,
        *,
        registry: CodeRegistry = DEFAULT_REGISTRY,
        memory: int = 16,
    ) -> None:
        self.config = config or PipelineConfig.default()
        self.registry = registry
        self.memory = memory
        self._recent: dict[tuple[str, str, str], deque[tuple[int, float]]] = {}
        self._calibrations: dict[tuple[str, str], Calibration] = {}
        self._rules: dict[int, Any] = {}
        self._lock = threading.Lock()

    def set_calibration(self, source: str, code: str, calibration: Calibration) -> None:
        """Use ``calibration`` for readings of ``code`` from ``source`` from now on.

        The streams' remembered readings move to the new scale too, so that the first
        calibrated readings are not taken for a jump.
        """
        with self._lock:
            previous = self._calibrations.get((source, code))
            self._calibrations[(source, code)] = calibration
            for (_, stream_code, stream_source), memory in self._recent.items():
                if stream_source != source or stream_code != code:
                    continue
                raw = [(t, v if previous is None else float(previous.invert(v))) for t, v in memory]
                memory.clear()
                memory.extend((t, float(calibration.apply(v))) for t, v in raw)

    def calibration(self, source: str, code: str) -> Calibration | None:
        with self._lock:
            return self._calibrations.get((source, code))

    def condition(
        self, observations: Sequence[Observation]
    ) -> tuple[list[Observation], list[str | None]]:
        """The observations as conditioned, and per observation what was done (JSON) or None.

        Only numeric readings of codes with a pipeline change; flags are added, never
        removed. Readings of one stream are judged in time order with its memory.
        """
        out = list(observations)
        notes: list[dict[str, Any] | None] = [None] * len(out)
        groups: dict[int, tuple[StreamPipeline, list[int]]] = {}
        with self._lock:
            for i, obs in enumerate(out):
                if obs.value_num is None:
                    continue
                pipeline = self.config.for_reading(obs.source, obs.code)
                if pipeline is None or not pipeline.steps:
                    continue
                groups.setdefault(id(pipeline), (pipeline, []))[1].append(i)
            for pipeline, positions in groups.values():
                if pipeline.calibrates:
                    self._calibrate(out, notes, positions)
                self._detect(pipeline, out, notes, positions)
        texts = [
            None if note is None else json.dumps(note, separators=(",", ":")) for note in notes
        ]
        return out, texts

    def _calibrate(
        self, out: list[Observation], notes: list[dict[str, Any] | None], positions: list[int]
    ) -> None:
        for i in positions:
            obs = out[i]
            calibration = self._calibrations.get((obs.source, obs.code))
            if calibration is None or obs.value_num is None:
                continue
            value = float(calibration.apply(obs.value_num))
            out[i] = obs._replace(value_num=value, flags=obs.flags | _CALIBRATED)
            notes[i] = {"raw": obs.value_num, "calibration": calibration.as_dict()}

    def _detect(
        self,
        pipeline: StreamPipeline,
        out: list[Observation],
        notes: list[dict[str, Any] | None],
        positions: list[int],
    ) -> None:
        rule = self._rules.get(id(pipeline))
        if rule is None:
            rule = self._rules[id(pipeline)] = pipeline.rule(self.registry)
        # A stream is one device's readings of one code for one patient: artifacts are
        # a device's, and two devices (a monitor and a spot check) each keep their level.
        streams: dict[tuple[str, str, str], list[int]] = {}
        for i in positions:
            streams.setdefault((out[i].patient, out[i].code, out[i].source), []).append(i)
        keys = list(streams)
        times, values, places, order = [], [], [], []
        for key in keys:
            members = sorted(streams[key], key=lambda i: out[i].effective_us)
            # Remembered and new readings in time order (a late reading may be older
            # than some remembered ones); where each new one landed.
            merged = sorted(
                [(t, v, -1) for t, v in self._recent.get(key, ())]
                + [
                    (out[i].effective_us, float(out[i].value_num or 0.0), j)
                    for j, i in enumerate(members)
                ],
                key=lambda reading: reading[0],
            )
            place = [0] * len(members)
            for position, (_, _, j) in enumerate(merged):
                if j >= 0:
                    place[j] = position
            places.append(place)
            order.append(members)
            times.append([t for t, _, _ in merged])
            values.append([v for _, v, _ in merged])
        batch = pad_streams(times, values)
        rate = np.zeros(batch.values.shape, dtype=bool)
        hampel = np.zeros(batch.values.shape, dtype=bool)
        if np.isfinite(rule.max_rate_per_min):
            rate = rate_of_change_mask(
                batch.times_us,
                batch.values,
                rule.max_rate_per_min,
                min_interval_s=_min_interval(pipeline),
            )
        if pipeline.hampel:
            hampel = trailing_hampel(
                batch.values,
                window=rule.hampel_window,
                k=rule.hampel_k,
                min_sigma=rule.hampel_min_sigma,
                min_count=max(rule.hampel_min_count, _MIN_TRAILING),
            )
        for row, (key, members) in enumerate(zip(keys, order, strict=True)):
            memory = self._recent.setdefault(key, deque(maxlen=self.memory))
            for j, i in enumerate(members):
                obs = out[i]
                memory.append((obs.effective_us, float(obs.value_num or 0.0)))
                at = places[row][j]
                detectors = [
                    name
                    for name, mask in (("rate_of_change", rate), ("hampel", hampel))
                    if mask[row, at]
                ]
                if detectors:
                    out[i] = obs._replace(flags=obs.flags | _ARTIFACT)
                    note = notes[i] or {}
                    note["artifact"] = {"detectors": detectors, "rule": _rule(rule, pipeline)}
                    notes[i] = note


def _min_interval(pipeline: StreamPipeline) -> float:
    step = next((s for s in pipeline.steps if s.kind == "rate_of_change"), None)
    return float(step.params.get("min_interval_s", _MIN_INTERVAL_S)) if step else _MIN_INTERVAL_S


def _rule(rule: ArtifactRule, pipeline: StreamPipeline) -> dict[str, float]:
    out: dict[str, float] = {}
    if np.isfinite(rule.max_rate_per_min):  # JSON has no infinity
        out["max_rate_per_min"] = rule.max_rate_per_min
    if pipeline.hampel:
        out |= {"hampel_window": rule.hampel_window, "hampel_k": rule.hampel_k}
    return out


def trailing_hampel(
    values: NDArray[np.float64], *, window: int, k: float, min_sigma: float, min_count: int
) -> NDArray[np.bool_]:
    """Hampel outliers of ``(streams, samples)`` values judged as they arrive.

    Each value is compared with the median of the ``window`` values ending at it
    (itself included; NaN ignored), outlier when further than ``k`` robust SDs
    (1.4826 MAD, at least ``min_sigma``); fewer than ``min_count`` values: no
    verdict. Unlike the centred filter, a verdict never waits for later readings.
    """
    if values.shape[1] == 0:
        return np.zeros(values.shape, dtype=bool)
    padded = np.pad(values, ((0, 0), (window - 1, 0)), constant_values=np.nan)
    view = sliding_window_view(padded, window, axis=1)  # (streams, n, window)
    count = np.sum(~np.isnan(view), axis=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows: no verdict
        median = np.nanmedian(view, axis=2)
        mad = np.nanmedian(np.abs(view - median[..., np.newaxis]), axis=2)
    scale = np.maximum(MAD_TO_SD * mad, min_sigma)
    with np.errstate(invalid="ignore"):
        out: NDArray[np.bool_] = (count >= min_count) & (np.abs(values - median) > k * scale)
    return out
