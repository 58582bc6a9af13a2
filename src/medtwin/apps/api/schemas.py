"""Shapes of the API's requests, answers and events (published under docs/schemas/)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from medtwin.data.vault import Demographics, Identifier

Band = Literal["low", "low-medium", "medium", "high"]
Status = Literal["stored", "duplicate", "conflict", "rejected"]


class ObservationItem(BaseModel):
    """One observation as a device or system sends it."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="The sender's id of this item; with source, the idempotency key")
    source: str = Field(description="The sending device or system")
    patient: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$")
    code: str = Field(description="LOINC code (or a code of `system`)")
    value: float | str
    unit: str = Field("", description="UCUM unit")
    time: str = Field(description="ISO 8601 time with zone, e.g. 2026-01-01T10:00:00Z")
    system: str = Field("http://loinc.org", description="Code system URI")
    status: Literal["final", "amended", "corrected", "entered-in-error"] = Field(
        "final", description="A correction sends the same id with a higher version"
    )
    version: int = Field(1, ge=1, le=1_000_000, description="Version of this result")


class ObservationBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    observations: list[ObservationItem]


class ItemResult(BaseModel):
    index: int
    id: str | None
    status: Status
    flags: list[str] = Field(default_factory=list)
    reason: str | None = None
    field: str | None = Field(None, description="Field at fault (rejected items)")
    location: str | None = Field(None, description="JSON path of the fault")


class IngestAnswer(BaseModel):
    results: list[ItemResult]
    summary: dict[Status, int]


class ErrorBody(BaseModel):
    code: str
    message: str
    location: str | None = None


class ErrorAnswer(BaseModel):
    error: ErrorBody


class Reading(BaseModel):
    value: float | str
    time: str
    flags: list[str]


class VitalValue(BaseModel):
    value: float | str
    unit: str
    time: str
    flags: list[str]
    artifact: Reading | None = Field(
        None,
        description="A newer reading suspected to be an artifact: shown, not scored "
        "(the value above stays in use)",
    )


class OtherValue(BaseModel):
    value: float | str
    unit: str
    time: str
    flags: list[str]
    system: str
    code: str


class News2(BaseModel):
    score: int | None = Field(ge=0, le=20)
    partial_score: int = Field(ge=0, le=20)
    band: Band | None
    subscores: dict[
        Literal[
            "respiration_rate",
            "spo2",
            "air_or_oxygen",
            "systolic_bp",
            "pulse",
            "consciousness",
            "temperature",
        ],
        int | None,
    ]
    missing: list[str]
    ignored: list[str] = Field(
        default_factory=list,
        description="Parameters whose newest reading was a suspected artifact and not scored",
    )


class Twin(BaseModel):
    patient: str
    time: str = Field(description="When the twin was evaluated (clock time)")
    spo2_scale: Literal[1, 2]
    vitals: dict[str, VitalValue] = Field(description="Newest value per LOINC code")
    other: list[OtherValue] = Field(description="Newest value of each unmapped code")
    news2: News2


class TwinEvent(Twin):
    type: Literal["twin.updated"]


class PatientOut(BaseModel):
    id: str
    pseudonym: str
    spo2_scale: Literal[1, 2]
    created: str


class PatientUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    spo2_scale: Literal[1, 2] | None = Field(
        None, description="NEWS2 SpO2 scale; 2 for hypercapnic respiratory failure"
    )
    demographics: Demographics | None = Field(
        None, description="Personal data, replaced whole; encrypted at rest"
    )

    @model_validator(mode="after")
    def _something(self) -> PatientUpdate:
        if self.spo2_scale is None and self.demographics is None:
            raise ValueError("give spo2_scale or demographics")
        return self


class PatientSearch(BaseModel):
    """Criteria of a patient search; every one given must match."""

    model_config = ConfigDict(extra="forbid")

    identifier: Identifier | None = None
    name: str | None = Field(None, max_length=200, description="name tokens, all must match")
    birth_year: int | None = Field(None, ge=1, le=9999)

    @model_validator(mode="after")
    def _something(self) -> PatientSearch:
        if self.identifier is None and not self.name and self.birth_year is None:
            raise ValueError("give identifier, name or birth_year")
        return self


class HistoryItem(BaseModel):
    id: str
    source: str
    system: str
    code: str
    value: float | str | None
    unit: str
    time: str
    status: str
    version: int
    flags: list[str]
    received: str


class HistoryAnswer(BaseModel):
    items: list[HistoryItem]
    next_cursor: str | None


class News2Point(BaseModel):
    time: str
    score: int | None
    partial_score: int
    band: Band | None


PUBLISHED: dict[str, type[BaseModel]] = {
    "observation-batch": ObservationBatch,
    "ingest-answer": IngestAnswer,
    "error": ErrorAnswer,
    "twin": Twin,
    "twin-event": TwinEvent,
    "patient": PatientOut,
    "history": HistoryAnswer,
}
"""Schemas written to docs/schemas/<name>.schema.json."""


def json_schemas() -> dict[str, dict[str, object]]:
    """The published JSON Schemas, by file stem."""
    out: dict[str, dict[str, object]] = {}
    for name, model in PUBLISHED.items():
        schema = model.model_json_schema()
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://medtwin.example/schemas/{name}.schema.json"
        out[name] = schema
    return out


class QuarantineOut(BaseModel):
    id: int
    received: str
    channel: str = Field(description="api, cli, fhir, mllp, mqtt, csv, replay")
    source: str | None
    location: str = Field(description="Where the fault is: JSON path, HL7 segment-field, file:line")
    reason: str
    payload: str = Field(description="The input as received")
    resolved: str | None = Field(None, description="When a replay took it in")


class ReplayAnswer(BaseModel):
    id: int
    taken: bool
    reason: str | None = None
    location: str | None = None


class InterventionOut(BaseModel):
    id: str
    source: str
    kind: str = Field(description="insulin-bolus, insulin-basal, meal, drug-dose, fluids, oxygen")
    amount: float = Field(description="In unit")
    unit: str
    time: str
    duration_s: float = Field(description="Infusion length, 0 for a bolus")
    drug: str | None = None
    route: str | None = None


class DerivedOutput(BaseModel):
    name: str
    value: float | None = Field(description="In unit; null when the module could not derive it")
    unit: str | None = Field(description="UCUM")
    code: str | None = Field(None, description="LOINC code, where one exists")


class DerivedOut(BaseModel):
    id: str = Field(description="Execution fingerprint: the same inputs give the same id")
    module: str
    version: str
    patient: str
    computed: str
    cached: bool = Field(description="Found under its fingerprint, not computed by this request")
    outputs: list[DerivedOutput]
    provenance: str = Field(description="Where the provenance tree of this value is served")


class ModuleInputOut(BaseModel):
    name: str
    kind: str = Field(description="observation, result or attribute")
    code: str | None = None
    window_s: float | None = Field(None, description="Observation window (s)")
    aggregate: str | None = Field(None, description="latest, mean, min, max, count or all")
    module: str | None = None
    output: str | None = None
    attribute: str | None = None


class ModuleOutputOut(BaseModel):
    name: str
    unit: str
    code: str | None
    description: str


class ModuleOut(BaseModel):
    name: str
    version: str
    published: bool = Field(
        description="computed and stored by its own service as time passes (a stateful "
        "twin such as the glucose filter); the planner reads its latest result"
    )
    parameters: dict[str, float | int | str | bool]
    inputs: list[ModuleInputOut]
    outputs: list[ModuleOutputOut]


class SeriesGap(BaseModel):
    start: str = Field(description="The reading before the gap, or the window start")
    end: str = Field(description="The reading after the gap, or the window end")
    length_s: float


class SeriesCounts(BaseModel):
    measured: int = Field(description="Grid times with a reading from within the step before")
    imputed: int = Field(description="Grid times carried forward or interpolated (flagged)")
    missing: int = Field(description="Grid times without a reading within max_age_s (null)")


class SeriesSkipped(BaseModel):
    artifact_suspected: int = Field(description="Readings flagged as suspected artifacts")
    non_numeric: int = Field(description="Readings without a numeric value")


class CodeSeries(BaseModel):
    unit: str | None = Field(description="UCUM unit of the readings")
    values: list[float | None] = Field(description="One per grid time; null: nothing recent")
    age_s: list[float | None] = Field(description="Age of the reading each value comes from")
    flags: list[list[str]] = Field(
        description="Per value: the reading's flags, and 'imputed' where not measured"
    )
    counts: SeriesCounts
    skipped: SeriesSkipped
    gaps: list[SeriesGap] = Field(description="Stretches without a reading over min_gap_s")


class SeriesAnswer(BaseModel):
    """One patient's codes on a common time grid; every imputed value flagged."""

    patient: str
    start: str
    end: str
    step_s: float
    max_age_s: float
    method: Literal["last", "linear"]
    fill: Literal["carry", "none"]
    smooth: Literal["none", "kalman"] = "none"
    times: list[str] = Field(description="The grid times, ISO 8601")
    series: dict[str, CodeSeries] = Field(description="Per code")


class WaveformItem(BaseModel):
    """One ECG or PPG segment as a device sends it: a start time, a rate and the samples.

    Give the samples as a JSON array (``samples``) or as base64 of little-endian
    float32 (``samples_b64``), not both. Segments longer than 60 s are stored as
    60 s chunks: the first under ``id``, chunk k under ``id#k``.
    """

    model_config = ConfigDict(extra="forbid")

    id: str = Field(
        description="The sender's id of this segment; with source, the idempotency key (no '#')"
    )
    source: str = Field(description="The sending device or system")
    patient: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$")
    kind: Literal["ppg", "ecg"]
    start: str = Field(description="Time of the first sample, ISO 8601 with zone")
    rate_hz: float = Field(ge=1, le=10_000, description="Sampling rate (Hz)")
    unit: str = Field("", description="UCUM unit; default [arb'U] (ppg), mV (ecg)")
    code: str = Field("", description="Code of the signal; default its MDC code")
    system: str = Field("", description="Code system; default ISO/IEEE 11073 MDC")
    samples: list[float] | None = Field(
        None, description="Finite numbers, 1 to 10 minutes of them at rate_hz"
    )
    samples_b64: str | None = Field(None, description="base64 of little-endian float32")


class WaveformBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    segments: list[WaveformItem]


class WaveformItemResult(BaseModel):
    index: int
    id: str | None
    status: Status
    chunks: int | None = Field(None, description="Chunks the segment was stored as")
    reason: str | None = None
    field: str | None = Field(None, description="Field at fault (rejected items)")
    location: str | None = Field(None, description="JSON path of the fault")


class WaveformIngestAnswer(BaseModel):
    results: list[WaveformItemResult]
    summary: dict[Status, int]


class WaveformGapOut(BaseModel):
    start: str = Field(description="Time of the first missing sample")
    end: str = Field(description="Time of the first sample after the gap")
    n_samples: int


class WaveformOut(BaseModel):
    """A patient's recording over a window: the samples on a regular time axis.

    Sample i was taken at ``start`` + round(i / rate_hz, µs); missing samples (the
    ``gaps``) are null. With no recording in the window, ``samples`` is empty and
    the recording's fields are null.
    """

    patient: str
    kind: Literal["ppg", "ecg"]
    source: str | None
    code: str | None
    start: str | None = Field(description="Time of the first sample in the window")
    end: str | None = Field(description="One sample period after the last sample")
    rate_hz: float | None
    unit: str | None
    samples: list[float | None]
    gaps: list[WaveformGapOut]


class HrvOut(BaseModel):
    """Heart rate and time-domain HRV of the gap-free stretches (of 20 s or more) of a window."""

    model_config = ConfigDict(populate_by_name=True)

    patient: str
    kind: Literal["ppg", "ecg"]
    bpm: float
    ibi_ms: float = Field(description="Mean accepted beat-to-beat interval")
    rmssd_ms: float | None
    sdnn_ms: float
    n_peaks: int
    n_rejected: int = Field(description="Beat intervals rejected as outliers")
    seconds: float = Field(description="Signal analysed (s), gaps and short stretches left out")
    start: str = Field(alias="from", description="First sample analysed")
    end: str = Field(alias="to", description="One period after the last sample analysed")
