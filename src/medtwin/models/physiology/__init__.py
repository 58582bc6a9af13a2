"""Mechanistic physiology: a batched ODE engine and the models it runs.

``simulate(model, x0=..., params=..., inputs=..., solver=..., stepsize=...,
saveat=...)`` integrates any ``Model`` for a whole cohort at once, compiled:
RK4 at constant steps or Dormand-Prince 5(4) at adaptive (or constant) steps.
``simulate_reference`` does the same in plain NumPy/SciPy, for checking.
Each patient gets a ``Status`` instead of an exception.

Errors: bad arguments raise ``medtwin.core.errors.InputError`` naming the
field; numerical failure of one patient is its ``Status``, never an error.
"""

from medtwin.models.physiology.engine import Inputs, Solution, Status, simulate
from medtwin.models.physiology.model import Model, Output, Quantity
from medtwin.models.physiology.reference import simulate_reference
from medtwin.models.physiology.solvers import (
    RK4,
    AdaptiveStep,
    ConstantStep,
    Dopri5,
    SaveAt,
    Solver,
    StepSize,
)

__all__ = [
    "RK4",
    "AdaptiveStep",
    "ConstantStep",
    "Dopri5",
    "Inputs",
    "Model",
    "Output",
    "Quantity",
    "SaveAt",
    "Solution",
    "Solver",
    "Status",
    "StepSize",
    "simulate",
    "simulate_reference",
]
