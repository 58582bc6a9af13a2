"""The service runs its adapters: HL7 v2 over MLLP and MQTT devices, when configured."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from medtwin.apps.api import create_app
from medtwin.core.settings import Settings
from medtwin.devices.hl7 import send_messages
from medtwin.devices.mqtt.loadgen import observation_payloads, publish

from .conftest import _free_port, serving, user_token

NOW = datetime.now(UTC) - timedelta(minutes=5)
ORU = (
    "MSH|^~\\&|LAB|WARD|MEDTWIN|HOSP|{ts}||ORU^R01|CTRL-1|P|2.5.1\r"
    "PID|1||MRN-42^^^HOSP^MR||DOE^JANE\r"
    "OBR|1|||85354-9^BP panel^LN|||{ts}\r"
    "OBX|1|NM|8867-4^Heart rate^LN||88|/min|||||F|||{ts}\r"
    "OBX|2|NM|8480-6^Systolic^LN||121|mm[Hg]|||||F|||{ts}\r"
).format(ts=NOW.strftime("%Y%m%d%H%M%S+0000"))


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, int, object]]:
    port, mllp_port = _free_port(), _free_port()
    settings = Settings(
        store_url=f"sqlite:///{tmp_path / 'a.db'}",
        port=port,
        mllp_port=mllp_port,
        mqtt_host="127.0.0.1",
        mqtt_client_id=f"medtwin-test-{uuid.uuid4().hex[:12]}",
        secrets_file=tmp_path / "secrets.json",
    )
    app = create_app(settings)
    with serving(app, port) as url:
        yield url, mllp_port, app.state


def test_mllp_results_reach_the_twins_served_over_rest(
    served: tuple[str, int, object],
) -> None:
    url, mllp_port, state = served
    (ack,) = send_messages("127.0.0.1", mllp_port, [ORU])
    assert ack is not None
    assert "MSA|AA|CTRL-1" in ack
    token = user_token(state.context, "admin-adapters")  # type: ignore[attr-defined]
    twins = httpx.get(f"{url}/api/v1/twins", headers={"Authorization": f"Bearer {token}"}).json()
    (twin,) = [t for t in twins if t["patient"] == "MRN-42"]
    assert twin["vitals"]["8867-4"]["value"] == 88.0
    assert twin["vitals"]["8480-6"]["value"] == 121.0


def test_mqtt_readings_of_a_bound_device_reach_its_patient(
    served: tuple[str, int, object],
) -> None:
    url, _, state = served
    token = user_token(state.context, "admin-devices")  # type: ignore[attr-defined]
    headers = {"Authorization": f"Bearer {token}"}
    device = f"pump-{uuid.uuid4().hex[:8]}"
    bound = httpx.post(
        f"{url}/api/v1/devices/{device}/bindings",
        json={"patient": "bed-7", "from": (NOW - timedelta(hours=1)).isoformat()},
        headers=headers,
    )
    assert bound.status_code == 201, bound.text
    topic = f"medtwin/devices/{device}/observations"
    payloads = observation_payloads(3, start=NOW)
    subscriber = state.context.extras["mqtt"]  # type: ignore[attr-defined]
    subscriber.wait_connected(10)
    publish("127.0.0.1", 1883, [(topic, p) for p in payloads])
    deadline = time.monotonic() + 10
    twin: dict[str, object] = {}
    while time.monotonic() < deadline:
        twins = httpx.get(f"{url}/api/v1/twins", headers=headers).json()
        twin = next((t for t in twins if t["patient"] == "bed-7"), {})
        if twin:
            break
        time.sleep(0.1)
    assert twin["vitals"]["8867-4"]["value"] == 62.0  # type: ignore[index]
