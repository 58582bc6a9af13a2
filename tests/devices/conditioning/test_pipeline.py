"""Conditioning pipelines: configuration, artifact flags across batches, calibration."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from medtwin.core.errors import ConfigurationError
from medtwin.core.records import LOINC, Observation, QualityFlag
from medtwin.devices.conditioning import fit_calibration
from medtwin.devices.conditioning.pipeline import Conditioner, PipelineConfig, Step

SPO2, HR, GLUCOSE = "59408-5", "8867-4", "2339-0"
T0 = 1_800_000_000_000_000
MINUTE = 60_000_000
ARTIFACT = int(QualityFlag.ARTIFACT_SUSPECTED)


def reading(
    i: int, value: float, *, code: str = SPO2, patient: str = "p1", source: str = "probe"
) -> Observation:
    unit = {SPO2: "%", HR: "/min", GLUCOSE: "mg/dL"}[code]
    return Observation(
        source, f"{patient}.{code}.{i}", patient, LOINC, code, value, None, unit, T0 + i * MINUTE
    )


def flagged(observations: list[Observation]) -> list[bool]:
    return [bool(o.flags & ARTIFACT) for o in observations]


def test_a_loose_probe_burst_is_flagged_and_nothing_else() -> None:
    values = [97, 97, 96, 97, 98, 97, 60, 60, 61, 97, 96, 97]
    conditioner = Conditioner()
    out, notes = conditioner.condition([reading(i, v) for i, v in enumerate(values)])
    assert flagged(out) == [v < 70 for v in values]
    assert [o.value_num for o in out] == values  # flagged, never changed or dropped
    note = json.loads(notes[6] or "")
    assert set(note["artifact"]["detectors"]) <= {"rate_of_change", "hampel"}
    assert note["artifact"]["detectors"]
    assert notes[0] is None


def test_streams_are_remembered_across_batches_in_any_order() -> None:
    conditioner = Conditioner()
    conditioner.condition([reading(i, 97) for i in range(6)])
    out, _ = conditioner.condition([reading(7, 97), reading(6, 58)])  # out of time order
    assert flagged(out) == [False, True]


def test_a_sustained_change_is_accepted_within_minutes() -> None:
    # A real desaturation that stays: suspect at first, accepted once it persists.
    values = [97] * 8 + [86] * 12
    out, _ = Conditioner().condition([reading(i, v) for i, v in enumerate(values)])
    suspect = flagged(out)
    assert not any(suspect[:8])
    assert any(suspect[8:])
    assert not any(suspect[14:]), suspect  # within 6 minutes the new level is accepted


def test_batched_streams_are_judged_as_one_at_a_time() -> None:
    rng = np.random.default_rng(3)
    patients = [f"p{k}" for k in range(40)]
    series = {p: 95 + rng.normal(0, 1, 30).round() for p in patients}
    for p in patients[::3]:
        series[p][rng.integers(5, 25)] = 55  # one loose-probe reading
    together = Conditioner()
    batch = [
        reading(i, float(v), patient=p) for i in range(30) for p in patients for v in [series[p][i]]
    ]
    out, _ = together.condition(batch)
    for p in patients:
        alone, _ = Conditioner().condition(
            [reading(i, float(series[p][i]), patient=p) for i in range(30)]
        )
        assert [o.flags for o in out if o.patient == p] == [o.flags for o in alone]
    assert sum(flagged(out)) >= len(patients[::3])


def test_calibration_maps_readings_and_is_recorded() -> None:
    config = PipelineConfig.from_dict(
        {"stream": [{"code": GLUCOSE, "sources": "cgm-*", "steps": ["calibrate"]}]}
    )
    conditioner = Conditioner(config)
    measured = np.array([80.0, 120.0, 160.0, 200.0])
    calibration = fit_calibration(measured, 1.1 * measured - 5.0, fitted_at_us=T0)
    conditioner.set_calibration("cgm-7", GLUCOSE, calibration)
    out, notes = conditioner.condition(
        [
            reading(0, 100.0, code=GLUCOSE, source="cgm-7"),
            reading(1, 100.0, code=GLUCOSE, source="meter"),
        ]
    )
    assert out[0].value_num == pytest.approx(105.0)
    assert out[0].flags & QualityFlag.CALIBRATED
    assert out[1].value_num == 100.0  # another source: no pipeline matches
    note = json.loads(notes[0] or "")
    assert note["raw"] == 100.0
    assert note["calibration"]["id"] == calibration.id
    assert notes[1] is None


def test_configuration_files_are_read_and_their_faults_named(tmp_path: Path) -> None:
    path = tmp_path / "conditioning.toml"
    path.write_text(
        '[[stream]]\ncode = "59408-5"\nsources = "probe-*"\n'
        'steps = [{ kind = "rate_of_change", max_per_min = 5 }, "hampel"]\n'
    )
    config = PipelineConfig.from_toml(path)
    (pipeline,) = config.pipelines
    assert pipeline.steps == (Step("rate_of_change", {"max_per_min": 5}), Step("hampel", {}))
    assert pipeline.rule().max_rate_per_min == 5
    assert config.for_reading("probe-2", SPO2) is pipeline
    assert config.for_reading("monitor", SPO2) is None
    for text, fault in [
        ('[[stream]]\nsteps = ["hampel"]\n', "stream[0]: needs a string 'code'"),
        ('[[stream]]\ncode = "x"\nsteps = ["smooth"]\n', "stream[0].steps[0]: kind must be"),
        (
            '[[stream]]\ncode = "x"\nsteps = [{ kind = "hampel", k = "3" }]\n',
            "steps[0].k: must be a number",
        ),
        ("stream = 3\n", "'stream' must be an array of tables"),
        ("[[stream]\n", "conditioning.toml"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigurationError, match=re.escape(fault)):
            PipelineConfig.from_toml(path)


def test_text_and_unconfigured_readings_pass_untouched() -> None:
    acvpu = Observation("m", "a", "p1", LOINC, "80288-4", None, "A", "", T0)
    unmapped = reading(0, 300.0)._replace(code="9999-9")
    out, notes = Conditioner().condition([acvpu, unmapped])
    assert out == [acvpu, unmapped]
    assert notes == [None, None]


def test_late_readings_older_than_the_memory_are_judged_in_time_order() -> None:
    conditioner = Conditioner()
    conditioner.condition([reading(i, 97) for i in range(10, 20)])
    out, _ = conditioner.condition([reading(3, 97), reading(5, 55), reading(21, 96)])
    assert flagged(out) == [False, True, False]


def test_each_device_is_its_own_stream() -> None:
    # A monitor and a spot-check device on one patient, at different levels.
    batch = [reading(i, 97, source="monitor") for i in range(8)]
    batch += [reading(i, 93, source="spot") for i in range(8)]
    out, _ = Conditioner().condition(batch)
    assert not any(flagged(out))


def test_a_new_calibration_moves_the_remembered_readings_to_its_scale() -> None:
    conditioner = Conditioner()
    glucose = [reading(i, 100.0 + i, code=GLUCOSE, source="cgm-1") for i in range(8)]
    conditioner.condition(glucose)
    raw = np.array([80.0, 160.0])
    conditioner.set_calibration("cgm-1", GLUCOSE, fit_calibration(raw, 1.5 * raw, fitted_at_us=T0))
    # 108 reads 162 now: no jump from the remembered 107 (160.5 on the new scale).
    out, _ = conditioner.condition([reading(8, 108.0, code=GLUCOSE, source="cgm-1")])
    assert out[0].value_num == pytest.approx(162.0)
    assert not flagged(out)[0]
