"""Alarm events out of the process: webhooks (HTTP POST of JSON) and MQTT.

:class:`Outbound` listens on the event bus and hands each ``alarm.*`` event to a
worker thread, so that a slow or unreachable receiver never holds up the twin
refresh that made the event. Each sink retries on its own; an event a sink
still cannot deliver is logged and dropped (the store and the audit trail, not
the outbound channels, are the record).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from medtwin.twins.events import Event, EventBus

__all__ = ["MqttSink", "Outbound", "Sink", "WebhookSink"]

log = logging.getLogger(__name__)


class Sink(Protocol):
    name: str

    def send(self, event: Event) -> bool:
        """Deliver one event; False when it could not be delivered after retrying."""
        ...

    def close(self) -> None: ...


class WebhookSink:
    """POSTs each event as JSON to ``url``; retries connection errors and 5xx answers
    ``retries`` times with doubling back-off. A 4xx answer is not retried: the
    receiver refused this event, sending it again will not change that."""

    def __init__(
        self, url: str, *, retries: int = 3, timeout_s: float = 5.0, backoff_s: float = 0.5
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook URL must be http(s), got {url!r}")
        self.url = url
        self.name = f"webhook {url.split('?')[0]}"
        self.retries = retries
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s

    def send(self, event: Event) -> bool:
        body = json.dumps(event, separators=(",", ":")).encode()
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(
                self.url,
                data=body,
                method="POST",
                headers={"Content-Type": "application/json", "User-Agent": "medtwin-alarms"},
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                    answer.read()
                return True
            except urllib.error.HTTPError as exc:
                if exc.code < 500:
                    log.error("%s refused %s: HTTP %s", self.name, event.get("type"), exc.code)
                    return False
                problem = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError) as exc:
                problem = str(exc)
            if attempt < self.retries:
                time.sleep(self.backoff_s * 2**attempt)
        log.error(
            "%s: %s undelivered after %d tries: %s",
            self.name,
            event.get("type"),
            self.retries + 1,
            problem,
        )
        return False

    def close(self) -> None:
        pass


class MqttSink:
    """Publishes each event (QoS 1) to ``{topic}/{patient}`` on an MQTT broker."""

    def __init__(
        self,
        host: str,
        port: int = 1883,
        *,
        topic: str = "medtwin/alarms",
        client_id: str = "medtwin-alarms",
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 5.0,
        retries: int = 2,
    ) -> None:
        self.host = host
        self.port = port
        self.topic = topic.rstrip("/")
        self.name = f"mqtt {host}:{port}"
        self.timeout_s = timeout_s
        self.retries = retries
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        if username is not None:
            self._client.username_pw_set(username, password)
        self._connected = False

    def _connect(self) -> None:
        if self._connected:
            return
        self._client.connect(self.host, self.port, keepalive=30)
        self._client.loop_start()
        self._connected = True

    def topic_of(self, event: Event) -> str:
        patient = str(event.get("patient") or "none")
        # MQTT wildcards and separators cannot be part of one topic level.
        level = "".join("_" if c in "/+#" else c for c in patient)
        return f"{self.topic}/{level}"

    def send(self, event: Event) -> bool:
        payload = json.dumps(event, separators=(",", ":"))
        problem = ""
        for attempt in range(self.retries + 1):
            try:
                self._connect()
                info = self._client.publish(self.topic_of(event), payload, qos=1)
                info.wait_for_publish(self.timeout_s)
                if info.is_published():
                    return True
                problem = f"not acknowledged (rc {info.rc})"
            except (OSError, RuntimeError, ValueError) as exc:
                problem = str(exc)
            self._reset()
            if attempt < self.retries:
                time.sleep(0.5 * 2**attempt)
        log.error("%s: %s undelivered: %s", self.name, event.get("type"), problem)
        return False

    def _reset(self) -> None:
        if self._connected:
            self._client.loop_stop()
            self._client.disconnect()
            self._connected = False

    def close(self) -> None:
        if self._connected:
            self._client.disconnect()
            self._client.loop_stop()
            self._connected = False


_STOP: Event = {"type": "_stop"}


class Outbound:
    """Carries ``alarm.*`` events from the bus to the sinks, in order, on one thread."""

    def __init__(self, sinks: Sequence[Sink], *, prefix: str = "alarm.", maxsize: int = 10_000):
        self.sinks = list(sinks)
        self.prefix = prefix
        self._queue: queue.Queue[Event] = queue.Queue(maxsize)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def attach(self, bus: EventBus) -> None:
        if self.sinks:
            bus.listen(self.listener)

    def listener(self, events: Sequence[Event]) -> None:
        """The bus listener: runs in the publishing thread, so it only queues."""
        for event in events:
            if str(event.get("type", "")).startswith(self.prefix):
                self._start()
                try:
                    self._queue.put_nowait(event)
                except queue.Full:
                    log.error("alarm outbound queue full: %s dropped", event.get("type"))

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="medtwin-alarm-outbound", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            try:
                if event is _STOP:
                    return
                for sink in self.sinks:
                    try:
                        sink.send(event)
                    except Exception:  # one broken sink must not stop the others
                        log.exception("%s failed", sink.name)
            finally:
                self._queue.task_done()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued event was handed to the sinks; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued (up to ``timeout_s``), stop the thread, close the sinks."""
        with self._lock:
            thread = self._thread
        if thread is not None and thread.is_alive():
            self._queue.put(_STOP)
            thread.join(timeout_s)
        for sink in self.sinks:
            sink.close()

    @classmethod
    def from_settings(cls, settings: Any) -> Outbound:
        sinks: list[Sink] = [
            WebhookSink(
                url,
                retries=settings.alarm_webhook_retries,
                timeout_s=settings.alarm_webhook_timeout_s,
            )
            for url in settings.alarm_webhook_urls
        ]
        if settings.alarm_mqtt_host:
            password = settings.alarm_mqtt_password
            sinks.append(
                MqttSink(
                    settings.alarm_mqtt_host,
                    settings.alarm_mqtt_port,
                    topic=settings.alarm_mqtt_topic,
                    username=settings.alarm_mqtt_username,
                    password=None if password is None else password.get_secret_value(),
                )
            )
        return cls(sinks)
