"""``medtwin demo``: a live virtual ward on the embedded store.

Simulated bedside monitors feed the same ingestion path a real device uses,
in accelerated time driven by the injected clock (so accelerated timestamps
are never taken for future times). Three patients with type 1 diabetes
(UVA/Padova virtual subjects) send CGM readings every 5 minutes and their
insulin and meals, for the glucose twins.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from functools import partial

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from medtwin.apps.api import BackgroundTask, ServiceContext, create_app, refresh_twins
from medtwin.apps.commands.users import new_password
from medtwin.core.clock import AcceleratedClock, from_us
from medtwin.core.settings import Settings
from medtwin.data.accounts import Accounts, Role
from medtwin.data.store import Origin, SqlStore, store_for
from medtwin.devices.simulated import DiabetesWard, VirtualWard, WardConfig

log = logging.getLogger(__name__)

BATCH = 1000
DEMO_USER = "demo"
DEMO_TEAM = "ward"
TICK_S = 1.0  # real seconds between simulator steps
# A fresh demo starts its diabetes patients with this much history, so their glucose
# twins have learnt something before anyone looks.
DIABETES_BACKFILL = timedelta(hours=6)
# The deterioration model a fresh demo trains and promotes (a few seconds), on the vital
# signs the virtual ward sends.
DEMO_RISK_MODEL = "deterioration"
DEMO_RISK_PATIENTS = 300
DEMO_RISK_TREES = 60
DEMO_RISK_CHANNELS = ("HR", "O2Sat", "Temp", "SBP", "DBP", "Resp")


def run_ward(ward: VirtualWard) -> BackgroundTask:
    """A background task that feeds the ward's readings into the service."""

    async def run(context: ServiceContext) -> None:
        while True:
            now = context.clock.now()
            items = ward.advance(now)
            # One message per step of the ward, named by its (simulated) time.
            message = f"ward-{now:%Y%m%dT%H%M%SZ}"
            origins: list[Origin | None] = [
                Origin("demo", message, f"[{i}]") for i in range(len(items))
            ]
            for start in range(0, len(items), BATCH):
                try:
                    await run_in_threadpool(
                        partial(
                            context.ingestor.ingest,
                            items[start : start + BATCH],
                            channel="simulator",
                            care_team=DEMO_TEAM,
                            origins=origins[start : start + BATCH],
                        )
                    )
                except Exception:  # the ward keeps running; the failure is logged
                    log.exception("simulated ward batch failed")
            await asyncio.sleep(TICK_S)

    return run


def run_diabetes(ward: DiabetesWard) -> BackgroundTask:
    """A background task that feeds the CGM readings, insulin and meals of the patients
    with type 1 diabetes into the service, through the same ingestion path."""

    async def run(context: ServiceContext) -> None:
        ids = set(ward.patient_ids)
        known = {p.id for p in await run_in_threadpool(context.store.patients)}
        start = context.clock.now()
        if not ids & known:  # a fresh demo: begin with some history
            # The first call simulates the days ahead (and compiles the model): a thread.
            await run_in_threadpool(ward.advance, start - DIABETES_BACKFILL)
        while True:
            now = context.clock.now()
            try:
                observations, interventions = await run_in_threadpool(ward.advance, now)
                message = f"t1d-{now:%Y%m%dT%H%M%SZ}"
                origins: list[Origin | None] = [
                    Origin("demo", message, f"[{i}]") for i in range(len(observations))
                ]
                for begin in range(0, len(observations), BATCH):
                    await run_in_threadpool(
                        partial(
                            context.ingestor.ingest,
                            observations[begin : begin + BATCH],
                            channel="simulator",
                            care_team=DEMO_TEAM,
                            origins=origins[begin : begin + BATCH],
                        )
                    )
                if interventions:
                    await run_in_threadpool(
                        partial(
                            context.ingestor.ingest_interventions,
                            interventions,
                            channel="simulator",
                            care_team=DEMO_TEAM,
                        )
                    )
            except Exception:  # the ward keeps running; the failure is logged
                log.exception("simulated diabetes batch failed")
            await asyncio.sleep(TICK_S)

    return run


def demo_credentials(store: SqlStore) -> tuple[str, str]:
    """The demo clinician of the ward's care team, with a new random password."""
    accounts = Accounts(store)
    password = new_password()
    now_us = time.time_ns() // 1_000
    if accounts.user(DEMO_USER) is None:
        accounts.add_user(DEMO_USER, password, Role.CLINICIAN, care_team=DEMO_TEAM, now_us=now_us)
    else:
        accounts.set_password(DEMO_USER, password, now_us=now_us)
        accounts.set_disabled(DEMO_USER, False)
    return DEMO_USER, password


def ensure_risk_model(settings: Settings, store: SqlStore) -> int | None:
    """Train, register and promote a small deterioration model if none serves yet.

    It learns from a generated ward cohort (:data:`DEMO_RISK_PATIENTS` stays) on the
    vital signs the virtual ward sends, in a few seconds; the demo's twins are then
    scored with it.  Returns the version promoted, None when one already served.
    """
    from medtwin.core.clock import SystemClock
    from medtwin.data.audit import AuditLog
    from medtwin.data.model_registry import ModelRegistry

    audit = AuditLog(
        store,
        settings.secret("audit_key"),
        SystemClock(),
        checkpoint_path=settings.audit_checkpoint_path,
    )
    registry = ModelRegistry(store, audit, SystemClock())
    if registry.promotions(DEMO_RISK_MODEL):
        return None
    # Imported here: LightGBM and scikit-learn load only when a model is trained.
    from medtwin.models.learning import FeatureSpec, GbmParams, generate_cohort
    from medtwin.twins.risk import register_trained

    started = time.perf_counter()
    cohort = generate_cohort(DEMO_RISK_PATIENTS, seed=settings.demo_seed, setting="ward")
    version = register_trained(
        registry,
        cohort.patients,
        name=DEMO_RISK_MODEL,
        seed=settings.demo_seed,
        spec=FeatureSpec(channels=DEMO_RISK_CHANNELS, static=()),
        params=GbmParams(n_estimators=DEMO_RISK_TREES),
        by_user=DEMO_USER,
        source=f"generated:ward:{DEMO_RISK_PATIENTS}:{settings.demo_seed}",
    )
    registry.promote(
        DEMO_RISK_MODEL,
        version.version,
        by_user=DEMO_USER,
        reason="demo: a small model trained on a generated ward cohort",
        role="system",
    )
    log.info(
        "demo: trained and promoted %s version %d in %.1f s",
        DEMO_RISK_MODEL,
        version.version,
        time.perf_counter() - started,
    )
    return version.version


def create_demo_app(settings: Settings) -> tuple[FastAPI, tuple[str, str]]:
    """The service with a virtual ward and the demo user's credentials.

    The clock starts after anything already stored, so new readings update the twins.
    """
    store = store_for(settings)
    credentials = demo_credentials(store)
    ensure_risk_model(settings, store)  # so the demo shows risks (the service loads it)
    newest = store.newest_time()
    start = None
    if newest is not None:
        start = max(from_us(newest) + timedelta(seconds=1), AcceleratedClock(1.0).now())
    clock = AcceleratedClock(settings.demo_acceleration, start=start)
    ward = VirtualWard(WardConfig(patients=settings.demo_patients, seed=settings.demo_seed))
    app = create_app(
        settings,
        clock=clock,
        store=store,
        background=(refresh_twins, run_ward(ward), run_diabetes(DiabetesWard())),
    )
    return app, credentials
