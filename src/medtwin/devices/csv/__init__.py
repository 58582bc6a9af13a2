"""CSV files of historical data, mapped to observation items by a TOML file.

A mapping names the columns and gives a code and unit to each value column::

    source = "ward-export"          # the sending system (idempotency with the id)
    time_zone = "Europe/Berlin"     # for times without an offset (default UTC)
    delimiter = ","

    [columns]
    id = "row_id"                   # optional: default is the file's line number
    patient = "mrn"
    time = "taken_at"

    [[values]]
    column = "hr"
    code = "8867-4"
    unit = "/min"

Each row gives one item per non-empty value cell, with id ``<row id>.<code>``;
the item then goes through the same validation as the API. A row that cannot
be read (missing column, bad time) is a :class:`Line` with its error and the
location ``file:line:column``. Errors: a bad mapping raises ``InputError``
naming the key.
"""

from __future__ import annotations

import csv
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from medtwin.core.errors import InputError
from medtwin.core.records import LOINC
from medtwin.devices.jsonl import Line

__all__ = ["CsvMapping", "ValueColumn", "load_mapping", "read_csv"]


@dataclass(frozen=True, slots=True)
class ValueColumn:
    column: str
    code: str
    unit: str
    system: str = LOINC


@dataclass(frozen=True, slots=True)
class CsvMapping:
    source: str
    patient: str
    time: str
    values: tuple[ValueColumn, ...]
    id: str | None = None
    time_zone: str = "UTC"
    delimiter: str = ","


def load_mapping(path: Path) -> CsvMapping:
    """Read and check a TOML mapping file."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"not valid TOML: {exc}", path.name) from exc
    except OSError as exc:
        raise InputError(f"cannot read mapping: {exc.strerror}", str(path)) from exc
    known = {"source", "time_zone", "delimiter", "columns", "values"}
    for key in raw:
        if key not in known:
            raise InputError(f"unknown key {key!r}", f"{path.name}:{key}")
    source = raw.get("source")
    if not isinstance(source, str) or not source:
        raise InputError("source must name the sending system", f"{path.name}:source")
    columns = raw.get("columns")
    if not isinstance(columns, dict):
        raise InputError("a [columns] table is required", f"{path.name}:columns")
    for key in ("patient", "time"):
        if not isinstance(columns.get(key), str):
            raise InputError(f"columns.{key} must name a column", f"{path.name}:columns.{key}")
    for key in columns:
        if key not in ("id", "patient", "time"):
            raise InputError(f"unknown key {key!r}", f"{path.name}:columns.{key}")
    zone = raw.get("time_zone", "UTC")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise InputError(f"unknown time zone {zone!r}", f"{path.name}:time_zone") from exc
    delimiter = raw.get("delimiter", ",")
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise InputError("delimiter is one character", f"{path.name}:delimiter")
    entries = raw.get("values")
    if not isinstance(entries, list) or not entries:
        raise InputError("at least one [[values]] column is needed", f"{path.name}:values")
    values = []
    for i, entry in enumerate(entries):
        where = f"{path.name}:values[{i}]"
        if not isinstance(entry, dict):
            raise InputError("a value column is a table", where)
        for key in entry:
            if key not in ("column", "code", "unit", "system"):
                raise InputError(f"unknown key {key!r}", f"{where}.{key}")
        for key in ("column", "code"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise InputError(f"{key} is required", f"{where}.{key}")
        values.append(
            ValueColumn(entry["column"], entry["code"], str(entry.get("unit", "")),
                        str(entry.get("system", LOINC)))
        )  # fmt: skip
    return CsvMapping(
        source=source,
        patient=columns["patient"],
        time=columns["time"],
        values=tuple(values),
        id=columns.get("id"),
        time_zone=zone,
        delimiter=delimiter,
    )


def read_csv(path: Path, mapping: CsvMapping) -> Iterator[Line]:
    """One :class:`Line` per value cell (its item) or per unreadable row (its error)."""
    zone = ZoneInfo(mapping.time_zone)
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=mapping.delimiter)
        header = reader.fieldnames or []
        needed = [mapping.patient, mapping.time, *(v.column for v in mapping.values)]
        if mapping.id is not None:
            needed.append(mapping.id)
        missing = [c for c in needed if c not in header]
        if missing:
            yield Line(1, ",".join(header), error=f"no column {missing[0]!r} in the header")
            return
        position = {name: i + 1 for i, name in enumerate(header)}
        for row in reader:
            number = reader.line_num
            text = mapping.delimiter.join(str(row.get(c) or "") for c in header)
            row_id = (row.get(mapping.id) or "").strip() if mapping.id else f"{path.stem}-{number}"
            if not row_id:
                yield Line(number, text, error="empty id", column=position[mapping.id or ""])
                continue
            moment = _time(row.get(mapping.time) or "", zone)
            if moment is None:
                yield Line(
                    number,
                    text,
                    error=f"unparseable time {row.get(mapping.time)!r}",
                    column=position[mapping.time],
                )
                continue
            for value in mapping.values:
                cell = (row.get(value.column) or "").strip()
                if not cell:
                    continue
                item: dict[str, Any] = {
                    "id": f"{row_id}.{value.code}",
                    "source": mapping.source,
                    "patient": (row.get(mapping.patient) or "").strip(),
                    "code": value.code,
                    "system": value.system,
                    "value": _number_or_text(cell),
                    "unit": value.unit,
                    "time": moment,
                }
                yield Line(number, text, item, column=position[value.column])


def _time(text: str, zone: ZoneInfo) -> str | None:
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment.isoformat()


def _number_or_text(cell: str) -> float | str:
    try:
        return float(cell)
    except ValueError:
        return cell
