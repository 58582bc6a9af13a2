"""Solver, step-size control and save points: separate settings objects.

As in diffrax, what integrates (``RK4``, ``Dopri5``), how the step is chosen
(``ConstantStep``, ``AdaptiveStep``) and what is kept (``SaveAt``) are
independent choices passed to one keyword-only entry function,
``simulate``. RK4 has no error estimate, so it takes constant steps only;
Dormand-Prince takes either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from medtwin.core.errors import InputError

__all__ = ["RK4", "AdaptiveStep", "ConstantStep", "Dopri5", "SaveAt", "Solver", "StepSize"]


@dataclass(frozen=True, slots=True)
class RK4:
    """Classical fourth-order Runge-Kutta."""


@dataclass(frozen=True, slots=True)
class Dopri5:
    """Dormand-Prince 5(4): fifth-order steps with an embedded fourth-order error estimate."""


@dataclass(frozen=True, slots=True)
class ConstantStep:
    """``substeps`` equal steps per input interval."""

    substeps: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.substeps, bool) or self.substeps < 1:
            raise InputError("substeps must be at least 1", "stepsize.substeps")


@dataclass(frozen=True, slots=True)
class AdaptiveStep:
    """Per-patient error control (Hairer, Norsett and Wanner, *Solving ODEs I*, II.4).

    A step's error is the RMS over states of ``err / (atol + rtol * |x|)``;
    it is kept when that is at most 1, and the next step is scaled by
    ``safety * error**(-1/5)`` within ``[min_factor, max_factor]``. A patient
    that needs more than ``max_steps`` attempts (accepted or rejected) over
    the run stops with status ``MAX_STEPS``. Steps never cross an input
    interval's boundary, where inputs may jump.
    """

    rtol: float = 1e-8
    atol: float = 1e-10
    max_steps: int = 1_000_000
    safety: float = 0.9
    min_factor: float = 0.2
    max_factor: float = 10.0

    def __post_init__(self) -> None:
        if not (self.rtol > 0 and self.atol > 0):
            raise InputError("rtol and atol must be positive", "stepsize.rtol")
        if self.max_steps < 1:
            raise InputError("max_steps must be at least 1", "stepsize.max_steps")
        if not (0 < self.min_factor < 1 < self.max_factor and 0 < self.safety <= 1):
            raise InputError("need 0 < min_factor < 1 < max_factor and 0 < safety <= 1", "stepsize")


@dataclass(frozen=True, slots=True)
class SaveAt:
    """Keep every ``every``-th interval start, and only ``outputs`` (all when None)."""

    every: int = 1
    outputs: Sequence[str] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.every, bool) or self.every < 1:
            raise InputError("every must be at least 1", "saveat.every")


Solver = RK4 | Dopri5
StepSize = ConstantStep | AdaptiveStep
