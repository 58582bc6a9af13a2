"""The HL7 v2 adapter as one object: it owns the MLLP listener and maps library errors.

:class:`MllpCoordinator` builds the processor and the server from
:class:`~medtwin.core.settings.Settings`, starts and stops the listener in the
running event loop (``medtwin serve``'s), and translates what the libraries raise
into medtwin's errors: a port that cannot be bound or a TLS certificate that cannot
be loaded is a :class:`~medtwin.core.errors.ConfigurationError` at start; python-hl7's
errors are :class:`~medtwin.core.errors.InputError` inside the processor and
become acknowledgements, never exceptions out of here.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

from medtwin.core.errors import ConfigurationError
from medtwin.devices.hl7.ack import AckCode, Fault, build_ack, enhanced_code, sends_accept_ack
from medtwin.devices.hl7.mllp import MllpServer
from medtwin.devices.hl7.parse import salvage_header
from medtwin.devices.hl7.processor import HL7Processor, ReadMessage

__all__ = ["MllpCoordinator", "mllp_ssl_context"]

log = logging.getLogger("medtwin.devices.hl7")


def mllp_ssl_context(settings: Any) -> ssl.SSLContext | None:
    """TLS for MLLP from the project's TLS settings; None when no certificate is set.

    With ``mllp_client_ca`` the server demands a client certificate signed by that CA
    (mutual TLS).
    """
    from medtwin.core.tls import server_context, tls_enabled

    if not tls_enabled(settings):
        if getattr(settings, "mllp_client_ca", None) is not None:
            raise ConfigurationError(
                "MEDTWIN_MLLP_CLIENT_CA needs TLS: set MEDTWIN_TLS_CERTFILE and MEDTWIN_TLS_KEYFILE"
            )
        return None
    context = server_context(settings)
    client_ca: Path | None = getattr(settings, "mllp_client_ca", None)
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=str(client_ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"MEDTWIN_MLLP_CLIENT_CA: cannot load {client_ca}") from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class MllpCoordinator:
    """Owns the HL7 processor and its MLLP listener."""

    def __init__(
        self,
        processor: HL7Processor,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        idle_timeout_s: float = 30.0,
        max_message_bytes: int = 1024 * 1024,
        allowed_peers: tuple[str, ...] | list[str] = (),
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.processor = processor
        self.max_message_bytes = max_message_bytes
        try:
            self.server = MllpServer(
                self._handle,
                oversize=self._oversize,
                host=host,
                port=port,
                idle_timeout_s=idle_timeout_s,
                max_message_bytes=max_message_bytes,
                allowed_peers=allowed_peers,
                ssl_context=ssl_context,
                batch_handler=self._handle_batch,
                read_ahead=processor.read_ahead,
            )
        except ValueError as exc:  # ipaddress: a peer that is no address or network
            raise ConfigurationError(f"MEDTWIN_MLLP_ALLOWED_PEERS: {exc}") from exc

    @classmethod
    def from_settings(cls, settings: Any, processor: HL7Processor) -> MllpCoordinator | None:
        """The listener ``settings`` describe for ``processor``; None when MLLP is off (no port)."""
        if settings.mllp_port is None:
            return None
        return cls(
            processor,
            host=settings.mllp_host,
            port=settings.mllp_port,
            idle_timeout_s=settings.mllp_idle_timeout_s,
            max_message_bytes=settings.mllp_max_message_bytes,
            allowed_peers=settings.mllp_allowed_peers,
            ssl_context=mllp_ssl_context(settings),
        )

    @property
    def port(self) -> int:
        """The port listened on."""
        return self.server.bound_port

    async def start(self) -> None:
        """Listen; ConfigurationError when the address cannot be bound."""
        try:
            await self.server.start()
        except OSError as exc:
            raise ConfigurationError(
                f"MLLP cannot listen on {self.server.host}:{self.server.port}: {exc.strerror}"
            ) from exc
        log.info("mllp: listening on %s:%d", self.server.host, self.port)

    async def stop(self) -> None:
        await self.server.stop()

    def _handle(self, message: bytes, peer: str) -> bytes | None:
        outcome = self.processor.handle(message)
        return None if outcome.ack is None else outcome.ack.encode("utf-8")

    def _handle_batch(self, frames: list[tuple[object, str]]) -> list[bytes | None]:
        """Frames that arrived together: committed together (group commit), answered each.

        A frame comes as its bytes, or as the processor's ``read_ahead`` read it.
        """
        outcomes = self.processor.handle_batch([_message(item) for item, _ in frames])
        return [None if o.ack is None else o.ack.encode("utf-8") for o in outcomes]

    def _oversize(self, head: bytes) -> bytes | None:
        """AR (CR in enhanced mode) for a frame over the size limit; MSA-2 from its MSH."""
        header = salvage_header(head.decode("utf-8", "replace"))
        code = AckCode.AR
        if header is not None and header.enhanced:
            code = enhanced_code(code)
        if not sends_accept_ack(header, code):
            return None
        fault = Fault("MSH", f"message larger than {self.max_message_bytes} bytes", 207)
        return build_ack(header, code, [fault]).encode("utf-8")


def _message(item: object) -> bytes | ReadMessage:
    if isinstance(item, bytes | ReadMessage):
        return item
    raise TypeError(f"the MLLP server handed over a {type(item).__name__}")
