"""Per-device broker credentials: Mosquitto password-file and ACL entries.

Each device gets its own user name (its device id) and password, and may publish
only under its own topics::

    user d1
    topic write medtwin/devices/d1/#

The ingestion service gets a user that may read every device's topics. Password
entries use Mosquitto 2's ``$7$`` format (PBKDF2-SHA512, 101 iterations, 12-byte
salt, as ``mosquitto_passwd`` writes them). Files are rewritten whole and
replaced atomically under a lock; the broker reads them again on SIGHUP
(``reload_broker``). Passwords are never logged.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import os
import re
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path

from medtwin.core.errors import ConfigurationError, InputError
from medtwin.core.settings import Settings
from medtwin.devices.mqtt.payload import DEFAULT_ROOT

ITERATIONS = 101
SALT_BYTES = 12
_USER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,63}")


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """The ``$7$`` hash of ``password`` as Mosquitto 2 stores it."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, ITERATIONS)
    return f"$7${ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, hashed: str) -> bool:
    """Whether ``password`` matches a ``$7$`` hash."""
    try:
        _, kind, iterations, salt, digest = hashed.split("$")
        if kind != "7":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.pbkdf2_hmac(
            "sha512", password.encode(), base64.b64decode(salt), int(iterations)
        )
    except ValueError:
        return False
    return hmac.compare_digest(expected, actual)


class BrokerAccounts:
    """The password and ACL files of one Mosquitto broker."""

    def __init__(self, password_file: Path, acl_file: Path, *, root: str = DEFAULT_ROOT) -> None:
        self.password_file = Path(password_file)
        self.acl_file = Path(acl_file)
        self.root = root

    @classmethod
    def from_settings(cls, settings: Settings) -> BrokerAccounts:
        if settings.mqtt_password_file is None or settings.mqtt_acl_file is None:
            raise ConfigurationError(
                "set MEDTWIN_MQTT_PASSWORD_FILE and MEDTWIN_MQTT_ACL_FILE to provision devices"
            )
        return cls(settings.mqtt_password_file, settings.mqtt_acl_file)

    def add_device(self, device: str, password: str | None = None) -> str:
        """Give ``device`` credentials (replacing any) and its ACL; returns the password."""
        password = password or secrets.token_urlsafe(24)
        rules = [f"topic write {self.root}/{device}/#"]
        self._put(device, password, rules)
        return password

    def add_service(self, user: str, password: str | None = None) -> str:
        """A user that reads every device's topics (the ingestion service)."""
        password = password or secrets.token_urlsafe(24)
        rules = [
            f"topic read {self.root}/+/observations",
            f"topic read {self.root}/+/interventions",
        ]
        self._put(user, password, rules)
        return password

    def remove(self, user: str) -> bool:
        """Remove a device or service user; False when it had no entry."""
        _check_user(user)
        with self._locked():
            passwords = self._passwords()
            found = passwords.pop(user, None) is not None
            acl = self._acls()
            found = acl.pop(user, None) is not None or found
            self._write(passwords, acl)
        return found

    def users(self) -> list[str]:
        with self._locked():
            return sorted(self._passwords())

    def _put(self, user: str, password: str, rules: list[str]) -> None:
        _check_user(user)
        if not password or "\n" in password:
            raise InputError("password must be a non-empty single line", "password")
        with self._locked():
            passwords = self._passwords()
            passwords[user] = hash_password(password)
            acl = self._acls()
            acl[user] = rules
            self._write(passwords, acl)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock_path = self.password_file.with_name(self.password_file.name + ".lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _passwords(self) -> dict[str, str]:
        if not self.password_file.exists():
            return {}
        entries: dict[str, str] = {}
        for line in self.password_file.read_text().splitlines():
            user, sep, hashed = line.partition(":")
            if sep and user:
                entries[user] = hashed
        return entries

    def _acls(self) -> dict[str, list[str]]:
        if not self.acl_file.exists():
            return {}
        blocks: dict[str, list[str]] = {}
        current: list[str] | None = None
        for line in self.acl_file.read_text().splitlines():
            if line.startswith("user "):
                current = blocks.setdefault(line[5:].strip(), [])
            elif line.strip() and current is not None:
                current.append(line.strip())
        return blocks

    def _write(self, passwords: dict[str, str], acl: dict[str, list[str]]) -> None:
        password_text = "".join(f"{user}:{hashed}\n" for user, hashed in sorted(passwords.items()))
        acl_text = "".join(
            f"user {user}\n" + "".join(f"{rule}\n" for rule in rules) + "\n"
            for user, rules in sorted(acl.items())
        )
        # The broker (often its own system user, in the file's group) must read both.
        _replace(self.password_file, password_text, 0o640)
        _replace(self.acl_file, acl_text, 0o640)


def reload_broker(pid: int) -> None:
    """Ask a running Mosquitto to read its password and ACL files again."""
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        raise ConfigurationError(f"cannot signal the MQTT broker (pid {pid}): {exc}") from exc


def _replace(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _check_user(user: str) -> None:
    if _USER.fullmatch(user) is None:
        raise InputError("user must be 1-64 letters, digits, '.', '_' or '-'", "device")
