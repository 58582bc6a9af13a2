"""Fasting steady state of the UVA/Padova model, for jittered virtual patients.

Jittering rates and volumes moves a patient off rest. Holding basal glucose
Gb (mg/dL), basal insulin Ib (pmol/L) and body weight, the fasting steady
state follows in closed form: insulin from the subcutaneous and hepatic
balances, tissue glucose from the Michaelis-Menten balance (a quadratic),
and the production constant kp1 from the plasma glucose balance.
"""

from __future__ import annotations

import numpy as np

from medtwin.models.physiology.model import FloatArray
from medtwin.models.physiology.uva_padova.model import PHYSIOLOGY

__all__ = ["JITTERED", "rebalance", "steady_state"]

# Rates and capacities varied across a jittered cohort; body weight and the
# basal values that define the patient's fasting state are kept.
JITTERED = (
    "kabs", "kmax", "kmin", "k1", "k2", "Vmx", "Km0", "Vm0", "p2u", "m1", "m2", "m4",
    "m30", "ki", "kp2", "kp3", "kd", "ka1", "ka2", "ksc", "ke1",
)  # fmt: skip

_P = {q.name: i for i, q in enumerate(PHYSIOLOGY)}


def steady_state(p: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Fasting state ``(N, 13)`` and parameters with ``kp1`` and ``u2ss`` solved.

    ``p`` is ``(N, 33)`` physiology; the result keeps Gb and Ib.
    """
    p = p.copy()

    def c(name: str) -> FloatArray:
        return p[:, _P[name]]

    gp = c("Gb") * c("Vg")
    ip = c("Ib") * c("Vi")
    il = c("m2") * ip / (c("m1") + c("m30"))
    # (m2 + m4) Ip = m1 Il + ka1 Isc1 + ka2 Isc2, Isc1 = u/(ka1+kd), Isc2 = kd Isc1/ka2.
    isc1 = ((c("m2") + c("m4")) * ip - c("m1") * il) / (c("ka1") + c("kd"))
    u2ss = isc1 * (c("ka1") + c("kd"))
    isc2 = c("kd") * isc1 / c("ka2")
    # Vm0 Gt / (Km0 + Gt) + k2 Gt = k1 Gp, i.e. k2 Gt^2 + (Vm0 + k2 Km0 - k1 Gp) Gt - k1 Gp Km0 = 0.
    qa = c("k2")
    qb = c("Vm0") + c("k2") * c("Km0") - c("k1") * gp
    qc = -c("k1") * gp * c("Km0")
    gt = (-qb + np.sqrt(qb * qb - 4 * qa * qc)) / (2 * qa)
    et = np.where(gp > c("ke2"), c("ke1") * (gp - c("ke2")), 0.0)
    kp1 = c("Fsnc") + et + c("k1") * gp - c("k2") * gt + c("kp2") * gp + c("kp3") * c("Ib")
    p[:, _P["kp1"]] = kp1
    p[:, _P["u2ss"]] = u2ss
    zeros = np.zeros_like(gp)
    ib = c("Ib")
    x = np.stack([zeros, zeros, zeros, gp, gt, ip, zeros, ib, ib, il, isc1, isc2, gp], axis=1)
    return x, p


def rebalance(
    x0: FloatArray, p: FloatArray, *, jitter_cv: float, rng: np.random.Generator
) -> tuple[FloatArray, FloatArray]:
    """Multiply the ``JITTERED`` parameters by log-normal factors, then re-solve rest."""
    sigma = np.sqrt(np.log1p(jitter_cv**2))
    cols = [_P[n] for n in JITTERED]
    factors = rng.lognormal(-(sigma**2) / 2, sigma, size=(p.shape[0], len(cols)))
    q = p.copy()
    q[:, cols] *= factors
    return steady_state(q)
