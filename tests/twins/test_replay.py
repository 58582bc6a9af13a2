"""Replay of quarantined observation items once the cause of the refusal is gone."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from medtwin.core.clock import FixedClock
from medtwin.core.errors import NotFoundError
from medtwin.data.store import Origin, QuarantineEntry, SqlStore
from medtwin.twins import EventBus, Ingestor, TwinRuntime
from medtwin.twins.replay import Replayers

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _item(minutes_ahead: int) -> dict[str, object]:
    moment = NOW + timedelta(minutes=minutes_ahead)
    return {
        "id": "hr-1",
        "source": "monitor-1",
        "patient": "p1",
        "code": "8867-4",
        "value": 72,
        "unit": "/min",
        "time": moment.isoformat().replace("+00:00", "Z"),
    }


def test_an_item_refused_for_its_time_is_taken_in_once_the_time_has_come(
    store: SqlStore,
) -> None:
    clock = FixedClock(NOW)
    ingestor = Ingestor(store, TwinRuntime(clock), EventBus(), clock)
    replayers = Replayers(store, ingestor, clock)
    (result,) = ingestor.ingest([_item(minutes_ahead=30)])
    assert result.status == "rejected"
    (entry,) = store.quarantined()
    assert entry.row_id is not None

    refused = replayers.replay(entry.row_id)
    assert not refused.taken
    assert refused.location == "observations[0].time"
    assert len(store.quarantined()) == 1  # a refused replay adds nothing
    assert store.count("observations") == 0

    clock.advance(31 * 60)
    assert replayers.replay(entry.row_id).taken
    assert store.count("observations") == 1
    (resolved,) = store.quarantined()
    assert resolved.resolved_us == clock.now_us()
    assert store.quarantined(resolved=False) == []
    # Replaying again changes nothing.
    again = replayers.replay(entry.row_id)
    assert again.taken
    assert store.count("observations") == 1


def test_whole_bodies_and_unknown_channels(store: SqlStore) -> None:
    clock = FixedClock(NOW)
    ingestor = Ingestor(store, TwinRuntime(clock), EventBus(), clock)
    replayers = Replayers(store, ingestor, clock)
    body = json.dumps({"observations": [_item(0), {**_item(0), "id": "hr-2"}]})
    store.quarantine(
        [
            QuarantineEntry("api", "body", "rate limited", body, received_us=clock.now_us()),
            QuarantineEntry("pager", "x", "why", "raw", received_us=clock.now_us()),
            QuarantineEntry("api", "body", "bad", "{not json", received_us=clock.now_us()),
        ]
    )
    by_channel = {e.channel + e.payload[:2]: e for e in store.quarantined()}
    assert replayers.replay(by_channel['api{"'].row_id or 0).taken
    assert store.count("observations") == 2
    unknown = replayers.replay(by_channel["pagerra"].row_id or 0)
    assert not unknown.taken
    assert unknown.reason == "no replay for channel 'pager'"
    broken = replayers.replay(by_channel["api{n"].row_id or 0)
    assert not broken.taken
    assert broken.location is not None
    assert broken.location.startswith("payload:1:")
    assert [e.channel for e in store.quarantined(channel="pager")] == ["pager"]
    with pytest.raises(NotFoundError):
        replayers.replay(999)


def test_what_a_replay_stores_traces_to_its_quarantine_entry(store: SqlStore) -> None:
    clock = FixedClock(NOW)
    ingestor = Ingestor(store, TwinRuntime(clock), EventBus(), clock)
    replayers = Replayers(store, ingestor, clock)
    body = json.dumps({"observations": [_item(0), {**_item(0), "id": "hr-2"}]})
    listed = json.dumps([{**_item(0), "id": "hr-3"}])
    store.quarantine(
        [
            QuarantineEntry("api", "body", "rate limited", body, received_us=clock.now_us()),
            QuarantineEntry("cli:night.jsonl", "night.jsonl:4", "x", listed, received_us=1),
        ]
    )
    (item_entry,) = [e for e in store.quarantined() if e.channel == "api"]
    (file_entry,) = [e for e in store.quarantined() if e.channel.startswith("cli:")]
    assert item_entry.row_id is not None
    assert file_entry.row_id is not None
    # An item refused for its time: the replay that takes it in is its origin.
    ingestor.ingest([{**_item(30), "id": "hr-4"}], origins=[Origin("api", "req-1", "[0]")])
    (late,) = [e for e in store.quarantined() if e.location == "observations[0].time"]
    assert late.row_id is not None
    clock.advance(31 * 60)
    for entry in (item_entry, file_entry, late):
        assert replayers.replay(entry.row_id or 0).taken
    keys = [("monitor-1", f"hr-{n}", 1) for n in (1, 2, 3, 4)]
    assert store.origins_of(keys) == {
        keys[0]: Origin("api", f"quarantine/{item_entry.row_id}", "observations[0]"),
        keys[1]: Origin("api", f"quarantine/{item_entry.row_id}", "observations[1]"),
        keys[2]: Origin("file", f"quarantine/{file_entry.row_id}", "[0]"),
        keys[3]: Origin("api", f"quarantine/{late.row_id}", None),
    }
    # Replayed items already stored are duplicates: the first origin stays.
    store.quarantine([QuarantineEntry("api", "b", "again", body, received_us=clock.now_us())])
    (repeat,) = store.quarantined(resolved=False)
    assert replayers.replay(repeat.row_id or 0).taken
    assert store.origins_of(keys[:1])[keys[0]].message == f"quarantine/{item_entry.row_id}"
