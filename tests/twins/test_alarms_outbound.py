"""Alarm events out of the process: a real local HTTP server as the webhook receiver,
and the shared Mosquitto on 127.0.0.1:1883 for MQTT out."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from medtwin.core.settings import Settings
from medtwin.data.store import SqlStore
from medtwin.twins.alarms import MqttSink, Outbound, WebhookSink
from tests.twins.test_alarms import ALICE, LIFECYCLE, make_rig
from tests.twins.vitals import GLUCOSE


class Receiver:
    """An HTTP server that records the JSON bodies POSTed to it; it answers the first
    ``failures`` requests with 503, and requests to /refuse with 400."""

    def __init__(self, failures: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.attempts = 0
        self.failures = failures
        self.received = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                body = json.loads(self.rfile.read(length))
                receiver.attempts += 1
                if self.path == "/refuse":
                    status = 400
                elif receiver.attempts <= receiver.failures:
                    status = 503
                else:
                    assert self.headers["Content-Type"] == "application/json"
                    receiver.bodies.append(body)
                    receiver.received.set()
                    status = 204
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_webhook_retries_server_errors_and_delivers() -> None:
    with Receiver(failures=2) as receiver:
        sink = WebhookSink(receiver.url, retries=3, backoff_s=0.01)
        assert sink.send({"type": "alarm.raised", "patient": "p1"})
        assert receiver.attempts == 3
        assert receiver.bodies == [{"type": "alarm.raised", "patient": "p1"}]


def test_webhook_gives_up_after_its_retries_and_on_a_refusal() -> None:
    with Receiver(failures=10) as receiver:
        sink = WebhookSink(receiver.url, retries=1, backoff_s=0.01)
        assert not sink.send({"type": "alarm.raised"})
        assert receiver.attempts == 2
        refused = WebhookSink(receiver.url.replace("/hook", "/refuse"), retries=3)
        assert not refused.send({"type": "alarm.raised"})
        assert receiver.attempts == 3  # a 4xx is not retried
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert not WebhookSink(f"http://127.0.0.1:{port}/", retries=1, backoff_s=0.01).send({})
    with pytest.raises(ValueError, match="http"):
        WebhookSink("ftp://example")


@pytest.fixture
def broker() -> tuple[str, int]:
    try:
        with socket.create_connection(("127.0.0.1", 1883), timeout=1):
            pass
    except OSError:
        pytest.skip("no MQTT broker on 127.0.0.1:1883")
    return ("127.0.0.1", 1883)


class Subscriber:
    """A paho client subscribed to ``topic/#``, collecting (topic, JSON payload)."""

    def __init__(self, host: str, port: int, topic: str) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.got = threading.Condition()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex}")

        def on_connect(client: Any, *_: Any) -> None:
            client.subscribe(f"{topic}/#", qos=1)

        def on_message(_c: Any, _u: Any, message: Any) -> None:
            with self.got:
                self.messages.append((message.topic, json.loads(message.payload)))
                self.got.notify_all()

        self.client.on_connect = on_connect
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = on_message
        self.client.connect(host, port)
        self.client.loop_start()
        assert subscribed.wait(10), "no SUBACK"

    def wait_for(self, n: int, timeout_s: float = 10) -> list[tuple[str, dict[str, Any]]]:
        with self.got:
            self.got.wait_for(lambda: len(self.messages) >= n, timeout_s)
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscriber(broker: tuple[str, int]) -> Iterator[tuple[Subscriber, str]]:
    topic = f"test-{uuid.uuid4().hex[:10]}/alarms"
    sub = Subscriber(*broker, topic)
    try:
        yield sub, topic
    finally:
        sub.close()


def test_engine_transitions_go_out_by_webhook_and_mqtt(
    store: SqlStore, broker: tuple[str, int], subscriber: tuple[Subscriber, str]
) -> None:
    sub, topic = subscriber
    with Receiver() as receiver:
        rig = make_rig(store, LIFECYCLE)
        outbound = Outbound(
            [
                WebhookSink(receiver.url, backoff_s=0.01),
                MqttSink(*broker, topic=topic, client_id=f"medtwin-test-{uuid.uuid4().hex}"),
            ]
        )
        outbound.attach(rig.bus)
        rig.bus.publish([{"type": "twin.updated", "patient": "p1"}])  # not an alarm: stays in
        rig.post("p1", {GLUCOSE: 60})
        (raised,) = rig.engine.evaluate()
        rig.engine.acknowledge(raised["alarm"]["id"], ALICE, "seen")
        assert outbound.flush(20)
        outbound.close()
        assert [b["type"] for b in receiver.bodies] == ["alarm.raised", "alarm.acknowledged"]
        assert receiver.bodies[1]["alarm"]["acknowledged"]["by"] == "alice"
    messages = sub.wait_for(2)
    assert [(t, m["type"]) for t, m in messages] == [
        (f"{topic}/p1", "alarm.raised"),
        (f"{topic}/p1", "alarm.acknowledged"),
    ]
    assert messages[0][1]["alarm"]["id"] == raised["alarm"]["id"]


def test_outbound_from_settings() -> None:
    settings = Settings(
        alarm_webhook_urls=["http://127.0.0.1:9/a", "https://example.org/b"],
        alarm_mqtt_host="127.0.0.1",
        alarm_mqtt_topic="ward/alarms/",
    )
    outbound = Outbound.from_settings(settings)
    assert [s.name for s in outbound.sinks] == [
        "webhook http://127.0.0.1:9/a",
        "webhook https://example.org/b",
        "mqtt 127.0.0.1:1883",
    ]
    sink = outbound.sinks[2]
    assert isinstance(sink, MqttSink)
    assert sink.topic_of({"patient": "a+b#"}) == "ward/alarms/a_b_"
    assert Outbound.from_settings(Settings()).sinks == []
