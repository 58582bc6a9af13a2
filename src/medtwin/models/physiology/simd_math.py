"""Elementary functions written so LLVM can vectorize them across patients.

Numba lowers ``math.tanh`` to a libm call, which stops the loop over patients
from being vectorized; these use only arithmetic, so a block of patients runs
in SIMD lanes.
"""

from __future__ import annotations

from numba import njit

__all__ = ["tanh"]

# Arguments above this give tanh = 1 to double precision.
_SATURATE = 20.0
# exp(2|z|) is taken as (exp(2|z| / 2**_SQUARINGS))**(2**_SQUARINGS).
_SQUARINGS = 6
_SCALE = 2.0 / 2.0**_SQUARINGS
# 1/2, 1/3, ..., 1/15: Taylor coefficients of expm1 as ratios, multiplied not divided.
_INVERSE = tuple(1.0 / j for j in range(2, 16))
_C2 = 1.0 / 2
_C3 = 1.0 / 6
_C4 = 1.0 / 24
_C5 = 1.0 / 120
_C6 = 1.0 / 720
_C7 = 1.0 / 5040
_C8 = 1.0 / 40320
_C9 = 1.0 / 362880
_C10 = 1.0 / 3628800
_C11 = 1.0 / 39916800
_C12 = 1.0 / 479001600
_C13 = 1.0 / 6227020800
_C14 = 1.0 / 87178291200
_C15 = 1.0 / 1307674368000


@njit(inline="always", fastmath=False)
def tanh(z: float) -> float:
    """Hyperbolic tangent, absolute error below 1e-15 for every real ``z``."""
    a = min(abs(z), _SATURATE)
    y = a * _SCALE
    # expm1(y) by Horner's rule on the Taylor series (y <= 0.625; terms up to
    # y**15/15! reach 1e-17) ...
    acc = 1.0 + y * (
        _C2
        + y
        * (
            _C3
            + y
            * (
                _C4
                + y
                * (
                    _C5
                    + y
                    * (
                        _C6
                        + y
                        * (
                            _C7
                            + y
                            * (
                                _C8
                                + y
                                * (
                                    _C9
                                    + y
                                    * (
                                        _C10
                                        + y
                                        * (_C11 + y * (_C12 + y * (_C13 + y * (_C14 + y * _C15))))
                                    )
                                )
                            )
                        )
                    )
                )
            )
        )
    )
    em1 = y * acc
    # ... then squared back up: (1 + m)**2 - 1 = m * (2 + m) keeps small values exact.
    for _ in range(_SQUARINGS):
        em1 = em1 * (2.0 + em1)
    r = em1 / (em1 + 2.0)
    return r if z >= 0.0 else -r
