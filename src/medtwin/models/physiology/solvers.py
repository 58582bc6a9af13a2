"""Solver choices, as plain settings objects the engine dispatches on."""

from __future__ import annotations

from dataclasses import dataclass

from medtwin.core.errors import InputError

__all__ = ["RK4", "Dopri5", "Solver"]


@dataclass(frozen=True, slots=True)
class RK4:
    """Classical fixed-step Runge-Kutta 4; ``substeps`` steps per input interval."""

    substeps: int = 1

    def __post_init__(self) -> None:
        if self.substeps < 1:
            raise InputError("substeps must be at least 1", "solver.substeps")


@dataclass(frozen=True, slots=True)
class Dopri5:
    """Adaptive Dormand-Prince 5(4) with per-patient step control.

    The error of a step is the RMS over states of ``err / (atol + rtol * |x|)``
    (Hairer, Norsett and Wanner, *Solving ODEs I*, II.4); a step is kept when
    it is at most 1. ``max_steps`` counts accepted and rejected steps per
    patient over the whole run.
    """

    rtol: float = 1e-8
    atol: float = 1e-10
    max_steps: int = 1_000_000
    safety: float = 0.9
    min_factor: float = 0.2
    max_factor: float = 10.0

    def __post_init__(self) -> None:
        if not (self.rtol > 0 and self.atol > 0):
            raise InputError("rtol and atol must be positive", "solver.rtol")
        if self.max_steps < 1:
            raise InputError("max_steps must be at least 1", "solver.max_steps")


Solver = RK4 | Dopri5
