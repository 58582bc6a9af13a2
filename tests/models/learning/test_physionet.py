"""The PhysioNet 2019 .psv reader: well-formed files load, malformed ones fail with file:line."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medtwin.core.errors import InputError
from medtwin.models.learning.physionet import (
    FEATURES,
    HEADER,
    PatientSeries,
    parse_psv,
    read_directory,
    read_psv,
    stack,
)

HEADER_LINE = "|".join(HEADER)


def row(hour: int, label: int = 0, **values: float) -> str:
    """One data line: NaN everywhere except ICULOS, the label and ``values``."""
    fields = ["NaN"] * len(HEADER)
    fields[HEADER.index("ICULOS")] = str(hour)
    fields[-1] = str(label)
    for name, value in values.items():
        fields[HEADER.index(name)] = repr(value)
    return "|".join(fields)


def write(tmp_path: Path, name: str, lines: list[str], newline: str = "\n") -> Path:
    path = tmp_path / name
    path.write_text(newline.join(lines) + newline, encoding="utf-8")
    return path


def test_reads_a_challenge_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p000001.psv",
        [
            HEADER_LINE,
            row(1, HR=80.0, O2Sat=98.0, Age=65.0, Gender=1.0),
            row(2, HR=95.5, Temp=38.2, FiO2=0.4),
            row(3, label=1, HR=110.0, Lactate=36.0, Platelets=90.0),
        ],
    )
    patient = read_psv(path)
    assert isinstance(patient, PatientSeries)
    assert patient.patient_id == "p000001"
    assert patient.values.shape == (3, len(FEATURES)) == (3, 40)
    assert patient.labels.tolist() == [0, 0, 1]
    assert patient.column("HR").tolist() == [80.0, 95.5, 110.0]
    assert patient.column("ICULOS").tolist() == [1.0, 2.0, 3.0]
    assert math.isnan(patient.column("Temp")[0])
    assert patient.column("FiO2")[1] == 0.4
    assert len(patient) == 3
    assert not patient.values.flags.writeable
    with pytest.raises(KeyError):
        patient.column("GCS")


def test_crlf_bom_and_trailing_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "p2.psv"
    path.write_bytes(("\ufeff" + HEADER_LINE + "\r\n" + row(1) + "\r\n\r\n").encode())
    assert read_psv(path).values.shape == (1, 40)


def test_reads_a_directory_sorted(tmp_path: Path) -> None:
    for name in ("p3.psv", "p1.psv", "p2.psv"):
        write(tmp_path, name, [HEADER_LINE, row(1), row(2)])
    (tmp_path / "notes.txt").write_text("not a record")
    patients = read_directory(tmp_path)
    assert [p.patient_id for p in patients] == ["p1", "p2", "p3"]
    values, labels, index = stack(patients)
    assert values.shape == (6, 40)
    assert labels.shape == (6,)
    assert index.tolist() == [0, 0, 1, 1, 2, 2]
    assert stack([])[0].shape == (0, 40)


@pytest.mark.parametrize(
    ("lines", "location", "message"),
    [
        ([], ":1", "empty file"),
        (["HR|O2Sat"], ":1", "header has 2 columns"),
        ([HEADER_LINE.replace("Temp", "Tmp")], ":1", "header column 3 is 'Tmp'"),
        ([HEADER_LINE], ":2", "no data rows"),
        ([HEADER_LINE, row(1), "1|2|3"], ":3", "row has 3 fields"),
        ([HEADER_LINE, row(1).replace("NaN", "abc", 1)], ":2", "column HR: 'abc'"),
        ([HEADER_LINE, row(1).replace("NaN", "1_000", 1)], ":2", "column HR"),
        ([HEADER_LINE, row(1).replace("NaN", "inf", 1)], ":2", "column HR"),
        ([HEADER_LINE, row(1).replace("NaN", "1e999", 1)], ":2", "overflows"),
        ([HEADER_LINE, row(1).replace("NaN", "", 1)], ":2", "column HR"),
        ([HEADER_LINE, row(1, label=2)], ":2", "SepsisLabel"),
        ([HEADER_LINE, row(1)[: -len("0")] + "NaN"], ":2", "SepsisLabel"),
        ([HEADER_LINE, row(1), row(1)], ":3", "ICULOS"),
        ([HEADER_LINE, row(1), "", row(2)], ":3", "row has 1 fields"),
    ],
)
def test_malformed_input_names_file_and_line(
    tmp_path: Path, lines: list[str], location: str, message: str
) -> None:
    path = tmp_path / "bad.psv"
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(InputError, match=message) as caught:
        read_psv(path)
    assert caught.value.location == f"{path}{location}"
    assert str(path) in str(caught.value)


def test_missing_iculos_is_refused() -> None:
    fields = row(1).split("|")
    fields[HEADER.index("ICULOS")] = "NaN"
    with pytest.raises(InputError, match="ICULOS") as caught:
        parse_psv(HEADER_LINE + "\n" + "|".join(fields), "x.psv")
    assert caught.value.location == "x.psv:2"


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        read_psv(tmp_path / "absent.psv")
    path = tmp_path / "latin.psv"
    path.write_bytes((HEADER_LINE + "\n").encode() + b"\xff\xfe|1\n")
    with pytest.raises(InputError, match="UTF-8") as caught:
        read_psv(path)
    assert caught.value.location == f"{path}:2"
    with pytest.raises(InputError, match="not a directory"):
        read_directory(tmp_path / "absent")


field_text = st.one_of(
    st.sampled_from(["NaN", "nan", "0", "1", "-3.5", "1e3", ".5", "", " ", "x", "1_0", "∞"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=6),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=400))
def test_arbitrary_text_is_parsed_or_refused_cleanly(text: str) -> None:
    location = "fuzz.psv"
    try:
        parse_psv(text, "fuzz.psv")
    except InputError as exc:  # the only error allowed out
        location = exc.location
    assert location.startswith("fuzz.psv")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(field_text, min_size=38, max_size=43), min_size=0, max_size=4))
def test_near_miss_rows_are_parsed_or_refused_cleanly(rows: list[list[str]]) -> None:
    text = "\n".join([HEADER_LINE, *("|".join(r) for r in rows)])
    try:
        patient = parse_psv(text, "fuzz.psv")
    except InputError as exc:  # the only error allowed out
        location = exc.location
        assert location.startswith("fuzz.psv:")
    else:
        assert patient.values.shape == (len(rows), 40)
        assert set(np.unique(patient.labels)) <= {0, 1}
        assert np.isfinite(patient.column("ICULOS")).all()


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_read_or_refused_cleanly(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.psv"
        path.write_bytes(data)
        location = str(path)
        try:
            read_psv(path)
        except InputError as exc:  # the only error allowed out
            location = exc.location
        assert location.startswith(str(path))
