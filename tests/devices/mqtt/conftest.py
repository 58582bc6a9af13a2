"""Brokers for the MQTT tests: the shared Mosquitto on 127.0.0.1:1883, or one per test.

A test's own broker runs /usr/sbin/mosquitto on a free loopback port with a config
in ``tmp_path`` (a queue sized for the test, no persistence, optionally password
and ACL files), so it can be stopped, restarted and locked down. Missing broker:
the test fails in CI (``CI=true``) and is skipped elsewhere.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from medtwin.core.clock import SystemClock, to_us
from medtwin.data.store import SqlStore
from medtwin.devices.mqtt import DeviceBindings, MqttConfig, MqttSubscriber
from medtwin.twins import EventBus, Ingestor, TwinRuntime

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
SHARED = ("127.0.0.1", 1883)


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def _unavailable(message: str) -> None:
    if _in_ci():
        pytest.fail(f"{message} (CI=true: MQTT tests must run)", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class Broker:
    """A Mosquitto of the test's own; ``stop``/``start`` keep its port."""

    directory: Path
    port: int = field(default_factory=free_port)
    password_file: Path | None = None
    acl_file: Path | None = None
    host: str = "127.0.0.1"
    # Options of the listener (cafile, certfile, keyfile, require_certificate): TLS.
    listener_options: list[str] = field(default_factory=list)
    _process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        lines = [
            f"listener {self.port} 127.0.0.1",
            *self.listener_options,
            "persistence false",
            "max_queued_messages 20000",
            "max_inflight_messages 0",
            f"log_dest file {self.directory / 'mosquitto.log'}",
        ]
        if os.geteuid() == 0:
            # As root, mosquitto would switch to its own user, which cannot read tmp_path.
            lines.append("user root")
        if self.password_file is not None:
            lines += ["allow_anonymous false", f"password_file {self.password_file}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        config = self.directory / "mosquitto.conf"
        config.write_text("\n".join(lines) + "\n")
        self._process = subprocess.Popen(
            [MOSQUITTO, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while not _listening(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                log_file = self.directory / "mosquitto.log"
                log = log_file.read_text(errors="replace") if log_file.exists() else ""
                pytest.fail(f"mosquitto did not start: {log[-2000:]}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()  # as a crash would
            self._process.wait(10)
        self._process = None


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    """A fresh, anonymous Mosquitto on a free port, stopped afterwards."""
    if not Path(MOSQUITTO).exists():
        _unavailable(f"no mosquitto binary at {MOSQUITTO}")
    directory = tmp_path / "broker"
    directory.mkdir()
    broker = Broker(directory)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def shared_broker() -> tuple[str, int]:
    """The Mosquitto every developer and CI machine runs on 127.0.0.1:1883."""
    if not _listening(SHARED[1]):
        _unavailable("no MQTT broker on 127.0.0.1:1883")
    return SHARED


@dataclass
class Rig:
    """A store, an ingestor and subscribers on one broker, under a topic root of their own."""

    store: SqlStore
    host: str
    port: int
    root: str = field(default_factory=lambda: f"test-{uuid.uuid4().hex[:10]}/devices")
    client_id: str = field(default_factory=lambda: f"medtwin-test-{uuid.uuid4().hex[:10]}")
    username: str | None = None
    password: str | None = None
    started: list[MqttSubscriber] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.clock = SystemClock()
        self.ingestor = Ingestor(self.store, TwinRuntime(self.clock), EventBus(), self.clock)

    def config(self, **overrides: object) -> MqttConfig:
        values: dict[str, object] = {
            "host": self.host,
            "port": self.port,
            "client_id": self.client_id,
            "root": self.root,
            "username": self.username,
            "password": self.password,
            "reconnect_min_s": 0.2,
            "reconnect_max_s": 1.0,
            "session_expiry_s": 600,
        }
        values.update(overrides)
        return MqttConfig(**values)  # type: ignore[arg-type]

    def subscriber(self, **overrides: object) -> MqttSubscriber:
        subscriber = MqttSubscriber(self.config(**overrides), self.ingestor)
        subscriber.start()
        self.started.append(subscriber)
        subscriber.wait_connected(10)
        return subscriber

    def topic(self, device: str, kind: str = "observations") -> str:
        return f"{self.root}/{device}/{kind}"

    def bind(self, device: str, patient: str, start: datetime, end: datetime | None = None) -> None:
        DeviceBindings(self.store).bind(
            device,
            patient,
            from_us=to_us(start),
            to_us=None if end is None else to_us(end),
            now_us=self.clock.now_us(),
        )

    def close(self) -> None:
        for subscriber in self.started:
            subscriber.stop(timeout_s=5)


def wait_for(condition: object, timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def hours_ago(hours: float) -> datetime:
    return datetime.now(UTC) - timedelta(hours=hours)
