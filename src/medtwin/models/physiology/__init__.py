"""Mechanistic physiology: a batched ODE engine and the models it runs.

``simulate(model, solver=..., x0=..., params=..., inputs=...)`` integrates any
``Model`` for a whole cohort at once with a compiled fixed-step RK4 or
adaptive Dormand-Prince 5(4) solver; ``simulate_reference`` does the same in
plain NumPy/SciPy for checking. Each patient gets a ``Status`` instead of an
exception.

Errors: bad arguments raise ``medtwin.core.errors.InputError`` naming the
field; numerical failure of one patient is its ``Status``, never an error.
"""

from medtwin.models.physiology.engine import Inputs, Solution, Status, simulate
from medtwin.models.physiology.model import Model, Output, Quantity
from medtwin.models.physiology.reference import simulate_reference
from medtwin.models.physiology.solvers import RK4, Dopri5, Solver

__all__ = [
    "RK4",
    "Dopri5",
    "Inputs",
    "Model",
    "Output",
    "Quantity",
    "Solution",
    "Solver",
    "Status",
    "simulate",
    "simulate_reference",
]
