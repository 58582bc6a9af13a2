"""The buffered client's own packet framing, over real sockets and a real broker."""

from __future__ import annotations

import json
import socket
import struct

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from medtwin.data.store import SqlStore
from medtwin.devices.mqtt.fastclient import _BufferedSocket
from medtwin.devices.mqtt.loadgen import observation_payloads, publish

from .conftest import Rig, hours_ago, wait_for


def _packet(command: int, body: bytes) -> bytes:
    length = len(body)
    encoded = bytearray()
    while True:
        byte, length = length % 128, length // 128
        encoded.append(byte | (0x80 if length else 0))
        if not length:
            return bytes([command]) + bytes(encoded) + body


def _publish_body(topic: bytes, mid: int, payload: bytes, properties: bytes = b"\x00") -> bytes:
    return struct.pack("!H", len(topic)) + topic + struct.pack("!H", mid) + properties + payload


def test_frames_split_across_reads_and_packets_of_many_chunks() -> None:
    big = b"x" * 300_000  # several 64 KiB reads, remaining length of 3 bytes
    packets = [
        _packet(0x32, _publish_body(b"a/b", 1, b"{}")),
        _packet(0x32, _publish_body(b"a/b", 2, big)),
        _packet(0xD0, b""),  # PINGRESP: no body
        _packet(0x32, _publish_body(b"a/c", 3, b"[1]")),
    ]
    wire = b"".join(packets)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    buffered = _BufferedSocket(ours)
    frames: list[tuple[int, bytes]] = []
    try:
        # Sent in pieces that cut through headers, lengths and bodies.
        for start in range(0, len(wire), 7_001):
            theirs.sendall(wire[start : start + 7_001])
            while True:
                try:
                    frame = buffered.frame()
                except BlockingIOError:
                    break
                assert frame is not None
                frames.append(frame)
            # A part of a packet waiting for more is not reported as pending.
            assert buffered.pending() == 0
        theirs.close()
        assert buffered.frame() is None  # end of stream
    finally:
        ours.close()
    assert [command for command, _ in frames] == [0x32, 0x32, 0xD0, 0x32]
    assert frames[1][1] == _publish_body(b"a/b", 2, big)
    assert all(type(body) is bytes for _, body in frames)


def test_properties_qos0_and_oversized_messages_over_the_broker(
    store: SqlStore, shared_broker: tuple[str, int]
) -> None:
    rig = Rig(store, *shared_broker)
    start = hours_ago(2)
    rig.bind("mon", "p1", start)
    payloads = observation_payloads(3, start=start, boot_id="f")
    subscriber = rig.subscriber()
    try:
        # MQTT 5 properties ahead of the payload are skipped, whatever they hold.
        sender = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        sender.connect(rig.host, rig.port)
        sender.loop_start()
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.ContentType = "application/json"
        properties.MessageExpiryInterval = 3600
        properties.UserProperty = [("ward", "icu" * 100), ("bed", "7")]
        topic = rig.topic("mon")
        sender.publish(topic, payloads[0], qos=1, properties=properties).wait_for_publish(5)
        sender.publish(rig.topic("mon"), payloads[1], qos=0).wait_for_publish(5)
        sender.disconnect()
        sender.loop_stop()
        # Larger than a device reading may be, and than one read of the socket.
        publish(rig.host, rig.port, [(rig.topic("mon"), b"{" + b" " * 200_000 + b"}")])
        publish(rig.host, rig.port, [(rig.topic("mon"), payloads[2])])
        wait_for(lambda: subscriber.stats.processed == 4, 10, "every message")
    finally:
        rig.close()
    stored = [(i.observation.source_id, i.observation.value_num) for i in store.history("p1").items]
    assert sorted(stored) == [(f"f.{n}", json.loads(payloads[n])["value"]) for n in range(3)]
    (entry,) = store.quarantined(channel="mqtt")
    assert entry.reason.startswith("payload of 200002 bytes exceeds 65536")
    assert subscriber.stats.acked == 3  # the QoS 0 message has no acknowledgement
