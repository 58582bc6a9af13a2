"""Fixtures of the FHIR tests: the reference data, keys, and a service over a store."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from medtwin.core.clock import FixedClock
from medtwin.data.crypto import BlindIndex, DataKeys, Keyring
from medtwin.data.store import SqlStore
from medtwin.data.vault import Privacy
from medtwin.devices.fhir import FhirService
from medtwin.twins import EventBus, Ingestor, TwinRuntime

DATA = Path(__file__).resolve().parents[4] / "shared" / "data"
# After every Synthea time, so that no observation is "in the future".
NOW = datetime(2031, 1, 1, tzinfo=UTC)


def data_dir(name: str) -> Path:
    """A reference data folder; missing: fail in CI (CI=true), skip elsewhere."""
    path = DATA / name
    if not path.is_dir():
        message = f"reference data {path} is missing"
        if os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}:
            pytest.fail(f"{message} (CI=true: the FHIR tests must run)", pytrace=False)
        pytest.skip(message)
    return path


def make_privacy() -> Privacy:
    keyring = Keyring.from_spec("k1:" + "A" * 43 + "=")
    return Privacy(keyring, DataKeys(keyring), BlindIndex(b"b" * 32), b"p" * 32)


def make_service(store: SqlStore, **options: object) -> FhirService:
    privacy = make_privacy()
    store.seal_payloads(privacy.keyring)
    clock = FixedClock(NOW)
    ingestor = Ingestor(store, TwinRuntime(clock), EventBus(), clock)
    return FhirService(store, ingestor, privacy, **options)  # type: ignore[arg-type]


@pytest.fixture
def service(store: SqlStore) -> FhirService:
    """A FhirService over a fresh store of each backend."""
    return make_service(store)
