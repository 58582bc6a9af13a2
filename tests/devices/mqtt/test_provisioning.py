"""Broker credentials: Mosquitto's $7$ password format and per-device ACLs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from medtwin.core.errors import InputError
from medtwin.devices.mqtt.provisioning import BrokerAccounts, hash_password, verify_password


def test_hash_matches_mosquitto_passwd(tmp_path: Path) -> None:
    hashed = hash_password("s3cret")
    assert hashed.startswith("$7$101$")
    assert verify_password("s3cret", hashed)
    assert not verify_password("other", hashed)
    tool = shutil.which("mosquitto_passwd")
    if tool is not None:  # the reference implementation, where installed
        path = tmp_path / "reference"
        path.touch()
        subprocess.run([tool, "-b", str(path), "u", "s3cret"], check=True)
        assert verify_password("s3cret", path.read_text().strip().split(":", 1)[1])


def test_entries_are_replaced_and_removed(tmp_path: Path) -> None:
    accounts = BrokerAccounts(tmp_path / "passwd", tmp_path / "acl")
    first = accounts.add_device("d1")
    second = accounts.add_device("d1")  # a new password replaces the old one
    accounts.add_device("d2", "given-password")
    accounts.add_service("medtwin-ingest")
    lines = dict(line.split(":", 1) for line in accounts.password_file.read_text().splitlines())
    assert sorted(lines) == ["d1", "d2", "medtwin-ingest"]
    assert verify_password(second, lines["d1"])
    assert not verify_password(first, lines["d1"])
    assert first not in accounts.password_file.read_text()
    acl = accounts.acl_file.read_text()
    assert "user d1\ntopic write medtwin/devices/d1/#\n" in acl
    assert "user medtwin-ingest\ntopic read medtwin/devices/+/observations\n" in acl
    assert accounts.remove("d1")
    assert not accounts.remove("d1")
    assert accounts.users() == ["d2", "medtwin-ingest"]
    assert "d1" not in accounts.acl_file.read_text().split()
    with pytest.raises(InputError):
        accounts.add_device("d1/#")
