"""A paho client that reads the socket in large chunks.

paho reads each MQTT packet with several ``recv`` calls of a few bytes (command,
length, body) and reads one packet per wake-up of its loop: at thousands of
messages per second those system calls, not the work on the messages, bound
the rate. :class:`BufferedClient` gives paho a socket that reads up to 64 KiB at
a time and reports what it holds through ``pending()`` (which paho's loop already
asks of TLS sockets, so it does not wait in ``select`` while bytes are buffered),
and reads every buffered packet in one pass of the loop.

It overrides two internals of paho 2 (``_create_socket``, ``loop_read``); the
dependency is pinned below paho 3 and the tests run against the installed one.
"""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

_CHUNK = 65_536
# Packets read in one pass of the network loop before it writes (acknowledgements) again.
_BURST = 1_000


class _BufferedSocket:
    """A socket whose ``recv`` is served from a buffer refilled 64 KiB at a time."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._data = b""
        self._pos = 0

    def recv(self, size: int) -> bytes:
        if self._pos >= len(self._data):
            data = self._sock.recv(_CHUNK)  # BlockingIOError / EOF pass through to paho
            if not data:
                return b""
            self._data = data
            self._pos = 0
        end = self._pos + size
        chunk = self._data[self._pos : end]
        self._pos = min(end, len(self._data))
        return chunk

    def pending(self) -> int:
        buffered = len(self._data) - self._pos
        inner = getattr(self._sock, "pending", None)
        return buffered + (inner() if inner is not None else 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class BufferedClient(paho.Client):
    """``paho.mqtt.client.Client`` with buffered socket reads (same API)."""

    def _create_socket(self) -> Any:
        return _BufferedSocket(super()._create_socket())

    def loop_read(self, max_packets: int = 1) -> Any:
        """Read every packet available (up to a burst), not only one per wake-up."""
        for _ in range(max(max_packets, _BURST)):
            if self._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
        return MQTTErrorCode.MQTT_ERR_SUCCESS
