"""A paho client that reads the socket in large chunks and frames packets itself.

paho reads each MQTT packet with several ``recv`` calls of a few bytes (command,
length, body), reads one packet per wake-up of its loop, and builds an
``MQTTMessage`` and a ``Properties`` object for every PUBLISH: at thousands of
messages per second that per-packet work, not the work on the messages, bounds
the rate (profiled at 10,000 readings/s: a third of the network thread's time
went to parsing MQTT 5 properties that nobody reads). :class:`BufferedClient`

- gives paho a socket that reads up to 64 KiB at a time and reports what it
  holds through ``pending()`` (which paho's loop already asks of TLS sockets, so
  it does not wait in ``select`` while bytes are buffered);
- frames every complete packet in that buffer in one pass of the loop;
- hands QoS 0 and 1 PUBLISH packets to :attr:`BufferedClient.message_sink`, when
  set, as (mid, qos, topic bytes, payload bytes), skipping ``on_message``;
- sends a batch of acknowledgements as one write (:meth:`BufferedClient.ack_many`).

Every other packet (CONNACK, SUBACK, PINGRESP, DISCONNECT, QoS 2 flows) goes
through paho's own handlers. It overrides internals of paho 2 (``_create_socket``,
``loop_read``) and uses others (``_in_packet``, ``_packet_handle``, ``_packet_queue``,
``_send_puback``); the dependency is pinned below paho 3 and the tests run against
the installed one.
"""

from __future__ import annotations

import ssl
import struct
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket

_CHUNK = 65_536
# Packets read in one pass of the network loop before it writes (acknowledgements) again.
_BURST = 1_000
_PUBLISH = 0x30
_PUBACK = 0x40
_PUBACK_PACKET = struct.Struct("!BBH")  # PUBACK, remaining length 2, mid: reason 0 (success)

# (mid, qos, topic, payload) of one PUBLISH; runs on the network thread.
MessageSink = Callable[[int, int, bytes, bytes], None]


class _BufferedSocket:
    """A socket whose reads are served from a buffer refilled 64 KiB at a time."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._data: bytes | bytearray = b""
        self._pos = 0
        # The buffer ends in part of a packet and the socket had no more: not "pending".
        self._starved = False

    def _fill(self) -> bool:
        """Read more bytes after what is left unread; False at end of stream."""
        data = self._sock.recv(_CHUNK)  # BlockingIOError, SSL errors and OSError pass through
        if not data:
            return False
        if self._pos >= len(self._data):
            self._data = data
        elif self._pos or type(self._data) is bytes:
            # Part of a packet is left: grow it in a bytearray, so that a packet of many
            # chunks is assembled in linear time (not one copy of it per chunk).
            self._data = bytearray(memoryview(self._data)[self._pos :]) + data
        else:
            self._data += data
        self._pos = 0
        self._starved = False
        return True

    def recv(self, size: int) -> bytes:
        if self._pos >= len(self._data) and not self._fill():
            return b""
        end = self._pos + size
        chunk = bytes(self._data[self._pos : end])
        self._pos = min(end, len(self._data))
        return chunk

    def frame(self) -> tuple[int, bytes] | None:
        """The next whole packet as (first byte, body after the length); None at end of stream.

        Reads from the socket only when the buffer holds no whole packet; raises
        what the socket raises (BlockingIOError: nothing more for now).
        """
        while True:
            data, pos = self._data, self._pos
            available = len(data) - pos
            if available >= 2:
                length = 0
                shift = 0
                cursor = pos + 1
                limit = min(len(data), pos + 5)  # at most 4 length bytes
                while cursor < limit:
                    byte = data[cursor]
                    cursor += 1
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        end = cursor + length
                        if end <= len(data):
                            self._pos = end
                            body = data[cursor:end]
                            return data[pos], body if type(body) is bytes else bytes(body)
                        break
                else:
                    if cursor - pos > 4:
                        raise MalformedPacket("remaining length longer than 4 bytes")
            try:
                if not self._fill():
                    return None
            except OSError:
                self._starved = True
                raise

    def pending(self) -> int:
        # Reporting a partial packet would make paho's loop spin instead of waiting in select.
        buffered = 0 if self._starved else len(self._data) - self._pos
        inner = getattr(self._sock, "pending", None)
        return buffered + (inner() if inner is not None else 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class BufferedClient(paho.Client):
    """``paho.mqtt.client.Client`` with buffered reads and a direct message sink (same API)."""

    #: Set to receive QoS 0/1 messages directly (no ``MQTTMessage``, properties unread).
    message_sink: MessageSink | None = None
    #: Why the last connection attempt or read failed (paho's callbacks do not say).
    socket_error: OSError | None = None

    def _create_socket(self) -> Any:
        try:
            sock = super()._create_socket()
        except OSError as exc:  # refused, unreachable, TLS handshake (ssl.SSLError)
            self.socket_error = exc
            raise
        self.socket_error = None
        return _BufferedSocket(sock)

    def loop_read(self, max_packets: int = 1) -> Any:
        """Handle every whole packet available (up to a burst), not only one per wake-up."""
        sock: Any = self._sock
        if sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        if not isinstance(sock, _BufferedSocket) or self._in_packet["command"]:
            return self._paho_loop_read(max_packets)
        received = False
        rc: Any = MQTTErrorCode.MQTT_ERR_SUCCESS
        try:
            for _ in range(max(max_packets, _BURST)):
                try:
                    frame = sock.frame()
                except (BlockingIOError, ssl.SSLWantReadError):
                    break
                except ssl.SSLWantWriteError:
                    self._call_socket_register_write()
                    break
                except MalformedPacket as exc:
                    self._easy_log(paho.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
                    rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
                    break
                except OSError as exc:
                    self.socket_error = exc
                    self._easy_log(paho.MQTT_LOG_ERR, "failed to receive on socket: %s", exc)
                    rc = MQTTErrorCode.MQTT_ERR_CONN_LOST
                    break
                if frame is None:
                    rc = MQTTErrorCode.MQTT_ERR_CONN_LOST
                    break
                received = True
                rc = self._handle_frame(*frame)
                if rc or self._sock is not sock:
                    break
        finally:
            if received:
                # Keepalive: paho pings and then gives up on a silent broker from this time.
                with self._msgtime_mutex:
                    self._last_bytes_received = paho.time_func()
        if rc > 0:
            return self._loop_rc_handle(rc)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _paho_loop_read(self, max_packets: int) -> Any:
        """paho's own packet reading, for sockets this class did not wrap."""
        for _ in range(max(max_packets, _BURST)):
            if self._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_frame(self, command: int, body: bytes) -> Any:
        sink = self.message_sink
        qos = (command >> 1) & 0x03
        if command & 0xF0 == _PUBLISH and sink is not None and qos < 2:
            try:
                mid, topic, payload = _publish_parts(body, qos, self._protocol == paho.MQTTv5)
            except MalformedPacket as exc:
                self._easy_log(paho.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
                return MQTTErrorCode.MQTT_ERR_PROTOCOL
            sink(mid, qos, topic, payload)
            if qos == 1 and not self._manual_ack:
                return self._send_puback(mid)
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        # Everything else the way paho's _packet_read hands a whole packet over.
        self._in_packet = {
            "command": command,
            "have_remaining": 1,
            "remaining_count": [],
            "remaining_mult": 1,
            "remaining_length": len(body),
            "packet": bytearray(body),
            "to_process": 0,
            "pos": 0,
        }
        try:
            rc = self._packet_handle()
        except MalformedPacket as exc:
            self._easy_log(paho.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        finally:
            self._in_packet = {
                "command": 0,
                "have_remaining": 0,
                "remaining_count": [],
                "remaining_mult": 1,
                "remaining_length": 0,
                "packet": bytearray(b""),
                "to_process": 0,
                "pos": 0,
            }
        return rc

    def ack_many(self, mids: Sequence[int]) -> None:
        """PUBACK the QoS 1 messages ``mids`` (manual acknowledgement) in one write."""
        if not self._manual_ack or not mids:
            return
        pack = _PUBACK_PACKET.pack
        packet = b"".join([pack(_PUBACK, 2, mid) for mid in mids])
        # One queued packet holding every PUBACK: the bytes on the wire are the same as
        # for one packet each, with one wake-up of the network loop instead of one each.
        self._packet_queue(_PUBACK, packet, 0, 0)


def _publish_parts(body: bytes, qos: int, v5: bool) -> tuple[int, bytes, bytes]:
    """(mid, topic, payload) of a PUBLISH body; the MQTT 5 properties are skipped.

    Skipping them is safe for a client that sets no Topic Alias Maximum in its
    CONNECT (the subscriber sets none): the broker then never replaces a topic by
    an alias property, so the topic is always in the packet.
    """
    size = len(body)
    if size < 2:
        raise MalformedPacket("PUBLISH shorter than its topic length")
    cursor = 2 + ((body[0] << 8) | body[1])
    if cursor > size:
        raise MalformedPacket("PUBLISH shorter than its topic")
    topic = body[2:cursor]
    mid = 0
    if qos:
        if cursor + 2 > size:
            raise MalformedPacket("PUBLISH without its packet identifier")
        mid = (body[cursor] << 8) | body[cursor + 1]
        cursor += 2
    if v5:
        length = 0
        shift = 0
        while True:
            if cursor >= size or shift > 21:
                raise MalformedPacket("PUBLISH with a bad property length")
            byte = body[cursor]
            cursor += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        cursor += length
        if cursor > size:
            raise MalformedPacket("PUBLISH shorter than its properties")
    return mid, topic, body[cursor:]
