"""Glucose-twin assimilation: ensemble Kalman updates for many twins, and forecast latency.

Figures (medians of ``--runs`` runs, after one warm-up run: numba compiles on first use):

(a) assimilation: 10,000 glucose twins (1,000 with ``--quick``), 64 ensemble members
    each (UVA/Padova states, sensor error, personal parameters), each receiving one
    CGM reading: one ``assimilate`` call advances every twin 5 min (RK4 at one minute,
    with basal insulin and, for 2 % of the twins, a meal and its bolus) and updates it
    on its reading. Reported as twin updates per second; target: 10,000 twins in
    under one second on one core (the kernels are single-threaded).
(b) forecast latency: one twin's 30/60/120-min forecast (64 members x 8 error draws,
    quantiles).

Baseline for each, timed in the same run: one UVA/Padova simulation of one patient
over the same horizon (5 min for (a), 120 min for (b)) with
``physiology.engine.simulate`` (RK4, one-minute steps); the ratio says how many such
simulations the figure costs.

Run: ``medtwin bench assimilation`` or ``python bench/assimilation.py [--quick] [--runs N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from medtwin.models.assimilation import (
    Settings,
    assimilate,
    forecast,
    init_twins,
    population_prior,
)
from medtwin.models.physiology.engine import Inputs, simulate
from medtwin.models.physiology.uva_padova.model import UvaPadova
from medtwin.models.physiology.uva_padova.patients import cohort, virtual_patient
from medtwin.models.physiology.uva_padova.therapy import device_parameters

TARGET_S = 1.0
STEP_MIN = 5


def _time(fn: Callable[[], Any], runs: int) -> float:
    fn()  # warm-up: numba compilation, caches
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _single_simulation(minutes: int) -> Callable[[], Any]:
    """One adult#001 simulation over ``minutes`` (RK4, one-minute steps)."""
    x0, phys = cohort(["adult#001"])
    params = np.hstack([phys, device_parameters(phys, [virtual_patient("adult#001")])])
    values = np.zeros((1, minutes, 4))
    values[:, :, 1] = virtual_patient("adult#001").basal_u_per_min
    inputs = Inputs(values)
    model = UvaPadova()
    return lambda: simulate(model, x0=x0, params=params, inputs=inputs)


def assimilation_bench(twins: int = 10_000, runs: int = 5, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    settings = Settings()
    state = init_twins(
        population_prior(),
        body_weight_kg=rng.uniform(25.0, 110.0, twins),
        basal_u_per_h=rng.uniform(0.4, 1.8, twins),
        glucose_mg_dl=rng.uniform(90.0, 220.0, twins),
        settings=settings,
        rng=rng,
    )
    eating = rng.random(twins) < 0.02
    carbs = np.where(eating, 50.0, 0.0)
    insulin = state.basal_u_per_min * STEP_MIN + np.where(eating, 5.0, 0.0)

    def step() -> None:
        readings = rng.uniform(70.0, 250.0, twins)
        assimilate(state, readings, insulin_u=insulin, carbs_g=carbs, rng=rng)

    step_s = _time(step, runs)
    sim_step_s = _time(_single_simulation(STEP_MIN), max(runs, 20))
    one = state.select([0])
    forecast_s = _time(lambda: forecast(one), max(runs, 20))
    sim_horizon_s = _time(_single_simulation(120), max(runs, 20))
    return {
        "twins": float(twins),
        "members": float(settings.members),
        "step_s": step_s,
        "twin_updates_per_s": twins / step_s,
        "sim_step_s": sim_step_s,
        "step_ratio": step_s / sim_step_s,
        "forecast_s": forecast_s,
        "sim_horizon_s": sim_horizon_s,
        "forecast_ratio": forecast_s / sim_horizon_s,
    }


def print_assimilation(r: dict[str, float]) -> None:
    twins = int(r["twins"])
    target = twins * TARGET_S / 10_000
    ok = r["step_s"] <= target
    print(
        f"assimilation: {twins:,} glucose twins x {int(r['members'])} members, "
        "one CGM reading each, median of runs"
    )
    print(
        f"  one assimilate step      {r['step_s'] * 1e3:9.1f} ms  "
        f"{r['twin_updates_per_s']:>12,.0f} twin updates/s  "
        f"(target {target:g} s: {'met' if ok else 'MISSED'})"
    )
    print(
        f"  one 5-min simulation     {r['sim_step_s'] * 1e3:9.3f} ms  (engine, 1 patient)  "
        f"ratio {r['step_ratio']:,.0f}"
    )
    print("forecast: one twin, 30/60/120 min, 50 % and 90 % intervals")
    print(f"  forecast latency         {r['forecast_s'] * 1e3:9.3f} ms")
    print(
        f"  one 120-min simulation   {r['sim_horizon_s'] * 1e3:9.3f} ms  (engine, 1 patient)  "
        f"ratio {r['forecast_ratio']:.1f}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1,000 twins instead of 10,000")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per figure (median)")
    args = parser.parse_args(argv)
    twins = 1_000 if args.quick else 10_000
    print_assimilation(assimilation_bench(twins=twins, runs=max(1, args.runs)))


if __name__ == "__main__":
    main()
