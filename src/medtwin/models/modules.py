"""The module protocol: how everything a twin derives declares what it reads and writes.

A module has a name and a version, declared inputs (observation codes with a time
window and an aggregation, other modules' outputs, or twin attributes), declared
outputs with units, parameters, and a pure ``compute`` over a batch of twins.
:class:`ModuleGraph` is the registry; registering a module that names an unknown
input, or whose inputs close a cycle, fails with :class:`ModuleGraphError`.

Inputs reach ``compute`` as float arrays of shape ``(n,)``, NaN where a twin has
no value (aggregations ``latest``, ``mean``, ``min``, ``max``, ``count``), as a
:class:`Ragged` batch of every value in the window (``all``), or, for waveforms,
as a list of one :class:`Recording` (or None) per twin. Outputs are float arrays
of shape ``(n,)``, NaN meaning null.

A stateful model that advances with time (a filter) cannot be a pure ``compute``:
it is a :class:`PublishedModule`, kept up to date by its own service, whose latest
stored results the planner reads instead of computing, so that the graph, the API
and other modules see it like any other.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from medtwin.core.errors import ConfigurationError

__all__ = [
    "ATTRIBUTES",
    "AttributeInput",
    "FunctionModule",
    "Input",
    "Module",
    "ModuleGraph",
    "ModuleGraphError",
    "ModuleOutput",
    "ObservationInput",
    "Published",
    "PublishedModule",
    "Ragged",
    "Recording",
    "ResultInput",
    "WaveformInput",
]

Aggregation = Literal["latest", "mean", "min", "max", "count", "all"]
AGGREGATIONS: tuple[str, ...] = ("latest", "mean", "min", "max", "count", "all")
ATTRIBUTES: dict[str, str] = {"spo2_scale": "NEWS2 SpO2 scale of the twin (1 or 2)"}
"""Twin attributes a module may read, with what they mean."""

ParameterValue = float | int | str | bool


class ModuleGraphError(ConfigurationError):
    """A module that cannot be registered: unknown input, cycle, or a malformed declaration."""


@dataclass(frozen=True, slots=True)
class ObservationInput:
    """Observations of one code within ``window_s`` seconds before the request, aggregated."""

    name: str
    code: str
    window_s: float = 3600.0
    aggregate: Aggregation = "latest"


@dataclass(frozen=True, slots=True)
class ResultInput:
    """One output of another module, for the same twin."""

    name: str
    module: str
    output: str


@dataclass(frozen=True, slots=True)
class AttributeInput:
    """An attribute of the twin (see :data:`ATTRIBUTES`)."""

    name: str
    attribute: str


@dataclass(frozen=True, slots=True)
class WaveformInput:
    """The twin's ``kind`` waveform (``ppg`` or ``ecg``) of the last ``window_s`` seconds."""

    name: str
    kind: str
    window_s: float = 300.0


@dataclass(frozen=True, slots=True)
class Recording:
    """A waveform as a module sees it: samples (NaN in gaps), their rate [Hz] and start
    [µs since epoch]."""

    samples: NDArray[np.float32]
    rate_hz: float
    start_us: int


WAVEFORM_KINDS = ("ppg", "ecg")
Input = ObservationInput | ResultInput | AttributeInput | WaveformInput


@dataclass(frozen=True, slots=True)
class ModuleOutput:
    """A declared output: its name, UCUM unit (``1`` for scores) and LOINC code if any."""

    name: str
    unit: str
    code: str | None = None
    description: str = ""


@dataclass(frozen=True, slots=True)
class Ragged:
    """Every value in the window of each twin: twin ``i`` has ``values[offsets[i]:offsets[i+1]]``.

    ``times_us`` are the effective times (µs since epoch), ascending within a twin.
    """

    values: NDArray[np.float64]
    times_us: NDArray[np.int64]
    offsets: NDArray[np.intp]

    def __len__(self) -> int:
        return int(self.offsets.shape[0] - 1)

    def of(self, i: int) -> NDArray[np.float64]:
        return self.values[self.offsets[i] : self.offsets[i + 1]]


InputValues = Mapping[str, Any]  # name -> (n,) float array, or Ragged for aggregate "all"
OutputValues = Mapping[str, NDArray[np.float64]]


@runtime_checkable
class Module(Protocol):
    """What the planner needs of a module. ``compute`` must be pure and vectorized."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def inputs(self) -> tuple[Input, ...]: ...

    @property
    def outputs(self) -> tuple[ModuleOutput, ...]: ...

    @property
    def parameters(self) -> Mapping[str, ParameterValue]: ...

    @property
    def refresh_s(self) -> float:
        """Least seconds between two refresh passes that recompute it (0: every pass)."""
        ...

    def compute(self, inputs: InputValues) -> OutputValues:
        """Outputs for ``n`` twins from their inputs; each output of shape ``(n,)``."""
        ...


@dataclass(frozen=True)
class FunctionModule:
    """A module made of a declaration and a function ``(inputs, parameters) -> outputs``."""

    name: str
    version: str
    inputs: tuple[Input, ...]
    outputs: tuple[ModuleOutput, ...]
    function: Callable[[InputValues, Mapping[str, ParameterValue]], OutputValues]
    parameters: Mapping[str, ParameterValue] = field(default_factory=dict)
    description: str = ""
    # For a module whose inputs are costly to read (every reading of days of monitoring):
    # refresh passes recompute it at most this often; a request still computes it at once.
    refresh_s: float = 0.0

    def compute(self, inputs: InputValues) -> OutputValues:
        return self.function(inputs, self.parameters)


Published = tuple[list[str], Mapping[str, NDArray[np.float64]]]
"""Per twin the fingerprint of its latest stored result ("" if none), and each output."""


@dataclass(frozen=True)
class PublishedModule:
    """A module its own service computes and stores (with provenance) as time passes.

    ``latest(patients, outputs)`` answers each twin's latest published result: its
    fingerprint ("" when the twin has none yet) and the asked outputs (NaN if none).
    The planner never computes it, and refresh passes leave it to its service.
    """

    name: str
    version: str
    outputs: tuple[ModuleOutput, ...]
    latest: Callable[[Sequence[str], Sequence[str]], Published]
    parameters: Mapping[str, ParameterValue] = field(default_factory=dict)
    description: str = ""
    inputs: tuple[Input, ...] = ()
    refresh_s: float = 0.0

    def compute(self, inputs: InputValues) -> OutputValues:
        raise TypeError(f"module {self.name!r} is published by its service, not computed")


class ModuleGraph:
    """The registry of modules, checked as a whole: no unknown inputs, no cycles.

    ``codes`` are the observation codes the twins keep (the code registry's).
    """

    def __init__(self, modules: Iterable[Module] = (), *, codes: Collection[str]) -> None:
        self.codes = frozenset(codes)
        self.generation = 0  # counts registrations: plans made before one are stale
        self._modules: dict[str, Module] = {}
        self.register(*modules)

    def __contains__(self, name: object) -> bool:
        return name in self._modules

    def __getitem__(self, name: str) -> Module:
        try:
            return self._modules[name]
        except KeyError:
            raise ModuleGraphError(f"no module named {name!r}") from None

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    @property
    def names(self) -> list[str]:
        return list(self._modules)

    def register(self, *modules: Module, replace: bool = False) -> None:
        """Add modules (in any order among themselves); all or none are registered.

        ``replace`` lets a module take the place of one of the same name (a new
        version): its results, and everything downstream, are then recomputed.
        """
        candidate = dict(self._modules)
        for module in modules:
            _check_declaration(module)
            if module.name in candidate and not replace:
                raise ModuleGraphError(f"module {module.name!r} is registered already")
            candidate[module.name] = module
        for module in modules:
            self._check_inputs(module, candidate)
        _check_acyclic(candidate)
        self._modules = candidate
        self.generation += 1

    def _check_inputs(self, module: Module, modules: Mapping[str, Module]) -> None:
        for item in module.inputs:
            where = f"module {module.name!r} input {item.name!r}"
            if isinstance(item, ObservationInput):
                if item.code not in self.codes:
                    raise ModuleGraphError(f"{where} reads code {item.code!r}, not in the registry")
                if item.aggregate not in AGGREGATIONS:
                    raise ModuleGraphError(f"{where} has unknown aggregation {item.aggregate!r}")
                if not item.window_s > 0:
                    raise ModuleGraphError(f"{where} needs a window longer than 0 s")
            elif isinstance(item, ResultInput):
                upstream = modules.get(item.module)
                if upstream is None:
                    raise ModuleGraphError(f"{where} names unknown module {item.module!r}")
                if item.output not in {out.name for out in upstream.outputs}:
                    raise ModuleGraphError(
                        f"{where} names unknown output {item.output!r} of module {item.module!r}"
                    )
            elif isinstance(item, AttributeInput):
                if item.attribute not in ATTRIBUTES:
                    raise ModuleGraphError(f"{where} names unknown attribute {item.attribute!r}")
            elif isinstance(item, WaveformInput):
                if item.kind not in WAVEFORM_KINDS:
                    raise ModuleGraphError(f"{where} names unknown waveform kind {item.kind!r}")
                if not item.window_s > 0:
                    raise ModuleGraphError(f"{where} needs a window longer than 0 s")
            else:
                raise ModuleGraphError(f"{where} is not an input declaration")

    def plan(self, targets: Sequence[str]) -> list[Module]:
        """The modules ``targets`` need, each after the modules it reads."""
        order: list[Module] = []
        seen: set[str] = set()

        def visit(name: str) -> None:
            if name in seen:
                return
            seen.add(name)
            module = self[name]
            for item in module.inputs:
                if isinstance(item, ResultInput):
                    visit(item.module)
            order.append(module)

        for target in targets:
            visit(target)
        return order

    def downstream(self, name: str) -> set[str]:
        """Modules that read ``name``'s outputs, directly or through others."""
        found: set[str] = set()
        frontier = {name}
        while frontier:
            frontier = {
                module.name
                for module in self._modules.values()
                if module.name not in found
                and any(isinstance(i, ResultInput) and i.module in frontier for i in module.inputs)
            }
            found |= frontier
        return found


def _check_declaration(module: Module) -> None:
    if not isinstance(module, Module):
        raise ModuleGraphError(f"{module!r} does not implement the module protocol")
    if not module.name or not module.version:
        raise ModuleGraphError(f"module {module.name!r} needs a name and a version")
    names = [item.name for item in module.inputs]
    if len(set(names)) != len(names):
        raise ModuleGraphError(f"module {module.name!r} declares an input name twice")
    outputs = [out.name for out in module.outputs]
    if not outputs or len(set(outputs)) != len(outputs):
        raise ModuleGraphError(f"module {module.name!r} needs distinct, declared outputs")
    if isinstance(module, PublishedModule) and module.inputs:
        raise ModuleGraphError(f"published module {module.name!r} declares no inputs")
    if not module.refresh_s >= 0:
        raise ModuleGraphError(f"module {module.name!r} needs a refresh interval >= 0 s")


def _check_acyclic(modules: Mapping[str, Module]) -> None:
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = [*path[path.index(name) :], name]
            raise ModuleGraphError("module inputs form a cycle: " + " -> ".join(cycle))
        state[name] = 1
        for item in modules[name].inputs:
            if isinstance(item, ResultInput) and item.module in modules:
                visit(item.module, [*path, name])
        state[name] = 2

    for name in modules:
        visit(name, [])
