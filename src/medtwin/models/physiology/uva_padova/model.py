"""The UVA/Padova type 1 diabetes model, as simglucose implements it.

Dalla Man, Rizza and Cobelli, "Meal simulation model of the glucose-insulin
system", IEEE TBME 54(10), 2007; Kovatchev et al., "In silico preclinical
trials", J Diabetes Sci Technol 3(1), 2009; equations and parameter names as
in simglucose 0.2.11 (``simglucose/patient/t1dpatient.py``), including its
non-negativity guards and the gastric-emptying reference dose ``Dbar`` (the
stomach content when the current meal started plus everything eaten since).

The model runs on a one-minute input grid: carbohydrate intake (g/min, at
most 5 g/min as simglucose eats), insulin (U/min), the CGM noise for a
sample taken in that minute (mg/dL) and the carbohydrate of meals announced
in that minute (g, what a meal bolus covers). At the start of each minute ``jump``
does the meal bookkeeping, takes a CGM sample when one is due and, with the
basal-bolus controller on, doses from it through the pump.

States (13): stomach solid and liquid, gut (mg); plasma and tissue glucose
(mg/kg); plasma insulin (pmol/kg); remote insulin action X (pmol/L); delayed
insulin I1 and Id (pmol/L); liver insulin (pmol/kg); two subcutaneous
insulin compartments (pmol/kg); subcutaneous glucose (mg/kg).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from medtwin.models.physiology.model import FloatArray, Model, Output, Quantity
from medtwin.models.physiology.simd_math import tanh

__all__ = ["CONTROL_BASAL_BOLUS", "CONTROL_NONE", "PMOL_PER_U", "UvaPadova"]

# 1 U of insulin = 6000 pmol (simglucose's conversion).
PMOL_PER_U = 6000.0
CONTROL_NONE = 0.0
CONTROL_BASAL_BOLUS = 1.0

STATES = (
    Quantity("qsto1", "mg", "stomach, solid phase"),
    Quantity("qsto2", "mg", "stomach, liquid phase"),
    Quantity("qgut", "mg", "intestine"),
    Quantity("gp", "mg/kg", "plasma glucose mass"),
    Quantity("gt", "mg/kg", "tissue glucose mass"),
    Quantity("ip", "pmol/kg", "plasma insulin mass"),
    Quantity("x", "pmol/L", "insulin action on glucose utilization"),
    Quantity("i1", "pmol/L", "delayed insulin, first compartment"),
    Quantity("id", "pmol/L", "delayed insulin action on production"),
    Quantity("il", "pmol/kg", "liver insulin mass"),
    Quantity("isc1", "pmol/kg", "subcutaneous insulin, first compartment"),
    Quantity("isc2", "pmol/kg", "subcutaneous insulin, second compartment"),
    Quantity("gs", "mg/kg", "subcutaneous glucose mass"),
)

PHYSIOLOGY = (
    Quantity("BW", "kg", "body weight"),
    Quantity("kabs", "1/min", "intestinal absorption rate"),
    Quantity("kmax", "1/min", "maximum gastric emptying rate"),
    Quantity("kmin", "1/min", "minimum gastric emptying rate"),
    Quantity("b", "1", "stomach fraction where emptying falls"),
    Quantity("d", "1", "stomach fraction where emptying recovers"),
    Quantity("Vg", "dL/kg", "glucose distribution volume"),
    Quantity("Vi", "L/kg", "insulin distribution volume"),
    Quantity("Vmx", "mg/kg/min per pmol/L", "insulin-dependent utilization"),
    Quantity("Km0", "mg/kg", "Michaelis-Menten constant of utilization"),
    Quantity("k2", "1/min", "tissue to plasma glucose rate"),
    Quantity("k1", "1/min", "plasma to tissue glucose rate"),
    Quantity("p2u", "1/min", "insulin action rate"),
    Quantity("m1", "1/min", "liver to plasma insulin rate"),
    Quantity("m2", "1/min", "plasma to liver insulin rate"),
    Quantity("m4", "1/min", "peripheral insulin degradation rate"),
    Quantity("m30", "1/min", "hepatic insulin extraction rate"),
    Quantity("ki", "1/min", "delay of insulin action on production"),
    Quantity("kp1", "mg/kg/min", "extrapolated production at zero glucose and insulin"),
    Quantity("kp2", "1/min", "liver glucose effectiveness"),
    Quantity("kp3", "mg/kg/min per pmol/L", "insulin action on production"),
    Quantity("f", "1", "fraction of intestinal absorption that appears in plasma"),
    Quantity("ke1", "1/min", "renal glomerular filtration rate"),
    Quantity("ke2", "mg/kg", "renal threshold"),
    Quantity("Fsnc", "mg/kg/min", "insulin-independent utilization"),
    Quantity("Vm0", "mg/kg/min", "insulin-independent part of utilization"),
    Quantity("kd", "1/min", "subcutaneous insulin diffusion rate"),
    Quantity("ksc", "1/min", "subcutaneous glucose rate"),
    Quantity("ka1", "1/min", "absorption rate, first subcutaneous compartment"),
    Quantity("ka2", "1/min", "absorption rate, second subcutaneous compartment"),
    Quantity("Ib", "pmol/L", "basal plasma insulin"),
    Quantity("Gb", "mg/dL", "basal plasma glucose"),
    Quantity("u2ss", "pmol/kg/min", "steady-state basal insulin"),
)

# Sensor, pump and basal-bolus therapy: per patient, so a cohort can mix them.
DEVICES = (
    Quantity("control", "1", "0 open loop, 1 basal-bolus from the CGM"),
    Quantity("cgm_sample_min", "min", "CGM sampling period, 0 = no sensor"),
    Quantity("cgm_gain", "1", "multiplicative calibration error"),
    Quantity("cgm_offset", "mg/dL", "additive calibration error"),
    Quantity("cgm_min", "mg/dL", "lowest reading"),
    Quantity("cgm_max", "mg/dL", "highest reading"),
    Quantity("cr", "g/U", "carbohydrate ratio"),
    Quantity("cf", "mg/dL/U", "correction factor"),
    Quantity("target", "mg/dL", "correction target"),
    Quantity("correct_above", "mg/dL", "correct only above this reading"),
    Quantity("basal_rate", "U/min", "controller basal rate"),
    Quantity("pump_basal_inc", "U/min", "basal rate increment"),
    Quantity("pump_bolus_inc", "U", "bolus increment"),
    Quantity("pump_max_basal", "U/min", "highest basal rate"),
    Quantity("pump_max_bolus", "U", "largest bolus"),
)

INPUTS = (
    Quantity("carbs", "g/min", "carbohydrate eaten"),
    Quantity("insulin", "U/min", "scheduled insulin (basal and boluses)"),
    Quantity("cgm_noise", "mg/dL", "sensor noise for a sample taken in this minute"),
    Quantity("announced", "g", "carbohydrate of meals announced in this minute"),
)

DISCRETE = (
    Quantity("qsto_meal", "mg", "stomach content when the current meal started"),
    Quantity("food", "g", "carbohydrate eaten since the current meal started"),
    Quantity("carbs_prev", "g/min", "intake in the previous minute"),
    Quantity("cgm", "mg/dL", "latest CGM reading, NaN before the first"),
    Quantity("announced_period", "g", "carbohydrate announced in the current control period"),
    Quantity("control_rate", "U/min", "insulin rate the controller set for this period"),
)

OUTPUTS = (
    Output("glucose_mg_dl", "mg/dL", "2339-0", "plasma glucose Gp/Vg"),
    Output("sc_glucose_mg_dl", "mg/dL", None, "subcutaneous glucose Gs/Vg"),
    Output("cgm_mg_dl", "mg/dL", None, "CGM reading held since its sample"),
    Output("insulin_u_per_min", "U/min", None, "insulin delivered"),
    Output("carbs_g_per_min", "g/min", None, "carbohydrate eaten"),
)

_P = {q.name: i for i, q in enumerate(PHYSIOLOGY + DEVICES)}
_BW, _KABS, _KMAX, _KMIN, _B, _D = (_P[n] for n in ("BW", "kabs", "kmax", "kmin", "b", "d"))
_VG, _VI, _VMX, _KM0, _K2, _K1 = (_P[n] for n in ("Vg", "Vi", "Vmx", "Km0", "k2", "k1"))
_P2U, _M1, _M2, _M4, _M30, _KI = (_P[n] for n in ("p2u", "m1", "m2", "m4", "m30", "ki"))
_KP1, _KP2, _KP3, _F, _KE1, _KE2 = (_P[n] for n in ("kp1", "kp2", "kp3", "f", "ke1", "ke2"))
_FSNC, _VM0, _KD, _KSC, _KA1, _KA2 = (_P[n] for n in ("Fsnc", "Vm0", "kd", "ksc", "ka1", "ka2"))
_IB = _P["Ib"]
_CONTROL, _SAMPLE, _GAIN, _OFFSET = (
    _P[n] for n in ("control", "cgm_sample_min", "cgm_gain", "cgm_offset")
)
_CGM_MIN, _CGM_MAX, _CR, _CF, _TARGET, _ABOVE = (
    _P[n] for n in ("cgm_min", "cgm_max", "cr", "cf", "target", "correct_above")
)
_BASAL, _BASAL_INC, _BOLUS_INC, _MAX_BASAL, _MAX_BOLUS = (
    _P[n]
    for n in ("basal_rate", "pump_basal_inc", "pump_bolus_inc", "pump_max_basal", "pump_max_bolus")
)
_U_CARBS, _U_INSULIN, _U_NOISE, _U_ANNOUNCED = 0, 1, 2, 3
_Z_QSTO, _Z_FOOD, _Z_PREV, _Z_CGM, _Z_PERIOD, _Z_RATE = range(6)


@njit(inline="always", error_model="numpy")
def _rhs_kernel(t: Any, x: Any, u: Any, z: Any, p: Any, dx: Any, n: int) -> None:
    for i in range(x.shape[1]):
        x0, x1, x2, gp, gt = x[0, i], x[1, i], x[2, i], x[3, i], x[4, i]
        ip, xx, i1, idd, il = x[5, i], x[6, i], x[7, i], x[8, i], x[9, i]
        isc1, isc2, gs = x[10, i], x[11, i], x[12, i]
        bw, kmax, kmin, kabs = p[_BW, i], p[_KMAX, i], p[_KMIN, i], p[_KABS, i]
        b, d = p[_B, i], p[_D, i]
        k1, k2, ki = p[_K1, i], p[_K2, i], p[_KI, i]
        m1, ka1, ka2, kd = p[_M1, i], p[_KA1, i], p[_KA2, i], p[_KD, i]
        qsto = x0 + x1
        dbar = z[_Z_QSTO, i] + z[_Z_FOOD, i] * 1000.0
        # Both branches are computed so the lane loop vectorizes; a positive
        # stand-in for Dbar keeps the unused one finite.
        ds = dbar if dbar > 0.0 else 1.0
        aa = 5.0 / (2.0 * ds * (1.0 - b))
        cc = 5.0 / (2.0 * ds * d)
        kg = kmin + (kmax - kmin) / 2.0 * (
            tanh(aa * (qsto - b * ds)) - tanh(cc * (qsto - d * ds)) + 2.0
        )
        kgut = kg if dbar > 0.0 else kmax
        dx[0, i] = -kmax * x0 + u[_U_CARBS, i] * 1000.0
        dx[1, i] = kmax * x0 - x1 * kgut
        dx[2, i] = kgut * x1 - kabs * x2
        rat = p[_F, i] * kabs * x2 / bw
        egp = p[_KP1, i] - p[_KP2, i] * gp - p[_KP3, i] * idd
        et = p[_KE1, i] * (gp - p[_KE2, i]) if gp > p[_KE2, i] else 0.0
        v = max(egp, 0.0) + rat - p[_FSNC, i] - et - k1 * gp + k2 * gt
        dx[3, i] = v if gp >= 0.0 else 0.0
        uid = (p[_VM0, i] + p[_VMX, i] * xx) * gt / (p[_KM0, i] + gt)
        v = -uid + k1 * gp - k2 * gt
        dx[4, i] = v if gt >= 0.0 else 0.0
        v = -(p[_M2, i] + p[_M4, i]) * ip + m1 * il + ka1 * isc1 + ka2 * isc2
        dx[5, i] = v if ip >= 0.0 else 0.0
        it = ip / p[_VI, i]
        dx[6, i] = -p[_P2U, i] * xx + p[_P2U, i] * (it - p[_IB, i])
        dx[7, i] = -ki * (i1 - it)
        dx[8, i] = -ki * (idd - i1)
        v = -(m1 + p[_M30, i]) * il + p[_M2, i] * ip
        dx[9, i] = v if il >= 0.0 else 0.0
        v = u[_U_INSULIN, i] * PMOL_PER_U / bw - (ka1 + kd) * isc1
        dx[10, i] = v if isc1 >= 0.0 else 0.0
        v = kd * isc1 - ka2 * isc2
        dx[11, i] = v if isc2 >= 0.0 else 0.0
        v = -p[_KSC, i] * gs + p[_KSC, i] * gp
        dx[12, i] = v if gs >= 0.0 else 0.0


@njit(inline="always")
def _quantize(amount: float, increment: float, top: float) -> float:
    """Round to the pump's increment (none if 0) and clip to [0, top]."""
    q = np.round(amount / increment) * increment if increment > 0.0 else amount
    return min(max(q, 0.0), top)


@njit(error_model="numpy")
def _jump_kernel(k: int, t: Any, x: Any, u: Any, z: Any, p: Any, n: int) -> None:
    for i in range(x.shape[1]):
        carbs = u[_U_CARBS, i]
        if carbs > 0.0 and z[_Z_PREV, i] <= 0.0:
            z[_Z_QSTO, i] = x[0, i] + x[1, i]
            z[_Z_FOOD, i] = 0.0
        z[_Z_FOOD, i] += carbs
        z[_Z_PREV, i] = carbs
        period = int(np.round(p[_SAMPLE, i]))
        if period > 0 and k % period == 0:
            reading = p[_GAIN, i] * x[12, i] / p[_VG, i] + p[_OFFSET, i] + u[_U_NOISE, i]
            z[_Z_CGM, i] = min(max(reading, p[_CGM_MIN, i]), p[_CGM_MAX, i])
            if p[_CONTROL, i] == CONTROL_BASAL_BOLUS:
                z[_Z_RATE, i] = _basal_bolus(z[_Z_CGM, i], z[_Z_PERIOD, i], period, p, i)
                z[_Z_PERIOD, i] = 0.0
        z[_Z_PERIOD, i] += u[_U_ANNOUNCED, i]
        if p[_CONTROL, i] == CONTROL_BASAL_BOLUS:
            u[_U_INSULIN, i] += z[_Z_RATE, i]


@njit(inline="always")
def _basal_bolus(cgm: float, carbs_g: float, period: int, p: Any, i: int) -> float:
    """Insulin rate (U/min) for the coming period: basal plus a meal bolus.

    The bolus covers the carbohydrate announced in the period just ended
    (carbs / CR) and, above ``correct_above``, corrects toward the target
    ((CGM - target) / CF), spread over the coming period; simglucose's
    ``BBController`` rule.
    """
    bolus = 0.0
    if carbs_g > 0.0:
        bolus = carbs_g / p[_CR, i]
        if cgm > p[_ABOVE, i]:
            bolus += (cgm - p[_TARGET, i]) / p[_CF, i]
    basal = _quantize(p[_BASAL, i], p[_BASAL_INC, i], p[_MAX_BASAL, i])
    return basal + _quantize(bolus, p[_BOLUS_INC, i], p[_MAX_BOLUS, i]) / period


@njit(inline="always")
def _observe_kernel(t: Any, x: Any, u: Any, z: Any, p: Any, y: Any, n: int) -> None:
    for i in range(x.shape[1]):
        y[0, i] = x[3, i] / p[_VG, i]
        y[1, i] = x[12, i] / p[_VG, i]
        y[2, i] = z[_Z_CGM, i]
        y[3, i] = u[_U_INSULIN, i]
        y[4, i] = u[_U_CARBS, i]


class UvaPadova(Model):
    """UVA/Padova T1D model with CGM, pump and basal-bolus controller."""

    name = "uva-padova"
    states = STATES
    params = PHYSIOLOGY + DEVICES
    inputs = INPUTS
    discrete = DISCRETE
    outputs = OUTPUTS
    rhs_kernel = _rhs_kernel
    jump_kernel = _jump_kernel
    observe_kernel = _observe_kernel

    def rhs(
        self, t: float, x: FloatArray, u: FloatArray, z: FloatArray, p: FloatArray
    ) -> FloatArray:
        """simglucose's equations over ``(state, patient)`` arrays, state unit / min."""
        dx = np.empty_like(x)
        qsto = x[0] + x[1]
        dbar = z[_Z_QSTO] + z[_Z_FOOD] * 1000.0
        with np.errstate(divide="ignore", invalid="ignore"):
            aa = 5.0 / (2.0 * dbar * (1.0 - p[_B]))
            cc = 5.0 / (2.0 * dbar * p[_D])
            kgut = np.where(
                dbar > 0,
                p[_KMIN]
                + (p[_KMAX] - p[_KMIN])
                / 2.0
                * (np.tanh(aa * (qsto - p[_B] * dbar)) - np.tanh(cc * (qsto - p[_D] * dbar)) + 2.0),
                p[_KMAX],
            )
        dx[0] = -p[_KMAX] * x[0] + u[_U_CARBS] * 1000.0
        dx[1] = p[_KMAX] * x[0] - x[1] * kgut
        dx[2] = kgut * x[1] - p[_KABS] * x[2]
        rat = p[_F] * p[_KABS] * x[2] / p[_BW]
        egp = p[_KP1] - p[_KP2] * x[3] - p[_KP3] * x[8]
        et = np.where(x[3] > p[_KE2], p[_KE1] * (x[3] - p[_KE2]), 0.0)
        dx[3] = np.maximum(egp, 0.0) + rat - p[_FSNC] - et - p[_K1] * x[3] + p[_K2] * x[4]
        dx[3] *= x[3] >= 0
        uid = (p[_VM0] + p[_VMX] * x[6]) * x[4] / (p[_KM0] + x[4])
        dx[4] = (-uid + p[_K1] * x[3] - p[_K2] * x[4]) * (x[4] >= 0)
        dx[5] = (-(p[_M2] + p[_M4]) * x[5] + p[_M1] * x[9] + p[_KA1] * x[10] + p[_KA2] * x[11]) * (
            x[5] >= 0
        )
        it = x[5] / p[_VI]
        dx[6] = -p[_P2U] * x[6] + p[_P2U] * (it - p[_IB])
        dx[7] = -p[_KI] * (x[7] - it)
        dx[8] = -p[_KI] * (x[8] - x[7])
        dx[9] = (-(p[_M1] + p[_M30]) * x[9] + p[_M2] * x[5]) * (x[9] >= 0)
        insulin = u[_U_INSULIN] * PMOL_PER_U / p[_BW]
        dx[10] = (insulin - (p[_KA1] + p[_KD]) * x[10]) * (x[10] >= 0)
        dx[11] = (p[_KD] * x[10] - p[_KA2] * x[11]) * (x[11] >= 0)
        dx[12] = (-p[_KSC] * x[12] + p[_KSC] * x[3]) * (x[12] >= 0)
        return dx

    def jump(
        self, k: int, t: float, x: FloatArray, u: FloatArray, z: FloatArray, p: FloatArray
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        z, u = z.copy(), u.copy()
        carbs = u[_U_CARBS]
        start = (carbs > 0) & (z[_Z_PREV] <= 0)
        z[_Z_QSTO] = np.where(start, x[0] + x[1], z[_Z_QSTO])
        z[_Z_FOOD] = np.where(start, 0.0, z[_Z_FOOD]) + carbs
        z[_Z_PREV] = carbs
        period = np.round(p[_SAMPLE]).astype(np.int64)
        due = (period > 0) & (k % np.maximum(period, 1) == 0)
        reading = p[_GAIN] * x[12] / p[_VG] + p[_OFFSET] + u[_U_NOISE]
        z[_Z_CGM] = np.where(due, np.clip(reading, p[_CGM_MIN], p[_CGM_MAX]), z[_Z_CGM])
        control = p[_CONTROL] == CONTROL_BASAL_BOLUS
        dose = due & control
        eaten = z[_Z_PERIOD]
        correction = np.where(z[_Z_CGM] > p[_ABOVE], (z[_Z_CGM] - p[_TARGET]) / p[_CF], 0.0)
        bolus = np.where(eaten > 0, eaten / p[_CR] + correction, 0.0)
        rate = _pump(p[_BASAL], p[_BASAL_INC], p[_MAX_BASAL]) + _pump(
            bolus, p[_BOLUS_INC], p[_MAX_BOLUS]
        ) / np.maximum(period, 1)
        z[_Z_RATE] = np.where(dose, rate, z[_Z_RATE])
        z[_Z_PERIOD] = np.where(dose, 0.0, z[_Z_PERIOD]) + u[_U_ANNOUNCED]
        u[_U_INSULIN] = u[_U_INSULIN] + np.where(control, z[_Z_RATE], 0.0)
        return x, z, u

    def observe(
        self, t: float, x: FloatArray, u: FloatArray, z: FloatArray, p: FloatArray
    ) -> FloatArray:
        return np.stack([x[3] / p[_VG], x[12] / p[_VG], z[_Z_CGM], u[_U_INSULIN], u[_U_CARBS]])

    def initial_discrete(self, x0: FloatArray, p: FloatArray) -> FloatArray:
        """No meal under way (Dbar = stomach content, 0 for an empty stomach), no reading."""
        z = np.zeros((len(DISCRETE), x0.shape[1]))
        z[_Z_QSTO] = x0[0] + x0[1]
        z[_Z_CGM] = np.nan
        return z


def _pump(amount: FloatArray, increment: FloatArray, top: FloatArray) -> FloatArray:
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(increment > 0, np.round(amount / increment) * increment, amount)
    return np.minimum(np.maximum(q, 0.0), top)
