"""The module registry: declarations are checked, unknown inputs and cycles refused."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest

from medtwin.models.modules import (
    AttributeInput,
    FunctionModule,
    InputValues,
    ModuleGraph,
    ModuleGraphError,
    ModuleOutput,
    ObservationInput,
    OutputValues,
    ParameterValue,
    ResultInput,
    WaveformInput,
)
from medtwin.models.scores.news2_modules import news2_modules

CODES = ("8867-4", "9279-1")


def _copy(inputs: InputValues, _parameters: Mapping[str, ParameterValue]) -> OutputValues:
    first = next(iter(inputs.values()), np.zeros(0))
    return {"out": np.asarray(first, dtype=np.float64)}


def module(name: str, *inputs: object, version: str = "1") -> FunctionModule:
    return FunctionModule(name, version, tuple(inputs), (ModuleOutput("out", "1"),), _copy)  # type: ignore[arg-type]


def test_news2_modules_register_in_dependency_order() -> None:
    graph = ModuleGraph(
        news2_modules(),
        codes=("9279-1", "59408-5", "3150-0", "8480-6", "8867-4", "80288-4", "8310-5"),
    )
    order = [m.name for m in graph.plan(["news2"])]
    assert order[-1] == "news2"
    assert sorted(order[:-1]) == sorted(
        f"news2.{p}"
        for p in (
            "respiration_rate",
            "spo2",
            "air_or_oxygen",
            "systolic_bp",
            "pulse",
            "consciousness",
            "temperature",
        )
    )
    assert graph.downstream("news2.pulse") == {"news2"}
    assert graph.downstream("news2") == set()


def test_plan_puts_every_module_after_what_it_reads() -> None:
    graph = ModuleGraph(
        [
            module("c", ResultInput("x", "b", "out"), ResultInput("y", "a", "out")),
            module("b", ResultInput("x", "a", "out")),
            module("a", ObservationInput("v", "8867-4")),
        ],
        codes=CODES,
    )
    assert [m.name for m in graph.plan(["c"])] == ["a", "b", "c"]
    assert [m.name for m in graph.plan(["b"])] == ["a", "b"]
    assert graph.downstream("a") == {"b", "c"}


def test_unknown_module_input_is_refused_with_its_name() -> None:
    with pytest.raises(ModuleGraphError, match=r"module 'b' input 'x' names unknown module 'zz'"):
        ModuleGraph([module("b", ResultInput("x", "zz", "out"))], codes=CODES)


def test_unknown_output_of_a_known_module_is_refused() -> None:
    graph = ModuleGraph([module("a", ObservationInput("v", "8867-4"))], codes=CODES)
    with pytest.raises(ModuleGraphError, match=r"unknown output 'nope' of module 'a'"):
        graph.register(module("b", ResultInput("x", "a", "nope")))
    assert "b" not in graph


def test_unknown_code_and_attribute_are_refused() -> None:
    with pytest.raises(ModuleGraphError, match=r"reads code '1234-5', not in the registry"):
        ModuleGraph([module("a", ObservationInput("v", "1234-5"))], codes=CODES)
    with pytest.raises(ModuleGraphError, match=r"unknown attribute 'height'"):
        ModuleGraph([module("a", AttributeInput("h", "height"))], codes=CODES)
    with pytest.raises(ModuleGraphError, match=r"unknown waveform kind 'eeg'"):
        ModuleGraph([module("a", WaveformInput("w", "eeg"))], codes=CODES)


def test_bad_declarations_are_refused() -> None:
    with pytest.raises(ModuleGraphError, match="unknown aggregation"):
        ModuleGraph([module("a", ObservationInput("v", "8867-4", aggregate="median"))], codes=CODES)  # type: ignore[arg-type]
    with pytest.raises(ModuleGraphError, match="window longer than 0"):
        ModuleGraph([module("a", ObservationInput("v", "8867-4", window_s=0))], codes=CODES)
    with pytest.raises(ModuleGraphError, match="input name twice"):
        ModuleGraph(
            [module("a", ObservationInput("v", "8867-4"), ObservationInput("v", "9279-1"))],
            codes=CODES,
        )
    with pytest.raises(ModuleGraphError, match="needs a name and a version"):
        ModuleGraph([module("a", version="")], codes=CODES)
    with pytest.raises(ModuleGraphError, match="does not implement the module protocol"):
        ModuleGraph([object()], codes=CODES)  # type: ignore[list-item]


def test_cycles_are_refused_and_named() -> None:
    with pytest.raises(ModuleGraphError, match=r"cycle: (a -> b -> a|b -> a -> b)"):
        ModuleGraph(
            [module("a", ResultInput("x", "b", "out")), module("b", ResultInput("x", "a", "out"))],
            codes=CODES,
        )
    with pytest.raises(ModuleGraphError, match=r"cycle: a -> a"):
        ModuleGraph([module("a", ResultInput("x", "a", "out"))], codes=CODES)


def test_a_replacement_that_closes_a_cycle_leaves_the_graph_as_it_was() -> None:
    graph = ModuleGraph(
        [module("a", ObservationInput("v", "8867-4")), module("b", ResultInput("x", "a", "out"))],
        codes=CODES,
    )
    with pytest.raises(ModuleGraphError, match="cycle"):
        graph.register(module("a", ResultInput("x", "b", "out"), version="2"), replace=True)
    assert graph["a"].version == "1"
    graph.register(module("a", ObservationInput("v", "9279-1"), version="2"), replace=True)
    assert graph["a"].version == "2"


def test_names_are_unique_unless_replacing() -> None:
    graph = ModuleGraph([module("a", ObservationInput("v", "8867-4"))], codes=CODES)
    with pytest.raises(ModuleGraphError, match="registered already"):
        graph.register(module("a", ObservationInput("v", "8867-4"), version="2"))


def test_registration_is_all_or_nothing() -> None:
    graph = ModuleGraph(codes=CODES)
    with pytest.raises(ModuleGraphError):
        graph.register(
            module("a", ObservationInput("v", "8867-4")), module("b", ResultInput("x", "q", "out"))
        )
    assert graph.names == []
    with pytest.raises(ModuleGraphError, match="no module named 'a'"):
        graph.plan(["a"])
