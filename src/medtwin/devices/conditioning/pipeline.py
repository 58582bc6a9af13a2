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
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from medtwin.core.errors import ConfigurationError
from medtwin.core.records import Observation, QualityFlag
from medtwin.data.codes import DEFAULT_REGISTRY, CodeRegistry
from medtwin.devices.conditioning.artifacts import (
    DEFAULT_RATE_LIMITS,
    MAD_TO_SD,
    ArtifactRule,
)
from medtwin.devices.conditioning.calibration import Calibration

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
    """Applies the pipelines to batches of observations, remembering of each stream (one
    device's readings of one code for one patient) its last raw readings and its last
    accepted one, so that detectors see across batches.

    Thread-safe. The memory is of readings conditioned, so a batch that later fails
    to be stored still counts in it: detectors are heuristics. Readings arriving
    later than newer ones of their stream are judged against the stream as it is.
    """

    def __init__(
        self,
        config: PipelineConfig | None = None,
        *,
        registry: CodeRegistry = DEFAULT_REGISTRY,
    ) -> None:
        self.config = config or PipelineConfig.default()
        self.registry = registry
        self._states: dict[tuple[str, str, str], _StreamState] = {}
        self._calibrations: dict[tuple[str, str], Calibration] = {}
        self._rules: dict[int, tuple[StreamPipeline, _Settings | None]] = {}
        self._lock = threading.Lock()

    def set_calibration(self, source: str, code: str, calibration: Calibration) -> None:
        """Use ``calibration`` for readings of ``code`` from ``source`` from now on.

        The streams' remembered readings move to the new scale too, so that the first
        calibrated readings are not taken for a jump.
        """
        with self._lock:
            previous = self._calibrations.get((source, code))
            self._calibrations[(source, code)] = calibration
            for (_, stream_code, stream_source), state in self._states.items():
                if stream_source != source or stream_code != code:
                    continue
                state.rescale(previous, calibration)

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
            self._detect(out, notes, [(p, positions) for p, positions in groups.values()])
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
        out: list[Observation],
        notes: list[dict[str, Any] | None],
        groups: list[tuple[StreamPipeline, list[int]]],
    ) -> None:
        """Rate-of-change and trailing Hampel checks of every reading, all streams at once.

        A stream is one device's readings of one code for one patient (artifacts are a
        device's; a monitor and a spot check each keep their level). Readings are taken
        in rounds: round ``r`` judges the ``r``-th new reading (in time order) of every
        stream, against its state: the last accepted reading (rate of change) and its
        last raw readings (Hampel window).
        """
        streams: dict[tuple[str, str, str], list[int]] = {}
        settings: dict[tuple[str, str, str], _Settings] = {}
        for pipeline, positions in groups:
            setting = self._settings(pipeline)
            if setting is None:
                continue
            for i in positions:
                key = (out[i].patient, out[i].code, out[i].source)
                streams.setdefault(key, []).append(i)
                settings[key] = setting
        if not streams:
            return
        for members in streams.values():
            members.sort(key=lambda i: out[i].effective_us)
        width = max(s.window for s in settings.values())
        rounds = max(len(members) for members in streams.values())
        for r in range(rounds):
            keys = [key for key, members in streams.items() if len(members) > r]
            self._judge(out, notes, keys, [streams[key][r] for key in keys], settings, width)

    def _judge(
        self,
        out: list[Observation],
        notes: list[dict[str, Any] | None],
        keys: list[tuple[str, str, str]],
        positions: list[int],
        settings: dict[tuple[str, str, str], _Settings],
        width: int,
    ) -> None:
        k = len(keys)
        states = [self._states.get(key) or _StreamState(deque(maxlen=width - 1)) for key in keys]
        rules = [settings[key] for key in keys]
        value = np.array([float(out[i].value_num or 0.0) for i in positions])
        time = np.array([out[i].effective_us for i in positions], dtype=np.int64)
        last_v = np.array([np.nan if st.last_value is None else st.last_value for st in states])
        last_t = np.array([st.last_us for st in states], dtype=np.int64)
        limit = np.array([rule.max_rate_per_min for rule in rules])
        interval = np.array([rule.min_interval_s for rule in rules])
        minutes = np.maximum((time - last_t) / 1e6, interval) / 60.0
        with np.errstate(invalid="ignore"):
            rate = (
                np.isfinite(limit) & ~np.isnan(last_v) & (np.abs(value - last_v) > limit * minutes)
            )
        window = np.full((k, width), np.nan)
        for row, (state, rule) in enumerate(zip(states, rules, strict=True)):
            recent = list(state.raw)[-(rule.window - 1) :] if rule.window > 1 else []
            if recent:
                window[row, width - 1 - len(recent) : width - 1] = recent
        window[:, -1] = value
        count = np.sum(~np.isnan(window), axis=1)
        hampel = np.zeros(k, dtype=bool)
        use = np.array([rule.hampel for rule in rules]) & (
            count >= np.array([rule.min_count for rule in rules])
        )
        if use.any():
            chosen, counts = window[use], count[use]
            median = _row_median(chosen, counts)
            mad = _row_median(np.abs(chosen - median[:, np.newaxis]), counts)
            scale = np.maximum(MAD_TO_SD * mad, np.array([rule.min_sigma for rule in rules])[use])
            spread = np.array([rule.k for rule in rules])[use] * scale
            hampel[use] = np.abs(value[use] - median) > spread
        for row, (key, i) in enumerate(zip(keys, positions, strict=True)):
            state = states[row]
            state.raw.append(float(value[row]))
            detectors = [
                name for name, mask in (("rate_of_change", rate), ("hampel", hampel)) if mask[row]
            ]
            if detectors:
                obs = out[i]
                out[i] = obs._replace(flags=obs.flags | _ARTIFACT)
                note = notes[i] or {}
                note["artifact"] = {"detectors": detectors, "rule": rules[row].summary}
                notes[i] = note
            else:
                state.last_value, state.last_us = float(value[row]), int(time[row])
            self._states[key] = state

    def _settings(self, pipeline: StreamPipeline) -> _Settings | None:
        held = self._rules.get(id(pipeline))
        if held is None:
            rule = pipeline.rule(self.registry)
            rate = np.isfinite(rule.max_rate_per_min)
            if not rate and not pipeline.hampel:
                held = self._rules[id(pipeline)] = (pipeline, None)
            else:
                held = self._rules[id(pipeline)] = (
                    pipeline,
                    _Settings(
                        max_rate_per_min=rule.max_rate_per_min,
                        min_interval_s=_min_interval(pipeline),
                        hampel=pipeline.hampel,
                        window=rule.hampel_window if pipeline.hampel else 1,
                        k=rule.hampel_k,
                        min_sigma=rule.hampel_min_sigma,
                        min_count=max(rule.hampel_min_count, _MIN_TRAILING),
                        summary=_rule(rule, pipeline),
                    ),
                )
        return held[1]


def _row_median(values: NDArray[np.float64], counts: NDArray[np.intp]) -> NDArray[np.float64]:
    """Median of each row's ``counts`` non-NaN values (NaN sorts last; np.nanmedian
    takes a slow masked-array path on small rows)."""
    ordered = np.sort(values, axis=1)
    rows = np.arange(values.shape[0])
    low = ordered[rows, (counts - 1) // 2]
    high = ordered[rows, counts // 2]
    out: NDArray[np.float64] = (low + high) / 2
    return out


@dataclass
class _StreamState:
    """What detectors remember of a stream: its last raw readings, its last accepted one."""

    raw: deque[float]
    last_value: float | None = None
    last_us: int = 0

    def rescale(self, previous: Calibration | None, calibration: Calibration) -> None:
        """Move the remembered readings from ``previous``'s scale to ``calibration``'s."""

        def moved(value: float) -> float:
            raw = value if previous is None else float(previous.invert(value))
            return float(calibration.apply(raw))

        self.raw = deque((moved(v) for v in self.raw), maxlen=self.raw.maxlen)
        if self.last_value is not None:
            self.last_value = moved(self.last_value)


@dataclass(frozen=True)
class _Settings:
    """One pipeline's detector settings, as the vectorized checks read them."""

    max_rate_per_min: float
    min_interval_s: float
    hampel: bool
    window: int
    k: float
    min_sigma: float
    min_count: int
    summary: dict[str, float]


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
