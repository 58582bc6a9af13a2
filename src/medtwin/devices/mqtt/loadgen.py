"""Publishing device readings at volume, and measuring readings/s from publish to stored.

For the tests and ``bench/``: :func:`observation_payloads` makes the messages a
device would send, :func:`publish` sends them with QoS 1 and waits for every
PUBACK, and :func:`measure_readings_per_s` times a whole run through a real
broker into the store, with the publisher in a child process so that it does not
compete with the subscriber for the interpreter.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import IO, Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from medtwin.core.errors import MedtwinError
from medtwin.devices.mqtt.payload import DEFAULT_ROOT

Message = tuple[str, bytes]


def observation_topic(device: str, root: str = DEFAULT_ROOT) -> str:
    return f"{root}/{device}/observations"


def intervention_topic(device: str, root: str = DEFAULT_ROOT) -> str:
    return f"{root}/{device}/interventions"


def observation_payloads(
    n: int,
    *,
    start: datetime,
    boot_id: str = "boot1",
    first_seq: int = 0,
    step_s: float = 1.0,
    code: str = "8867-4",
    unit: str = "/min",
) -> list[bytes]:
    """``n`` heart-rate readings of one device boot, one every ``step_s`` seconds."""
    payloads = []
    for i in range(n):
        moment = start + timedelta(seconds=i * step_s)
        document = {
            "code": code,
            "value": 60 + (first_seq + i) % 40,
            "unit": unit,
            "time": moment.isoformat().replace("+00:00", "Z"),
            "boot_id": boot_id,
            "seq": first_seq + i,
        }
        payloads.append(json.dumps(document, separators=(",", ":")).encode())
    return payloads


def _client(
    host: str,
    port: int,
    username: str | None,
    password: str | None,
    client_id: str = "",
    tls: ssl.SSLContext | None = None,
) -> Any:
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv5,
    )
    if username is not None:
        client.username_pw_set(username, password)
    if tls is not None:
        client.tls_set_context(tls)
    # No cap on messages in flight: the broker's queue is the limit under test.
    client.max_inflight_messages_set(0)
    client.max_queued_messages_set(0)
    return client


def publish(
    host: str,
    port: int,
    messages: Sequence[Message],
    *,
    username: str | None = None,
    password: str | None = None,
    qos: int = 1,
    timeout_s: float = 60.0,
    tls: ssl.SSLContext | None = None,
) -> None:
    """Publish ``messages`` (topic, payload) in order and wait until the broker took them all.

    ``tls``: connect over TLS with this context (its certificate, if any, is the
    device's for mutual TLS). MedtwinError when the broker cannot be reached,
    refuses the connection, or has not acknowledged everything in ``timeout_s``.
    """
    client = _client(host, port, username, password, tls=tls)
    done = threading.Event()
    outstanding = [len(messages)]
    lock = threading.Lock()

    def on_publish(_c: Any, _u: Any, _mid: int, _reason: Any, _props: Any) -> None:
        with lock:
            outstanding[0] -= 1
            if outstanding[0] == 0:
                done.set()

    client.on_publish = on_publish
    try:
        result = client.connect(host, port, keepalive=30)
    except OSError as exc:
        raise MedtwinError(f"cannot reach the MQTT broker at {host}:{port}: {exc}") from exc
    if result != paho.MQTT_ERR_SUCCESS:
        raise MedtwinError(f"MQTT connect failed: {paho.error_string(result)}")
    client.loop_start()
    try:
        if not messages:
            return
        for topic, payload in messages:
            info = client.publish(topic, payload, qos=qos)
            if info.rc != paho.MQTT_ERR_SUCCESS:
                raise MedtwinError(f"MQTT publish failed: {paho.error_string(info.rc)}")
        if qos == 0:
            return
        if not done.wait(timeout_s):
            raise MedtwinError(
                f"the broker acknowledged {len(messages) - outstanding[0]} of {len(messages)} "
                f"messages in {timeout_s:g} s"
            )
    finally:
        client.disconnect()
        client.loop_stop()


def _publish_child(
    host: str,
    port: int,
    messages: list[Message],
    go: Any,
    answer: Any,
    credentials: tuple[str | None, str | None],
) -> None:
    go.wait()
    try:
        publish(host, port, messages, username=credentials[0], password=credentials[1])
        answer.send(None)
    except MedtwinError as exc:
        answer.send(str(exc))


@dataclass
class ChildPublisher:
    """A child process that publishes ``messages`` when :meth:`go` is called."""

    host: str
    port: int
    messages: list[Message]
    username: str | None = None
    password: str | None = None

    def __post_init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._go = context.Event()
        self._answer, child_end = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_publish_child,
            args=(
                self.host,
                self.port,
                self.messages,
                self._go,
                child_end,
                (self.username, self.password),
            ),
            daemon=True,
        )
        self._process.start()

    def go(self) -> None:
        self._go.set()

    def join(self, timeout_s: float = 120.0) -> None:
        """Wait for the child; MedtwinError if publishing failed."""
        if not self._answer.poll(timeout_s):
            self._process.kill()
            raise MedtwinError(f"the publisher did not finish in {timeout_s:g} s")
        problem = self._answer.recv()
        self._process.join(10)
        if problem is not None:
            raise MedtwinError(problem)


def measure_readings_per_s(
    subscriber: Any,
    devices: Sequence[str],
    *,
    per_device: int,
    start: datetime,
    boot_id: str = "bench",
    timeout_s: float = 120.0,
    use_mosquitto_pub: bool = True,
) -> float:
    """Readings/s from the first publish until the last reading is stored.

    ``subscriber`` is a running :class:`~medtwin.devices.mqtt.MqttSubscriber` whose
    devices are bound over the readings' times; each device publishes ``per_device``
    new readings (fresh ``boot_id``). Publishers are ``mosquitto_pub`` processes, one
    per device, where it is installed; otherwise one paho publisher in a child process
    sends the devices' readings interleaved.
    """
    config = subscriber.config
    per_topic = [
        [
            (observation_topic(device, config.root), payload)
            for payload in observation_payloads(per_device, start=start, boot_id=boot_id)
        ]
        for device in devices
    ]
    messages = [message for group in zip(*per_topic, strict=True) for message in group]
    target = subscriber.stats.stored + len(messages)
    tool = shutil.which("mosquitto_pub") if use_mosquitto_pub else None
    if tool is not None:
        # Each publisher reads its lines from a file written before the clock starts:
        # writing them into a pipe (64 KiB) blocks until that publisher has sent most of
        # them, which ran the publishers one after another and capped the measurement
        # near 11,000 messages/s with nobody subscribed at all.
        with contextlib.ExitStack() as files:
            inputs = [files.enter_context(tempfile.TemporaryFile()) for _ in per_topic]
            for lines, group in zip(inputs, per_topic, strict=True):
                lines.write(b"\n".join(p for _, p in group) + b"\n")
                lines.seek(0)
            # One C publisher per device, as devices are separate programs.
            began = time.perf_counter()
            procs = [
                _mosquitto_pub(tool, config, topic=group[0][0], lines=lines)
                for group, lines in zip(per_topic, inputs, strict=True)
            ]
            try:
                _wait_stored(subscriber, target, began + timeout_s)
                elapsed = time.perf_counter() - began
                for proc in procs:
                    if proc.wait(30) != 0:
                        raise MedtwinError(f"mosquitto_pub exited with {proc.returncode}")
            finally:
                for proc in procs:
                    if proc.poll() is None:  # the run failed: no publisher outlives it
                        proc.kill()
                        proc.wait(10)
        return len(messages) / elapsed
    child = ChildPublisher(config.host, config.port, messages, config.username, config.password)
    time.sleep(0.5)  # let the child start before the clock starts
    began = time.perf_counter()
    child.go()
    _wait_stored(subscriber, target, began + timeout_s)
    elapsed = time.perf_counter() - began
    child.join()
    return len(messages) / elapsed


def _wait_stored(subscriber: Any, target: int, deadline: float) -> None:
    while subscriber.stats.stored < target:
        if time.perf_counter() > deadline:
            missing = target - subscriber.stats.stored
            raise MedtwinError(f"{missing} readings not stored in time")
        time.sleep(0.002)


def _mosquitto_pub(
    tool: str, config: Any, *, topic: str, lines: IO[bytes]
) -> subprocess.Popen[bytes]:
    """``mosquitto_pub -l``: one message per line of ``lines`` (its standard input), QoS 1."""
    command = [tool, "-h", config.host, "-p", str(config.port), "-q", "1", "-l", "-t", topic]
    if config.username is not None:
        command += ["-u", config.username]
    if config.password is not None:  # benchmark credentials only: ps shows arguments
        command += ["-P", config.password]
    return subprocess.Popen(command, stdin=lines)
