"""Waveforms (ECG, PPG): ingest segments, read a window back, heart rate and HRV of it.

``POST /api/v1/waveforms`` takes ``{"segments": [...]}`` (see ``WaveformItem``): each
segment is checked on its own, cut into 60 s chunks and stored in one transaction
with the batch; a refused segment is answered with its location
(``segments[2].rate_hz``) and quarantined raw on the ``waveforms`` channel.
Roles, source ownership of device keys, care teams and size limits are those of
``POST /api/v1/observations``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from numpy.typing import NDArray
from starlette.concurrency import run_in_threadpool

from medtwin.apps.api.auth import Policy, Principal
from medtwin.apps.api.context import ServiceContext
from medtwin.apps.api.deps import Context, guard
from medtwin.apps.api.routes.observations import read_batch
from medtwin.apps.api.routes.patients import parse_query_time
from medtwin.apps.api.schemas import (
    ErrorAnswer,
    HrvOut,
    WaveformBatch,
    WaveformIngestAnswer,
    WaveformOut,
)
from medtwin.core.clock import to_iso
from medtwin.core.errors import InputError, NotFoundError
from medtwin.core.records import Patient
from medtwin.data.accounts import Role
from medtwin.data.store import AppendStatus, QuarantineEntry
from medtwin.data.validation import (
    ID_PATTERN,
    MAX_TEXT,
    json_kind,
    parse_time_us,
    storable,
    text_reason,
)
from medtwin.data.waveforms import WaveformStore
from medtwin.devices.conditioning.peaks import hrv_of_recording
from medtwin.devices.conditioning.waveforms import (
    CODE_SYSTEM_MDC,
    WAVEFORM_CODES,
    JoinedWaveform,
    WaveformGap,
    WaveformSegment,
    join,
)

router = APIRouter(tags=["waveforms"])
WRITE = Policy.allow(Role.DEVICE, Role.ADMIN, action="write")
READ = Policy.allow(Role.CLINICIAN, Role.ADMIN, action="read", patient_scoped=True)

#: Quarantine channel of refused segments (not "api": its replay takes observation items).
CHANNEL = "waveforms"
RATE_RANGE_HZ = (1.0, 10_000.0)
#: The longest segment one item may carry, and the longest window one GET reads (s).
MAX_SEGMENT_S = 600.0
MAX_WINDOW_S = 600.0
#: Stored chunk length (s).
CHUNK_S = 60.0
#: HRV needs a gap-free stretch at least this long (s).
MIN_STRETCH_S = 20.0

_FIELDS = frozenset(
    {"id", "source", "patient", "kind", "start", "rate_hz", "unit", "code", "system"}
    | {"samples", "samples_b64"}
)
_REQUIRED = ("id", "source", "patient", "kind", "start", "rate_hz")
_FLOAT32_MAX = float(np.finfo(np.float32).max)

_POST_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorAnswer, "description": "Body is not JSON"},
    413: {"model": ErrorAnswer, "description": "Body or batch too large"},
    422: {"model": ErrorAnswer, "description": "Body is not a waveform batch"},
}
_GET_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorAnswer},
    422: {"model": ErrorAnswer, "description": "Bad window, or nothing to answer from"},
}


# --------------------------------------------------------------------------- ingest


@dataclass(frozen=True, slots=True)
class _Fault:
    """Why item ``index`` was refused: the field, the reason and the JSON path below it."""

    index: int
    field: str
    reason: str
    item: Any
    path: str = ""  # below the field, e.g. "[17]" for one sample

    def location(self) -> str:
        where = f"segments[{self.index}]"
        return f"{where}.{self.field}{self.path}" if self.field else where


@router.post(
    "/api/v1/waveforms",
    response_model=WaveformIngestAnswer,
    responses=_POST_ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": WaveformBatch.model_json_schema()}},
        }
    },
)
async def post_waveforms(
    request: Request, context: Context, principal: Annotated[Principal, guard(WRITE)]
) -> JSONResponse:
    """Store a batch of ECG/PPG segments; one result per segment, answered once durable.

    A segment: ``{"id", "source", "patient", "kind": "ppg"|"ecg", "start", "rate_hz"}``,
    optionally ``unit``, ``code``, ``system``, and its samples as ``samples`` (numbers)
    or ``samples_b64`` (base64 of little-endian float32). Rates 1-10000 Hz, 1 sample
    to 10 minutes, finite samples, not starting ahead of the clock. A device's API key
    writes only for the sources it owns; new patients first seen through a key bound
    to a care team join that team.
    """
    items = await read_batch(request, context, principal, "segments")
    if isinstance(items, JSONResponse):
        return items
    sources = principal.sources if principal.role is Role.DEVICE else None
    results = await run_in_threadpool(
        lambda: _ingest(context, items, sources=sources, care_team=principal.care_team)
    )
    summary = {"stored": 0, "duplicate": 0, "conflict": 0, "rejected": 0}
    for result in results:
        summary[result["status"]] += 1
    for status, n in summary.items():
        if n:
            context.ingestor.metrics.items.labels(CHANNEL, status).inc(n)
    return JSONResponse({"results": results, "summary": summary})


def _ingest(
    context: ServiceContext,
    items: Sequence[Any],
    *,
    sources: frozenset[str] | None,
    care_team: str | None,
) -> list[dict[str, Any]]:
    now = context.clock.now_us()
    max_future_us = round(context.settings.max_future_s * 1_000_000)
    accepted: list[tuple[int, str, list[WaveformSegment]]] = []
    faults: list[_Fault] = []
    for index, item in enumerate(items):
        checked = _check_item(item, index, now_us=now, max_future_us=max_future_us)
        if isinstance(checked, _Fault):
            faults.append(checked)
        elif sources is not None and checked[1].source not in sources:
            source = checked[1].source
            reason = f"source {source!r} is not a device of this API key"
            faults.append(_Fault(index, "source", reason, item))
        else:
            item_id, segment = checked
            accepted.append((index, item_id, segment.chunk(CHUNK_S)))
    pairs = [
        (_chunk_id(item_id, k), part)
        for _, item_id, chunks in accepted
        for k, part in enumerate(chunks)
    ]
    runtime = context.runtime
    fresh = sorted({segment.patient for _, segment in pairs if segment.patient not in runtime})
    new_patients = [Patient(p, "pt-" + secrets.token_hex(8), created_us=now) for p in fresh]
    rejected = [
        QuarantineEntry(
            channel=CHANNEL,
            location=fault.location(),
            reason=fault.reason,
            payload=_raw_text(fault.item),
            source=_source_of(fault.item),
            received_us=now,
        )
        for fault in faults
    ]
    statuses = WaveformStore(context.store).append(
        pairs,
        received_us=now,
        channel=CHANNEL,
        new_patients=new_patients,
        care_team=care_team,
        rejected=rejected,
    )
    for patient in fresh:
        if patient not in runtime:
            runtime.add(patient)
    results: list[dict[str, Any]] = []
    position = 0
    for index, item_id, chunks in accepted:
        mine = statuses[position : position + len(chunks)]
        position += len(chunks)
        results.append(
            {"index": index, "id": item_id, "status": _item_status(mine), "chunks": len(chunks)}
        )
    for fault in faults:
        given = fault.item.get("id") if isinstance(fault.item, dict) else None
        results.append(
            {
                "index": fault.index,
                "id": given if isinstance(given, str) else None,
                "status": "rejected",
                "reason": fault.reason,
                "field": fault.field or None,
                "location": fault.location(),
            }
        )
    return sorted(results, key=lambda r: int(r["index"]))


def _chunk_id(item_id: str, k: int) -> str:
    """The stored id of chunk ``k`` of a segment: its own id for the first, ``id#k`` after."""
    return item_id if k == 0 else f"{item_id}#{k}"


def _item_status(statuses: Sequence[AppendStatus]) -> str:
    """A segment is a conflict if any chunk is, stored if any chunk is new, else a duplicate."""
    if AppendStatus.CONFLICT in statuses:
        return AppendStatus.CONFLICT.value
    if AppendStatus.STORED in statuses:
        return AppendStatus.STORED.value
    return AppendStatus.DUPLICATE.value


def _check_item(
    item: Any, index: int, *, now_us: int, max_future_us: int
) -> tuple[str, WaveformSegment] | _Fault:
    """The item's id and segment, or the first fault found in it."""

    def fault(name: str, reason: str, path: str = "") -> _Fault:
        return _Fault(index, name, reason, item, path)

    if type(item) is not dict:
        return fault("", f"segment must be a JSON object, got {json_kind(item)}")
    unknown = sorted(str(k) for k in item if k not in _FIELDS)
    if unknown:
        return fault(unknown[0], f"unknown field {unknown[0]!r}")
    for name in _REQUIRED:
        if item.get(name) is None:
            return fault(name, f"missing required field {name!r}")
    texts: dict[str, str] = {}
    for name in ("id", "source", "unit", "code", "system"):
        value = item.get(name)
        optional = name in ("unit", "code", "system")
        if optional and (value is None or value == ""):
            texts[name] = ""
            continue
        if type(value) is not str or not value or len(value) > MAX_TEXT or not storable(value):
            return fault(name, text_reason(value))
        texts[name] = value
    if "#" in texts["id"]:
        return fault("id", "id must not contain '#' (it separates the ids of stored chunks)")
    patient = item["patient"]
    if type(patient) is not str or ID_PATTERN.fullmatch(patient) is None:
        return fault(
            "patient", "patient must be 1-64 characters of letters, digits, '.', '_' or '-'"
        )
    kind = item["kind"]
    if kind not in WAVEFORM_CODES:
        return fault("kind", f"kind must be one of {', '.join(sorted(WAVEFORM_CODES))}")
    rate = item["rate_hz"]
    low, high = RATE_RANGE_HZ
    if type(rate) not in (int, float) or not low <= rate <= high:
        return fault("rate_hz", f"rate_hz must be a number from {low:g} to {high:g} Hz")
    rate = float(rate)
    start_text = item["start"]
    if type(start_text) is not str:
        return fault("start", f"start must be an ISO 8601 string, got {json_kind(start_text)}")
    try:
        start_us = parse_time_us(start_text)
    except (ValueError, OverflowError) as exc:
        return fault("start", f"unparseable time {start_text[:64]!r}: {exc}")
    ahead = f"{max_future_us / 1e6:g} s ahead of the clock"
    if start_us > now_us + max_future_us:
        return fault("start", f"start is more than {ahead}")
    samples = _samples(item, index)
    if isinstance(samples, _Fault):
        return samples
    longest = round(MAX_SEGMENT_S * rate)
    if not 1 <= samples.size <= longest:
        name = "samples" if "samples" in item else "samples_b64"
        return fault(
            name,
            f"a segment holds 1 to {longest} samples ({MAX_SEGMENT_S / 60:g} minutes at "
            f"{rate:g} Hz), got {samples.size}",
        )
    segment = WaveformSegment(
        patient=patient,
        source=texts["source"],
        kind=kind,
        start_us=start_us,
        rate_hz=rate,
        samples=samples,
        unit=texts["unit"],
        code=texts["code"],
        system=texts["system"] or CODE_SYSTEM_MDC,
    )
    last_us = int(segment.times_us()[-1])
    if last_us > now_us + max_future_us:
        return fault("start", f"the segment's last sample is more than {ahead}")
    return texts["id"], segment


def _samples(item: dict[str, Any], index: int) -> NDArray[np.float32] | _Fault:
    """The item's samples as float32, from ``samples`` or ``samples_b64`` (exactly one)."""
    given = [name for name in ("samples", "samples_b64") if item.get(name) is not None]
    if len(given) != 1:
        reason = "give the samples as samples or as samples_b64" + (", not both" if given else "")
        return _Fault(index, "samples", reason, item)
    if given[0] == "samples":
        values = item["samples"]
        if type(values) is not list:
            reason = f"samples must be an array of numbers, got {json_kind(values)}"
            return _Fault(index, "samples", reason, item)
        for j, value in enumerate(values):
            if type(value) is not float and type(value) is not int:
                reason = f"sample must be a number, got {json_kind(value)}"
                return _Fault(index, "samples", reason, item, f"[{j}]")
            if not -_FLOAT32_MAX <= value <= _FLOAT32_MAX:
                return _Fault(index, "samples", _not_finite(value), item, f"[{j}]")
        return np.asarray(values, dtype=np.float64).astype(np.float32)
    text = item["samples_b64"]
    if type(text) is not str:
        reason = f"samples_b64 must be a base64 string, got {json_kind(text)}"
        return _Fault(index, "samples_b64", reason, item)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        return _Fault(index, "samples_b64", f"samples_b64 is not base64: {exc}", item)
    if len(raw) % 4:
        reason = f"samples_b64 holds {len(raw)} bytes, not whole float32 samples"
        return _Fault(index, "samples_b64", reason, item)
    samples = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(samples))
    if bad.size:
        j = int(bad[0])
        reason = (
            f"samples must be finite: sample {j} is {float(samples[j])} "
            f"({bad.size} non-finite samples)"
        )
        return _Fault(index, "samples_b64", reason, item)
    return samples


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class _Window:
    """The recording in a window: samples from the first in the window, NaN in the gaps."""

    segment: WaveformSegment
    gaps: list[WaveformGap]
    end_us: int  # one period after the last sample


def _load(
    context: ServiceContext,
    patient: str,
    kind: str,
    start: str,
    end: str,
    source: str | None,
    code: str | None,
) -> _Window | None:
    """The patient's ``kind`` recording between ``start`` and ``end`` (None when there is none)."""
    if context.store.patient(patient) is None:
        raise NotFoundError(f"no patient {patient!r}")
    start_us = _query_time(start, "from")
    end_us = _query_time(end, "to")
    if end_us <= start_us:
        raise InputError("'to' must be later than 'from'", "query.to")
    if end_us - start_us > MAX_WINDOW_S * 1_000_000:
        raise InputError(
            f"a window may span at most {MAX_WINDOW_S:g} s ({MAX_WINDOW_S / 60:g} minutes), "
            f"this one spans {(end_us - start_us) / 1e6:g} s",
            "query.to",
        )
    chunks = WaveformStore(context.store).segments(
        patient, kind=kind, code=code, source=source, start_us=start_us, end_us=end_us
    )
    if not chunks:
        return None
    series = sorted({(c.source, c.system, c.code, c.unit, c.rate_hz) for c in chunks})
    if len(series) > 1:
        named = "; ".join(f"source {s!r} code {c!r} at {r:g} Hz" for s, _, c, _, r in series)
        raise InputError(
            f"the window holds {len(series)} {kind} recordings ({named}): choose one with "
            "the source (and code) query parameters",
            "query.source",
        )
    return _trim(join(chunks), start_us, end_us)


def _trim(joined: JoinedWaveform, start_us: int, end_us: int) -> _Window | None:
    """The samples of ``joined`` taken in ``[start_us, end_us)``, with the gaps among them."""
    whole = joined.segment
    n = whole.n_samples
    rate = whole.rate_hz
    # Time of sample i (and of the end, i = n) as WaveformSegment.times_us computes it.
    times = whole.start_us + np.rint(np.arange(n + 1, dtype=np.float64) * (1e6 / rate)).astype(
        np.int64
    )
    first = int(np.searchsorted(times[:n], start_us, side="left"))
    stop = int(np.searchsorted(times[:n], end_us, side="left"))
    if stop <= first:
        return None
    gaps: list[WaveformGap] = []
    for gap in joined.gaps:
        g0 = int(np.searchsorted(times[:n], gap.start_us, side="left"))
        a, b = max(g0, first), min(g0 + gap.n_samples, stop)
        if a < b:
            gaps.append(WaveformGap(int(times[a]), int(times[b]), b - a))
    segment = WaveformSegment(
        patient=whole.patient,
        source=whole.source,
        kind=whole.kind,
        start_us=int(times[first]),
        rate_hz=rate,
        samples=whole.samples[first:stop],
        unit=whole.unit,
        code=whole.code,
        system=whole.system,
    )
    return _Window(segment, gaps, int(times[stop]))


@router.get(
    "/api/v1/patients/{patient}/waveforms",
    response_model=WaveformOut,
    responses=_GET_ERRORS,
    dependencies=[guard(READ)],
)
async def get_waveform(
    patient: str,
    context: Context,
    kind: Annotated[Literal["ppg", "ecg"], Query(description="ppg or ecg")],
    start: Annotated[str, Query(alias="from", description="ISO 8601 with zone, inclusive")],
    end: Annotated[str, Query(alias="to", description="ISO 8601 with zone, exclusive")],
    source: Annotated[str | None, Query(description="Only this sender's recording")] = None,
    code: Annotated[str | None, Query(description="Only this signal code")] = None,
) -> JSONResponse:
    """The patient's recording in ``[from, to)`` (at most 10 minutes), gaps as null samples."""
    window = await run_in_threadpool(
        lambda: _load(context, patient, kind, start, end, source, code)
    )
    if window is None:
        empty: dict[str, Any] = dict.fromkeys(("source", "code", "start", "end", "rate_hz", "unit"))
        return JSONResponse({"patient": patient, "kind": kind, **empty, "samples": [], "gaps": []})
    segment = window.segment
    values: list[float | None] = segment.samples.tolist()
    if window.gaps:
        values = [None if v is None or math.isnan(v) else v for v in values]
    return JSONResponse(
        {
            "patient": patient,
            "kind": kind,
            "source": segment.source,
            "code": segment.code,
            "start": to_iso(segment.start_us),
            "end": to_iso(window.end_us),
            "rate_hz": segment.rate_hz,
            "unit": segment.unit,
            "samples": values,
            "gaps": [
                {"start": to_iso(g.start_us), "end": to_iso(g.end_us), "n_samples": g.n_samples}
                for g in window.gaps
            ],
        }
    )


@router.get(
    "/api/v1/patients/{patient}/waveforms/hrv",
    response_model=HrvOut,
    responses=_GET_ERRORS,
    dependencies=[guard(READ)],
)
async def get_hrv(
    patient: str,
    context: Context,
    kind: Annotated[Literal["ppg", "ecg"], Query(description="ppg or ecg")],
    start: Annotated[str, Query(alias="from", description="ISO 8601 with zone, inclusive")],
    end: Annotated[str, Query(alias="to", description="ISO 8601 with zone, exclusive")],
    source: Annotated[str | None, Query(description="Only this sender's recording")] = None,
    code: Annotated[str | None, Query(description="Only this signal code")] = None,
) -> JSONResponse:
    """Heart rate and time-domain HRV of the recording in ``[from, to)`` (at most 10 minutes).

    Beats are detected in each gap-free stretch of at least 20 s (shorter ones and
    gaps are left out); beat intervals never span a gap.
    """

    def compute() -> dict[str, Any]:
        window = _load(context, patient, kind, start, end, source, code)
        if window is None:
            raise InputError(f"no {kind} recording of patient {patient!r} in the window", "query")
        return {"patient": patient, "kind": kind, **_hrv(window, kind)}

    return JSONResponse(await run_in_threadpool(compute))


def _hrv(window: _Window, kind: Literal["ppg", "ecg"]) -> dict[str, Any]:
    """:func:`hrv_of_recording` of the window, with its times."""
    segment = window.segment
    try:
        found = hrv_of_recording(
            segment.samples, segment.rate_hz, kind, min_stretch_s=MIN_STRETCH_S
        )
    except InputError as exc:
        raise InputError(f"{exc.reason} in the window", "query") from exc
    edges = np.rint(np.asarray([found["first"], found["last"]]) * (1e6 / segment.rate_hz))
    times = segment.start_us + edges
    return {
        **{k: v for k, v in found.items() if k not in ("first", "last")},
        "from": to_iso(int(times[0])),
        "to": to_iso(int(times[1])),
    }


# --------------------------------------------------------------------------- helpers


def _query_time(text: str, name: str) -> int:
    moment = parse_query_time(text, name)
    if moment is None:  # pragma: no cover - the parameter is required
        raise InputError(f"missing {name!r}", f"query.{name}")
    return moment


def _raw_text(item: Any) -> str:
    """The refused item as JSON text (NaN and infinities as JavaScript spells them)."""
    try:
        return json.dumps(item, allow_nan=True, default=repr)
    except (TypeError, ValueError):
        return repr(item)


def _source_of(item: Any) -> str | None:
    source = item.get("source") if isinstance(item, dict) else None
    return source[:MAX_TEXT] if isinstance(source, str) and storable(source) else None


def _not_finite(value: float) -> str:
    if type(value) is int:
        return "sample must be finite, got an integer beyond the range of float32"
    if math.isfinite(value):
        return f"sample {value} is beyond the range of float32"
    return f"sample must be finite, got {value}"
