"""The MQTT subscriber: owns the broker connection and turns device messages into records.

One :class:`MqttSubscriber` holds one paho client (its network thread) and one
worker thread::

    paho thread:   message -> queue (nothing else: the socket must keep being read)
    worker thread: queue -> batch -> parse -> attribute to patients -> commit -> PUBACK

Delivery: QoS 1 on a persistent session (MQTT 5 ``clean_start`` off with a session
expiry), and manual acknowledgement, so the broker keeps every message until
its PUBACK, and a PUBACK is sent only after the batch holding the message is
committed. A subscriber that dies before acknowledging gets the messages again
from the broker when it comes back; the store's idempotency on (device,
``boot_id.seq``) turns those resends, and any duplicate a device sends, into
duplicates instead of new rows. A bad message is quarantined once: a
redelivery or resend of it (same topic, same payload) while its first entry is
unresolved is acknowledged without a new entry (see :func:`_drop_requarantined`).
Interventions are validated and stored as ``POST /api/v1/interventions`` does
them, in the batch's transaction. Acknowledgements are only sent on the
connection the message came in on: after a reconnect, message ids are the
broker's to reuse, and it resends what was not acknowledged anyway.

Reconnection: paho's network loop reconnects with exponential backoff (from
``reconnect_min_s`` doubling to ``reconnect_max_s``) for as long as the
subscriber runs. A batch the store cannot take is retried with the same
backoff and stays unacknowledged meanwhile.

TLS: with ``tls_ca`` (and, for brokers that require client certificates,
``tls_certfile``/``tls_keyfile``) the connection is TLS 1.2 or newer, and the
broker's certificate must come from that CA and name ``host``
(:func:`tls_context`). A refused handshake or certificate shows in
``last_error``; the subscriber keeps retrying as for any other refusal.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import paho.mqtt.client as paho
import sqlalchemy as sa
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from sqlalchemy.engine import Connection

from medtwin.core.clock import from_us
from medtwin.core.errors import ConfigurationError, MedtwinError
from medtwin.core.settings import Settings
from medtwin.core.tls import CIPHERS, MINIMUM_VERSION
from medtwin.data.store import AppendStatus, Origin, QuarantineEntry, SqlStore, schema
from medtwin.devices.mqtt.bindings import DeviceBindings
from medtwin.devices.mqtt.fastclient import BufferedClient
from medtwin.devices.mqtt.interventions import check_interventions
from medtwin.devices.mqtt.payload import (
    DEFAULT_ROOT,
    INTERVENTIONS,
    OBSERVATIONS,
    DeviceIntervention,
    DeviceObservation,
    PayloadRejection,
    content_digest,
    parse_message,
)
from medtwin.twins.ingest import Ingestor, intervention_event

log = logging.getLogger(__name__)

CHANNEL = "mqtt"
# Item fields of the ingestion path, named as the device's payload names them.
_PAYLOAD_FIELD = {"id": "seq", "source": "topic", "patient": "patient"}


class MqttError(MedtwinError):
    """The broker could not be reached, or refused the connection."""


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """Where the broker is and how the subscriber talks to it."""

    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = "medtwin-ingest"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    # TLS is on when a CA or a client certificate is given. The broker's certificate is
    # checked against ``tls_ca`` (the system's CAs without it) and must name ``host``.
    tls_ca: Path | None = None
    # Mutual TLS: the subscriber's certificate (PEM chain) and key (omit when the
    # certificate file holds it), for brokers with ``require_certificate true``.
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    tls_keyfile_password: str | None = field(default=None, repr=False)
    root: str = DEFAULT_ROOT
    keepalive_s: int = 30
    # How long the broker keeps the session (and queues messages) while we are away.
    session_expiry_s: int = 7 * 24 * 3600
    # Unacknowledged messages the broker may send ahead (MQTT 5 Receive Maximum):
    # several batches, so the broker never waits for a commit to send the next one.
    receive_maximum: int = 20_000
    batch_size: int = 2_000
    linger_s: float = 0.005  # wait this long for a batch to fill (s)
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> MqttConfig:
        """The configuration the ``mqtt_*`` settings give; ConfigurationError without a host."""
        if settings.mqtt_host is None:
            raise ConfigurationError("MEDTWIN_MQTT_HOST is not set")
        password = settings.mqtt_password
        key_password = settings.mqtt_tls_keyfile_password
        return cls(
            host=settings.mqtt_host,
            port=settings.mqtt_port,
            client_id=settings.mqtt_client_id,
            username=settings.mqtt_username,
            password=None if password is None else password.get_secret_value(),
            tls_ca=settings.mqtt_tls_ca,
            tls_certfile=settings.mqtt_tls_certfile,
            tls_keyfile=settings.mqtt_tls_keyfile,
            tls_keyfile_password=None if key_password is None else key_password.get_secret_value(),
        )

    @property
    def tls(self) -> bool:
        """Whether the connection to the broker is TLS (a key alone is an error, not plain)."""
        return any(f is not None for f in (self.tls_ca, self.tls_certfile, self.tls_keyfile))


def tls_context(config: MqttConfig) -> ssl.SSLContext:
    """The client TLS context of ``config``: TLS 1.2 or newer, the broker's certificate and
    host name verified, and the client certificate for mutual TLS when one is configured.

    ConfigurationError when a file is missing or cannot be loaded.
    """
    if config.tls_keyfile is not None and config.tls_certfile is None:
        raise ConfigurationError("an MQTT TLS key is set without its certificate")
    for name, path in (
        ("CA", config.tls_ca),
        ("certificate", config.tls_certfile),
        ("key", config.tls_keyfile),
    ):
        if path is not None and not Path(path).is_file():
            raise ConfigurationError(f"MQTT TLS {name}: no file {path}")
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH,
            cafile=None if config.tls_ca is None else str(config.tls_ca),
        )
        context.minimum_version = MINIMUM_VERSION
        context.set_ciphers(CIPHERS)
        if config.tls_certfile is not None:
            password = config.tls_keyfile_password or ""
            # Always a callable: without one, OpenSSL asks for the passphrase of an
            # encrypted key on the terminal, and a service would hang there.
            context.load_cert_chain(config.tls_certfile, config.tls_keyfile, lambda: password)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigurationError(f"MQTT TLS setup failed: {exc}") from exc
    return context


@dataclass
class SubscriberStats:
    """Counters of one subscriber since it started (for tests, metrics, benchmarks)."""

    received: int = 0
    stored: int = 0
    duplicate: int = 0
    conflict: int = 0
    rejected: int = 0  # quarantined: bad payload, unbound device, invalid value
    # Of the rejected, those already quarantined and unresolved: not entered again.
    requarantined: int = 0
    interventions: int = 0  # intervention messages stored or recognized as resends
    acked: int = 0
    batches: int = 0
    connects: int = 0
    store_retries: int = 0

    @property
    def processed(self) -> int:
        """Messages whose batch was committed (each is stored, a duplicate, or quarantined)."""
        return self.stored + self.duplicate + self.conflict + self.rejected + self.interventions


class _Message(NamedTuple):
    epoch: int  # which connection it came in on
    mid: int
    qos: int
    topic: str
    payload: bytes


class MqttSubscriber:
    """Subscribes to the device topics and ingests what devices publish."""

    def __init__(
        self,
        config: MqttConfig,
        ingestor: Ingestor,
        *,
        bindings: DeviceBindings | None = None,
    ) -> None:
        store = ingestor.store
        if not isinstance(store, SqlStore):
            raise ConfigurationError("the MQTT subscriber needs a SQL store")
        self.config = config
        self.ingestor = ingestor
        self.store: SqlStore = store
        self.bindings = bindings or DeviceBindings(store)
        self.stats = SubscriberStats()
        self.last_error: MedtwinError | None = None
        self._queue: deque[_Message] = deque()
        self._ready = threading.Condition()
        self._conn_lock = threading.Lock()  # epoch changes vs. acknowledgements
        self._epoch = 0
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._aborted = False
        self._worker: threading.Thread | None = None
        self._client: Any = None

    # -- life cycle -----------------------------------------------------------

    def start(self) -> None:
        """Connect (in the background, retrying with backoff) and start ingesting."""
        if self._client is not None:
            raise RuntimeError("the subscriber was started already")
        self._client = client = self._make_client()
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self.config.session_expiry_s
        properties.ReceiveMaximum = self.config.receive_maximum
        try:
            client.connect_async(
                self.config.host,
                self.config.port,
                keepalive=self.config.keepalive_s,
                clean_start=False,
                properties=properties,
            )
        except (ValueError, OSError) as exc:
            raise ConfigurationError(f"MQTT broker address is not usable: {exc}") from exc
        self._worker = threading.Thread(target=self._work, name="medtwin-mqtt-ingest", daemon=True)
        self._worker.start()
        client.loop_start()

    def wait_connected(self, timeout_s: float = 10.0) -> None:
        """Wait for the broker to take the connection and subscription; MqttError on timeout."""
        if not self._connected.wait(timeout_s):
            detail = f": {self.last_error}" if self.last_error else ""
            raise MqttError(
                f"not connected to the MQTT broker at {self.config.host}:{self.config.port} "
                f"after {timeout_s:g} s{detail}"
            )

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def pending(self) -> int:
        """Messages received and not processed yet."""
        return len(self._queue)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the batch in hand, acknowledge it, and disconnect (the session stays).

        Messages still queued are left unacknowledged: the broker sends them again
        when the subscriber comes back.
        """
        self._stopping.set()
        with self._ready:
            self._ready.notify_all()
        if self._worker is not None:
            self._worker.join(timeout_s)
        client = self._client
        if client is not None:
            client.disconnect()
            client.loop_stop()
        self._connected.clear()

    def abort(self) -> None:
        """Stop as a crash would: nothing more acknowledged, the connection dropped.

        For tests and for shutting down when the store is gone.
        """
        with self._conn_lock:
            self._aborted = True
        self._stopping.set()
        with self._ready:
            self._ready.notify_all()
        client = self._client
        if client is not None:
            client.loop_stop()
            sock = client.socket()
            if sock is not None:
                sock.close()  # no DISCONNECT: the broker sees the connection die
        if self._worker is not None:
            self._worker.join(10.0)
        self._connected.clear()

    # -- paho side ------------------------------------------------------------

    def _make_client(self) -> Any:
        config = self.config
        client = BufferedClient(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            protocol=paho.MQTTv5,
            manual_ack=True,
        )
        if config.username is not None:
            client.username_pw_set(config.username, config.password)
        if config.tls:
            client.tls_set_context(tls_context(config))
        # Typed int, but paho only adds and compares them: fractions of a second work.
        client.reconnect_delay_set(
            config.reconnect_min_s,  # type: ignore[arg-type]
            config.reconnect_max_s,  # type: ignore[arg-type]
        )
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.message_sink = self._on_publish
        return client

    def _on_connect(
        self, client: Any, _userdata: Any, flags: Any, reason: Any, _properties: Any
    ) -> None:
        if reason.is_failure:
            # Refused (bad credentials, not authorized): paho retries with backoff.
            self.last_error = MqttError(f"the broker refused the connection: {reason}")
            log.warning("MQTT broker refused the connection: %s", reason)
            return
        with self._conn_lock:
            self._epoch += 1
        self.stats.connects += 1
        self.last_error = None
        root = self.config.root
        client.subscribe(
            [
                (f"{root}/+/{OBSERVATIONS}", SubscribeOptions(qos=1)),
                (f"{root}/+/{INTERVENTIONS}", SubscribeOptions(qos=1)),
            ]
        )
        log.info(
            "connected to the MQTT broker (session %s)",
            "resumed" if flags.session_present else "new",
        )
        # Connected counts from the SUBACK: before it, a fresh broker drops what is published.

    def _on_subscribe(
        self, _client: Any, _userdata: Any, _mid: Any, reasons: Any, _properties: Any
    ) -> None:
        refused = [str(reason) for reason in reasons if reason.is_failure]
        if refused:
            self.last_error = MqttError(f"the broker refused the subscription: {refused}")
            log.warning("MQTT broker refused the subscription: %s", refused)
            return
        self._connected.set()

    def _on_connect_fail(self, client: Any, _userdata: Any) -> None:
        where = f"MQTT broker at {self.config.host}:{self.config.port}"
        cause = client.socket_error
        if isinstance(cause, ssl.SSLError):
            self.last_error = MqttError(f"TLS handshake with the {where} failed: {cause}")
        else:
            detail = "" if cause is None else f": {cause}"
            self.last_error = MqttError(f"{where} is unreachable{detail}")

    def _on_disconnect(
        self, client: Any, _userdata: Any, _flags: Any, reason: Any, _properties: Any
    ) -> None:
        with self._conn_lock:
            self._epoch += 1  # acknowledgements of the old connection must not go out
        accepted = self._connected.is_set()
        self._connected.clear()
        if self._stopping.is_set():
            return
        cause = client.socket_error
        if isinstance(cause, ssl.SSLError):
            # With TLS 1.3 a broker that refuses the client's certificate says so only
            # after the handshake, in an alert read here.
            self.last_error = MqttError(f"the MQTT broker closed the TLS connection: {cause}")
        elif not accepted and self.last_error is None:
            # E.g. plain MQTT sent to a TLS port: the broker just hangs up.
            self.last_error = MqttError(
                f"the MQTT broker closed the connection before accepting it ({reason})"
            )
        log.warning("disconnected from the MQTT broker (%s); reconnecting", reason)

    def _on_publish(self, mid: int, qos: int, topic_bytes: bytes, payload: bytes) -> None:
        """The client's message sink: one message in, on the network thread."""
        try:
            topic = topic_bytes.decode("utf-8")
        except UnicodeDecodeError:  # MQTT requires UTF-8 topics; keep it readable anyway
            topic = topic_bytes.decode("utf-8", errors="replace")
        queue = self._queue
        queue.append(_Message(self._epoch, mid, qos, topic, payload))
        self.stats.received += 1
        # Wake the worker for the first message of a batch and when a batch is full.
        size = len(queue)
        if size == 1 or size == self.config.batch_size:
            with self._ready:
                self._ready.notify()

    # -- worker side ----------------------------------------------------------

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            self._handle(batch)

    def _take(self) -> list[_Message] | None:
        """The next batch: up to ``batch_size`` messages, after at most ``linger_s``."""
        config = self.config
        queue = self._queue
        with self._ready:
            while not queue:
                if self._stopping.is_set():
                    return None
                self._ready.wait(0.5)
            if len(queue) < config.batch_size and not self._stopping.is_set():
                self._ready.wait(config.linger_s)
            if self._stopping.is_set() and self._aborted:
                return None
        count = min(len(queue), config.batch_size)
        return [queue.popleft() for _ in range(count)]

    def _handle(self, batch: list[_Message]) -> None:
        delay = self.config.reconnect_min_s
        while True:
            try:
                self._process(batch)
                break
            except MedtwinError as exc:
                # Most likely the store is away: keep the batch, unacknowledged, and retry.
                self.stats.store_retries += 1
                log.warning(
                    "MQTT batch of %d could not be stored (%s); retrying in %.1f s",
                    len(batch),
                    type(exc).__name__,
                    delay,
                )
                if self._stopping.wait(delay):
                    return  # left unacknowledged: the broker resends it
                delay = min(delay * 2, self.config.reconnect_max_s)
        self._ack(batch)

    def _ack(self, batch: list[_Message]) -> None:
        client = self._client
        with self._conn_lock:
            if self._aborted:
                return
            epoch = self._epoch
            mids = [m.mid for m in batch if m.epoch == epoch and m.qos]
            client.ack_many(mids)
        self.stats.acked += len(mids)

    def _process(self, batch: list[_Message]) -> None:
        """Parse, attribute and commit one batch: one transaction for everything it brings."""
        root = self.config.root
        ingestor = self.ingestor
        parsed = [parse_message(m.topic, m.payload, root=root) for m in batch]
        index = self.bindings.index(p.device for p in parsed if not isinstance(p, PayloadRejection))
        now = ingestor.clock.now_us()
        items: list[dict[str, Any]] = []
        readings: list[DeviceObservation] = []
        treatments: list[tuple[DeviceIntervention, str]] = []
        quarantine: list[QuarantineEntry] = []
        for reading in parsed:
            if isinstance(reading, PayloadRejection):
                quarantine.append(
                    _entry(reading.location, reading.reason, reading, reading.device, now)
                )
                continue
            patient = index.patient_at(reading.device, reading.time_us)
            if patient is None:
                location, reason = unbound_fault(reading)
                quarantine.append(_entry(location, reason, reading, reading.device, now))
            elif isinstance(reading, DeviceObservation):
                items.append(reading.item(patient))
                readings.append(reading)
            else:
                treatments.append((reading, patient))
        # Interventions: the validation of the HTTP route; refusals located by topic and field.
        checked = check_interventions(treatments, now_us=now, max_future_us=ingestor.max_future_us)
        quarantine += [
            _entry(
                f"{treatments[r.index][0].topic}: {r.field or 'payload'}",
                r.reason,
                treatments[r.index][0],
                treatments[r.index][0].device,
                now,
            )
            for r in checked.rejected
        ]
        records = [record for _, record in checked.accepted]
        # Each observation came in on its device's topic, as reading boot_id.seq.
        origins: list[Origin | None] = [
            Origin(CHANNEL, reading.topic, reading.reading_id) for reading in readings
        ]
        prepared = ingestor.prepare(items, channel=CHANNEL, origins=origins)
        invalid = [
            _entry(
                item_location(readings[r.index], r.field),
                r.reason,
                readings[r.index],
                readings[r.index].device,
                prepared.received_us,
            )
            for r in prepared.rejections
        ]
        new_patients = prepared.new_patients
        if records:
            # Patients first seen through an intervention, as ingest_interventions adds them.
            known = {p.id for p in new_patients}
            new_patients = new_patients + [
                p for p in ingestor.new_patients(records, now) if p.id not in known
            ]
        prepared = dataclasses.replace(
            prepared, quarantine=invalid + quarantine, new_patients=new_patients
        )
        treated: list[AppendStatus] = []
        resends = [0]

        def within(conn: Connection) -> None:
            # In the batch's transaction, after its observations and quarantine entries.
            if records:
                treated[:] = self.store.append_interventions_in(
                    conn, records, received_us=prepared.received_us, channel=CHANNEL
                )
            if prepared.quarantine:
                resends[0] = _drop_requarantined(conn, prepared.quarantine)

        results = (
            ingestor.commit(prepared, extra=within)
            if items or prepared.quarantine or records
            else []
        )
        if records:
            for fresh in new_patients:
                if fresh.id not in ingestor.runtime:
                    ingestor.runtime.add(fresh.id)
            stored = [
                record
                for record, status in zip(records, treated, strict=True)
                if status is AppendStatus.STORED
            ]
            if stored and ingestor.bus.has_subscribers:
                ingestor.bus.publish([intervention_event(record) for record in stored])
        stats = self.stats
        for result in results:
            if result.status == "stored":
                stats.stored += 1
            elif result.status == "duplicate":
                stats.duplicate += 1
            elif result.status == "conflict":
                stats.conflict += 1
        stats.rejected += len(quarantine) + len(invalid)
        stats.requarantined += resends[0]
        stats.interventions += len(records)
        stats.batches += 1


def unbound_fault(reading: DeviceObservation | DeviceIntervention) -> tuple[str, str]:
    """(location, reason) of a reading from a device on no patient at the reading's time."""
    moment = from_us(reading.time_us).isoformat().replace("+00:00", "Z")
    return (
        f"{reading.topic}: patient",
        f"device {reading.device} is not bound to a patient at {moment}",
    )


def item_location(reading: DeviceObservation, item_field: str) -> str:
    """Where in the device's message the ingestion item's field ``item_field`` came from."""
    return f"{reading.topic}: {_PAYLOAD_FIELD.get(item_field, item_field) or 'payload'}"


def _entry(
    location: str,
    reason: str,
    message: DeviceObservation | DeviceIntervention | PayloadRejection,
    device: str | None,
    received_us: int,
) -> QuarantineEntry:
    """A quarantine entry of one message, its reason tagged with the message's digest."""
    tag = f"[sha256:{content_digest(message.topic, message.raw)}]"
    return QuarantineEntry(CHANNEL, location, f"{reason} {tag}", message.raw, device, received_us)


def _drop_requarantined(conn: Connection, entries: Sequence[QuarantineEntry]) -> int:
    """Delete the entries just inserted that repeat an unresolved one; return how many.

    Runs in the transaction that inserted ``entries``: of the unresolved MQTT rows
    with the same location and reason (the reason ends in the digest of topic and
    payload, see :func:`_entry`), the oldest stays and the others go, so a message
    redelivered or resent while its first entry waits for a fix is not quarantined
    again. Payloads are not compared: the store may seal them (a fresh nonce each
    time), which makes equal payloads differ as stored.
    """
    table = schema.quarantine
    keys = sorted({(e.location, e.reason) for e in entries if e.channel == CHANNEL})
    rows: list[tuple[int, str, str]] = []
    for start in range(0, len(keys), 400):
        chunk = keys[start : start + 400]
        rows += [
            (row.row_id, row.location, row.reason)
            for row in conn.execute(
                sa.select(table.c.row_id, table.c.location, table.c.reason).where(
                    table.c.channel == CHANNEL,
                    table.c.resolved_us.is_(None),
                    sa.tuple_(table.c.location, table.c.reason).in_(chunk),
                )
            )
        ]
    first: dict[tuple[str, str], int] = {}
    for row_id, location, reason in sorted(rows):
        first.setdefault((location, reason), row_id)
    extra = sorted({row_id for row_id, _, _ in rows} - set(first.values()))
    for start in range(0, len(extra), 400):
        conn.execute(sa.delete(table).where(table.c.row_id.in_(extra[start : start + 400])))
    return len(extra)
