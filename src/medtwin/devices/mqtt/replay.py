"""Replay of quarantined MQTT messages, once their cause is fixed (a device bound, a code added).

The ``mqtt`` replayer of :class:`medtwin.twins.replay.Replayers`::

    replayers.register("mqtt", replayer(ingestor))

A quarantine entry keeps the message's payload (as text) and its location, which
starts with the topic the message came on; the topic gives the device. The reason
ends in the digest of topic and payload (``content_digest`` in
:mod:`~medtwin.devices.mqtt.payload`), which tells the topic apart from the field
after it whatever the topic holds. The payload goes through the subscriber's own
steps: parsing, attribution to the patient the device was on at the reading's
time, and the ingestion checks. A reading taken in keeps its id (device,
``boot_id.seq``), so a replay twice, or a resend after the replay, is a
duplicate; its origin is the quarantine entry (``quarantine/<row id>``, the
reading id as the entry). A message still at fault is refused with the reason and
location it would be quarantined with now, and nothing is written. Messages whose
bytes were at fault (not UTF-8, not JSON, too large) are refused for that reason:
the text kept is not the bytes the device sent.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

from sqlalchemy.engine import Connection

from medtwin.core.errors import ConfigurationError
from medtwin.data.store import AppendStatus, Origin, QuarantineEntry, SqlStore
from medtwin.devices.mqtt.bindings import DeviceBindings
from medtwin.devices.mqtt.interventions import check_interventions
from medtwin.devices.mqtt.payload import (
    DEFAULT_ROOT,
    DeviceIntervention,
    DeviceObservation,
    PayloadRejection,
    content_digest,
    parse_message,
    parse_topic,
)
from medtwin.devices.mqtt.subscriber import CHANNEL, item_location, unbound_fault
from medtwin.twins.ingest import Ingestor, intervention_event

__all__ = ["MqttReplayer", "replayer"]

_TAG = re.compile(r"\[sha256:([0-9a-f]{12})\]\s*$")
# Faults of the payload's bytes. The text kept has them replaced (U+FFFD for bad UTF-8
# and NUL), so it may parse now where the message did not: such entries are refused
# for their first reason, and a device has to send the reading again.
_BYTE_FAULTS = ("payload is not UTF-8", "payload is not JSON", "payload is not usable JSON")
_TOO_LARGE = re.compile(r"payload of \d+ bytes exceeds \d+")

Fault = tuple[str, str]  # (reason, location)


class MqttReplayer:
    """Takes quarantined MQTT messages in again; call it with a quarantine entry."""

    def __init__(
        self,
        ingestor: Ingestor,
        *,
        root: str = DEFAULT_ROOT,
        bindings: DeviceBindings | None = None,
    ) -> None:
        store = ingestor.store
        if not isinstance(store, SqlStore):
            raise ConfigurationError("the MQTT replay needs a SQL store")
        self.ingestor = ingestor
        self.store: SqlStore = store
        self.root = root
        self.bindings = bindings or DeviceBindings(store)

    def __call__(self, entry: QuarantineEntry) -> Fault | None:
        """None when the entry's message is taken in, else (reason, location) of its fault."""
        topic = self.topic_of(entry)
        if topic is None:
            return (
                f"the location {entry.location[:200]!r} does not start with a device topic "
                f"under {self.root}/",
                "topic",
            )
        reason = _TAG.sub("", entry.reason).rstrip()
        lossy = "\ufffd" in entry.payload and reason.startswith(_BYTE_FAULTS)
        if lossy or _TOO_LARGE.match(reason):  # too large: only its size was kept
            return reason, entry.location
        reading = parse_message(topic, entry.payload.encode("utf-8"), root=self.root)
        if isinstance(reading, PayloadRejection):
            return reading.reason, reading.location
        patient = self.bindings.patient_at(reading.device, reading.time_us)
        if patient is None:
            location, why = unbound_fault(reading)
            return why, location
        if isinstance(reading, DeviceObservation):
            return self._observation(entry, reading, patient)
        return self._intervention(reading, patient)

    def topic_of(self, entry: QuarantineEntry) -> str | None:
        """The topic the entry's message came on, None when the entry does not tell it."""
        candidates = [entry.location]
        head = entry.location
        while ": " in head:
            head = head.rsplit(": ", 1)[0]
            candidates.append(head)
        tag = _TAG.search(entry.reason)
        if tag is not None:
            for candidate in candidates:
                if content_digest(candidate, entry.payload) == tag[1]:
                    return candidate
        # Entries without the tag (or whose payload was cut): the longest device topic.
        for candidate in candidates:
            if parse_topic(candidate, self.root) is not None:
                return candidate
        return None

    def _observation(
        self, entry: QuarantineEntry, reading: DeviceObservation, patient: str
    ) -> Fault | None:
        ingestor = self.ingestor
        message = reading.topic if entry.row_id is None else f"quarantine/{entry.row_id}"
        prepared = ingestor.prepare(
            [reading.item(patient)],
            channel=CHANNEL,
            origins=[Origin(CHANNEL, message, reading.reading_id)],
        )
        if prepared.rejections:
            rejection = prepared.rejections[0]
            return rejection.reason, item_location(reading, rejection.field)
        ingestor.commit(prepared)
        return None

    def _intervention(self, treatment: DeviceIntervention, patient: str) -> Fault | None:
        ingestor = self.ingestor
        now = ingestor.clock.now_us()
        checked = check_interventions(
            [(treatment, patient)], now_us=now, max_future_us=ingestor.max_future_us
        )
        if checked.rejected:
            refusal = checked.rejected[0]
            return refusal.reason, f"{treatment.topic}: {refusal.field or 'payload'}"
        records = [record for _, record in checked.accepted]
        # Stored as the subscriber stores them: in an ingestion commit of no observations,
        # which adds the patients the twins do not know yet.
        prepared = ingestor.prepare([], channel=CHANNEL)
        prepared = dataclasses.replace(prepared, new_patients=ingestor.new_patients(records, now))
        statuses: list[AppendStatus] = []

        def within(conn: Connection) -> None:
            statuses[:] = self.store.append_interventions_in(
                conn, records, received_us=prepared.received_us, channel=CHANNEL
            )

        ingestor.commit(prepared, extra=within)
        for fresh in prepared.new_patients:
            if fresh.id not in ingestor.runtime:
                ingestor.runtime.add(fresh.id)
        stored = [r for r, s in zip(records, statuses, strict=True) if s is AppendStatus.STORED]
        if stored and ingestor.bus.has_subscribers:
            ingestor.bus.publish([intervention_event(record) for record in stored])
        return None


def replayer(
    ingestor: Ingestor, *, root: str = DEFAULT_ROOT
) -> Callable[[QuarantineEntry], Fault | None]:
    """The ``mqtt`` replayer for :class:`medtwin.twins.replay.Replayers`.

    Register it with ``replayers.register("mqtt", replayer(ingestor))``.
    """
    return MqttReplayer(ingestor, root=root)
