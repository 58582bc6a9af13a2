"""Everything a running service holds, built once per process."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from medtwin.apps.api.auth import Tokens
from medtwin.core.clock import Clock, SystemClock
from medtwin.core.settings import Settings
from medtwin.data.accounts import Accounts
from medtwin.data.audit import AuditEntry, AuditLog
from medtwin.data.consent import ConsentStore
from medtwin.data.model_registry import ModelRegistry
from medtwin.data.provenance import ProvenanceStore
from medtwin.data.store import SqlStore, store_for
from medtwin.data.vault import PatientVault, Privacy
from medtwin.devices.conditioning.pipeline import Conditioner, PipelineConfig
from medtwin.models.modules import ModuleGraph
from medtwin.models.scores.news2_modules import news2_modules
from medtwin.models.scores.sepsis_modules import qsofa_modules, sofa_modules
from medtwin.twins import EventBus, Ingestor, TwinRuntime
from medtwin.twins.alarms import AlarmEngine, Outbound, load_rules
from medtwin.twins.calibrations import CalibrationStore
from medtwin.twins.glucose import GlucoseTwinService
from medtwin.twins.hrv_modules import hrv_modules
from medtwin.twins.planner import Planner
from medtwin.twins.replay import Replayers

if TYPE_CHECKING:
    from medtwin.twins.risk import ServedRisk

# Twins start from the newest values of this look-back when the service starts.
WARM_START = timedelta(days=7)
RISK_MODEL = "deterioration"  # the registry name of the served risk model


def conditioner_for(settings: Settings, store: SqlStore) -> Conditioner | None:
    """The conditioning the settings ask for (none, the defaults, or the configured
    file), with the stored device calibrations."""
    if not settings.conditioning:
        return None
    config = None
    if settings.conditioning_file is not None:
        config = PipelineConfig.from_toml(settings.conditioning_file)
    conditioner = Conditioner(config)
    for stored in CalibrationStore(store).current():
        conditioner.set_calibration(stored.device, stored.code, stored.calibration)
    return conditioner


@dataclass
class ServiceContext:
    settings: Settings
    clock: Clock
    store: SqlStore
    runtime: TwinRuntime
    bus: EventBus
    ingestor: Ingestor
    accounts: Accounts
    tokens: Tokens
    audit: AuditLog
    privacy: Privacy
    vault: PatientVault
    consents: ConsentStore
    replayers: Replayers
    planner: Planner
    alarms: AlarmEngine
    outbound: Outbound
    extras: dict[str, object] = field(default_factory=dict)

    @property
    def provenance(self) -> ProvenanceStore:
        return self.planner.provenance

    @property
    def glucose(self) -> GlucoseTwinService:
        """The live glucose twins (patients with CGM); built with the context."""
        service = self.extras["glucose"]
        assert isinstance(service, GlucoseTwinService)
        return service

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        clock: Clock | None = None,
        store: SqlStore | None = None,
        warm: bool = True,
    ) -> ServiceContext:
        """The service's parts; ``warm`` False skips loading the twins (commands that
        only read the store, such as listing the quarantine)."""
        clock = clock or SystemClock()
        store = store or store_for(settings)
        runtime = TwinRuntime(clock, news2_window_s=settings.news2_window_s)
        bus = EventBus()
        ingestor = Ingestor(
            store,
            runtime,
            bus,
            clock,
            max_future_s=settings.max_future_s,
            max_planned_s=settings.max_planned_s,
            conditioner=conditioner_for(settings, store),
        )
        tokens = Tokens(
            settings.secret("secret_key"),
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            access_ttl_s=settings.access_token_ttl_s,
            refresh_ttl_s=settings.refresh_token_ttl_s,
            session_ttl_s=settings.session_ttl_s,
        )
        # Audit times are wall-clock times, whatever the twins' clock (the demo accelerates it).
        audit = AuditLog(
            store,
            settings.secret("audit_key"),
            SystemClock(),
            checkpoint_path=settings.audit_checkpoint_path,
        )
        privacy = Privacy.from_settings(settings)
        store.seal_payloads(privacy.keyring)
        planner = Planner(
            ModuleGraph(
                (
                    *news2_modules(settings.news2_window_s),
                    *hrv_modules(),
                    *qsofa_modules(settings.news2_window_s, codes=runtime.codes),
                    *sofa_modules(codes=runtime.codes),
                ),
                codes=runtime.codes,
            ),
            runtime,
            store,
            clock=clock,
        )
        # Glucose twins rebuild from the store on their first refresh pass, not here; the
        # planner reads the forecasts they publish.
        glucose = GlucoseTwinService(store, clock)
        planner.graph.register(glucose.module())
        alarms = AlarmEngine(
            load_rules(settings.alarm_rules_file).bind(
                {m.name: [o.name for o in m.outputs] for m in planner.graph},
                unknown=settings.alarm_unknown_modules,
            ),
            store,
            planner,
            bus,
            audit,
            clock,
            max_suppress_minutes=settings.alarm_max_suppress_minutes,
        )
        outbound = Outbound.from_settings(settings)
        outbound.attach(bus)
        context = cls(
            settings,
            clock,
            store,
            runtime,
            bus,
            ingestor,
            Accounts(store),
            tokens,
            audit,
            privacy,
            PatientVault(store, privacy),
            ConsentStore(store, privacy.keyring),
            Replayers(store, ingestor, clock),
            planner,
            alarms,
            outbound,
        )
        # One HL7 processor serves the MLLP listener (apps.adapters) and the replay of
        # quarantined HL7 parts (which runs from the CLI too, without a listener).
        from medtwin.devices.hl7 import HL7Processor, replayer
        from medtwin.devices.mqtt import MqttReplayer

        hl7 = HL7Processor.from_settings(settings, store, ingestor, clock)
        context.extras["hl7"] = hl7
        context.extras["glucose"] = glucose
        context.replayers.register("mllp", replayer(hl7))
        context.replayers.register("mqtt", MqttReplayer(ingestor))
        # The learned risk model: served only once a version is promoted (none: no module).
        context.extras["models"] = ModelRegistry(store, audit, SystemClock())
        context.serve_risk()
        if warm:
            context.warm()
        return context

    @property
    def models(self) -> ModelRegistry:
        """The model registry of the store (versions, promotions, drift references)."""
        registry = self.extras["models"]
        assert isinstance(registry, ModelRegistry)
        return registry

    @property
    def risk(self) -> ServedRisk | None:
        """The deterioration model the twins are scored with, None if none is promoted."""
        return cast("ServedRisk | None", self.extras.get("risk"))

    def serve_risk(self) -> ServedRisk | None:
        """Load the promoted ``deterioration`` model and (re)register its module.

        Called at start and after a promotion: the module's version names the model
        version, so every twin's risk is recomputed on its next refresh.  With no
        promoted version nothing is served and ``risk.deterioration`` is not in the graph.
        """
        if self.models.serving(RISK_MODEL) is None:
            return None
        from medtwin.twins.risk import load_served  # loads LightGBM: only when serving

        served = load_served(self.models, RISK_MODEL)
        if served is None:
            return None
        graph = self.planner.graph
        graph.register(served.module(codes=graph.codes), replace=True)
        self.extras["risk"] = served  # its registration makes the next refresh pass score it
        return served

    def warm(self) -> None:
        """Load the twins' state from the store."""
        for patient in self.store.patients():
            self.runtime.add(patient.id, spo2_scale=patient.spo2_scale)
        since = self.clock.now_us() - int(WARM_START.total_seconds() * 1_000_000)
        self.runtime.observe(self.store.latest(codes=self.runtime.codes, since_us=since))

    def record(
        self,
        actor: str,
        role: str,
        action: str,
        outcome: str,
        *,
        patient: str | None = None,
        address: str | None = None,
        priority: str = "normal",
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Append one audit entry; if it cannot be written the operation fails (AuditError).

        The patient is recorded by pseudonym, so that erasing a patient's identity
        leaves the audit chain intact and free of it.
        """
        if patient is not None:
            known = self.store.patient(patient)
            patient = known.pseudonym if known is not None else None
        self.audit.append(
            [
                AuditEntry(
                    actor=actor,
                    role=str(role),
                    action=action,
                    outcome=outcome,
                    patient=patient,
                    address=address,
                    priority=priority,
                    detail=dict(detail or {}),
                )
            ]
        )
