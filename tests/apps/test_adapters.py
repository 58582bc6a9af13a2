"""The service runs its adapters: an HL7 v2 MLLP listener when a port is set."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import uvicorn

from medtwin.apps.api import create_app
from medtwin.core.settings import Settings
from medtwin.devices.hl7 import send_messages

from .conftest import _free_port, user_token

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
        secrets_file=tmp_path / "secrets.json",
    )
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    try:
        yield url, mllp_port, app.state
    finally:
        server.should_exit = True
        thread.join(timeout=10)


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
