"""What a mechanistic model declares so the engine can integrate it.

A model is a hybrid system over a batch of patients:

- continuous states ``x`` follow ``dx/dt = rhs(t, x, u, z, p)``;
- inputs ``u`` are piecewise constant on the schedule's uniform grid;
- discrete states ``z`` change only at grid points, in ``jump`` (meal
  bookkeeping, a controller that doses from a sensor reading);
- outputs ``y = observe(t, x, u, z, p)`` are what the twin reports, each with
  a unit and, where one exists, an observable code.

Every model supplies each function twice: a Numba block kernel for the fast
path and a plain NumPy version for the reference path the tests check it
against. Arrays are laid out ``(quantity, patient)``; kernels work on a block
of ``n`` lanes and must leave lanes ``>= n`` alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numba import njit
from numpy.typing import NDArray

__all__ = ["Model", "Output", "Quantity", "no_jump"]

FloatArray = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Quantity:
    """A named quantity with its UCUM-style unit."""

    name: str
    unit: str
    description: str = ""


@dataclass(frozen=True, slots=True)
class Output:
    """A reported quantity; ``code`` is its LOINC code where one exists."""

    name: str
    unit: str
    code: str | None = None
    description: str = ""


class Model:
    """Base for mechanistic models; subclasses fill in the class attributes.

    Kernels (Numba, ``(quantity, lane)`` arrays, ``t`` per lane in min):

    - ``rhs_kernel(t, x, u, z, p, dx, n)`` writes ``dx`` (state unit / min);
    - ``jump_kernel(k, t, x, u, z, p, n)`` may update ``x``, ``z`` and ``u``
      in place at the start of interval ``k``;
    - ``observe_kernel(t, x, u, z, p, y, n)`` writes ``y``.

    Reference versions take and return whole ``(quantity, patient)`` arrays.
    """

    name: ClassVar[str]
    states: ClassVar[tuple[Quantity, ...]]
    params: ClassVar[tuple[Quantity, ...]]
    inputs: ClassVar[tuple[Quantity, ...]]
    discrete: ClassVar[tuple[Quantity, ...]] = ()
    outputs: ClassVar[tuple[Output, ...]]

    rhs_kernel: ClassVar[Any]
    jump_kernel: ClassVar[Any]
    observe_kernel: ClassVar[Any]

    def rhs(
        self, t: float, x: FloatArray, u: FloatArray, z: FloatArray, p: FloatArray
    ) -> FloatArray:
        """Reference right-hand side, ``(state, patient)`` in state unit / min."""
        raise NotImplementedError

    def jump(
        self, k: int, t: float, x: FloatArray, u: FloatArray, z: FloatArray, p: FloatArray
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Reference discrete update at the start of interval ``k``: new ``(x, z, u)``.

        ``x`` changes only for instantaneous events such as an IV bolus.
        """
        return x, z, u

    def observe(
        self, t: float, x: FloatArray, u: FloatArray, z: FloatArray, p: FloatArray
    ) -> FloatArray:
        """Reference observation map, ``(output, patient)``."""
        raise NotImplementedError

    def initial_discrete(self, x0: FloatArray, p: FloatArray) -> FloatArray:
        """Discrete state at the start, ``(discrete, patient)``; none by default."""
        return np.zeros((len(self.discrete), x0.shape[1]))


@njit(inline="always")
def no_jump(k: int, t: Any, x: Any, u: Any, z: Any, p: Any, n: int) -> None:
    """A jump kernel that changes nothing, for models without discrete events."""
    return None
