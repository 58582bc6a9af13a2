"""Accounts: users with hashed passwords, API keys of devices and systems, care teams.

Passwords are hashed with Argon2id (argon2-cffi defaults, salted per user).
API keys are 256-bit random secrets shown once; only their SHA-256 is stored:
a slow hash adds nothing to a secret that cannot be guessed, and every device
request checks one. Refresh tokens are tracked by id so they can be revoked.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from medtwin.core.errors import ConflictError, InputError, NotFoundError
from medtwin.data.store import SqlStore, schema

API_KEY_PREFIX = "mtk"
_USERNAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")
MIN_PASSWORD_LENGTH = 12


class Role(enum.StrEnum):
    CLINICIAN = "clinician"
    RESEARCHER = "researcher"
    DEVICE = "device"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class User:
    username: str
    role: Role
    care_team: str | None
    disabled: bool
    created_us: int
    password_changed_us: int


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    owner: str
    role: Role
    sources: tuple[str, ...]  # the device/system sources this key may write for
    care_team: str | None
    created_us: int
    revoked_us: int | None


def check_password_strength(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InputError(
            f"password must have at least {MIN_PASSWORD_LENGTH} characters", "password"
        )


class Accounts:
    """Users, API keys, refresh tokens and care-team membership in the store."""

    def __init__(self, store: SqlStore, hasher: PasswordHasher | None = None) -> None:
        self.store = store
        self.hasher = hasher or PasswordHasher()
        # Verifying against this when the user is unknown keeps login timing uniform.
        self._dummy_hash = self.hasher.hash(secrets.token_urlsafe(16))

    # -- users ------------------------------------------------------------------

    def add_user(
        self, username: str, password: str, role: Role, *, care_team: str | None = None, now_us: int
    ) -> User:
        if not username or not set(username) <= _USERNAME_CHARS or len(username) > 64:
            raise InputError(
                "username must be 1-64 characters of lower-case letters, digits, '.', '_', '-'",
                "username",
            )
        check_password_strength(password)
        row = {
            "username": username,
            "password_hash": self.hasher.hash(password),
            "role": Role(role).value,
            "care_team": care_team,
            "disabled": False,
            "created_us": now_us,
            "password_changed_us": now_us,
        }
        with self.store._write() as conn:
            exists = conn.execute(
                sa.select(schema.users.c.username).where(schema.users.c.username == username)
            ).first()
            if exists is not None:
                raise ConflictError(f"user {username!r} exists")
            conn.execute(sa.insert(schema.users), [row])
        return self._user(row)

    def user(self, username: str) -> User | None:
        with self.store._read() as conn:
            row = conn.execute(
                sa.select(schema.users).where(schema.users.c.username == username)
            ).first()
        return None if row is None else self._user(row._mapping)

    def users(self) -> list[User]:
        with self.store._read() as conn:
            rows = conn.execute(sa.select(schema.users).order_by(schema.users.c.username)).all()
        return [self._user(r._mapping) for r in rows]

    def authenticate(self, username: str, password: str) -> User | None:
        """The user if the password is right and the account enabled, else None."""
        with self.store._read() as conn:
            row = conn.execute(
                sa.select(schema.users).where(schema.users.c.username == username)
            ).first()
        stored = row.password_hash if row is not None else self._dummy_hash
        try:
            self.hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if row is None or row.disabled:
            return None
        return self._user(row._mapping)

    def set_disabled(self, username: str, disabled: bool) -> None:
        with self.store._write() as conn:
            result = conn.execute(
                sa.update(schema.users)
                .where(schema.users.c.username == username)
                .values(disabled=disabled)
            )
            if result.rowcount == 0:
                raise NotFoundError(f"no user {username!r}")
            if disabled:
                conn.execute(
                    sa.delete(schema.refresh_tokens).where(
                        schema.refresh_tokens.c.username == username
                    )
                )

    def set_password(self, username: str, password: str, *, now_us: int) -> None:
        check_password_strength(password)
        with self.store._write() as conn:
            result = conn.execute(
                sa.update(schema.users)
                .where(schema.users.c.username == username)
                .values(password_hash=self.hasher.hash(password), password_changed_us=now_us)
            )
            if result.rowcount == 0:
                raise NotFoundError(f"no user {username!r}")
            # A reset ends every session of the account.
            conn.execute(
                sa.delete(schema.refresh_tokens).where(schema.refresh_tokens.c.username == username)
            )

    @staticmethod
    def _user(row: object) -> User:
        r = dict(row)  # type: ignore[call-overload]
        return User(
            r["username"],
            Role(r["role"]),
            r["care_team"],
            bool(r["disabled"]),
            r["created_us"],
            r["password_changed_us"],
        )

    # -- care teams -------------------------------------------------------------

    def assign(self, team: str, patients: Sequence[str]) -> None:
        """Put patients in a care team (idempotent)."""
        if not patients:
            return
        with self.store._write() as conn:
            known = {
                p
                for (p,) in conn.execute(
                    sa.select(schema.care_team_patients.c.patient_id).where(
                        schema.care_team_patients.c.team == team,
                        schema.care_team_patients.c.patient_id.in_(list(patients)),
                    )
                )
            }
            fresh = [
                {"team": team, "patient_id": p} for p in dict.fromkeys(patients) if p not in known
            ]
            if fresh:
                conn.execute(sa.insert(schema.care_team_patients), fresh)

    def in_team(self, team: str, patient: str) -> bool:
        table = schema.care_team_patients
        with self.store._read() as conn:
            row = conn.execute(
                sa.select(table.c.team).where(table.c.team == team, table.c.patient_id == patient)
            ).first()
        return row is not None

    def team_patients(self, team: str) -> set[str]:
        table = schema.care_team_patients
        with self.store._read() as conn:
            return {
                p
                for (p,) in conn.execute(sa.select(table.c.patient_id).where(table.c.team == team))
            }

    # -- API keys ---------------------------------------------------------------

    def add_api_key(
        self,
        owner: str,
        *,
        sources: Sequence[str],
        role: Role = Role.DEVICE,
        care_team: str | None = None,
        now_us: int,
    ) -> tuple[ApiKey, str]:
        """A new key and its secret text (``mtk_<id>_<secret>``), shown once."""
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        row = {
            "key_id": key_id,
            "key_hash": _sha256(secret),
            "owner": owner,
            "role": Role(role).value,
            "sources": json.dumps(sorted(set(sources))),
            "care_team": care_team,
            "created_us": now_us,
            "revoked_us": None,
        }
        with self.store._write() as conn:
            conn.execute(sa.insert(schema.api_keys), [row])
        return self._key(row), f"{API_KEY_PREFIX}_{key_id}_{secret}"

    def check_api_key(self, text: str) -> ApiKey | None:
        """The key if ``text`` is a valid, unrevoked API key."""
        prefix, _, rest = text.partition("_")
        key_id, _, secret = rest.partition("_")
        if prefix != API_KEY_PREFIX or not key_id or not secret:
            return None
        with self.store._read() as conn:
            row = conn.execute(
                sa.select(schema.api_keys).where(schema.api_keys.c.key_id == key_id)
            ).first()
        if row is None or row.revoked_us is not None:
            return None
        if not hmac.compare_digest(row.key_hash, _sha256(secret)):
            return None
        return self._key(row._mapping)

    def revoke_api_key(self, key_id: str, *, now_us: int) -> None:
        with self.store._write() as conn:
            result = conn.execute(
                sa.update(schema.api_keys)
                .where(schema.api_keys.c.key_id == key_id)
                .values(revoked_us=now_us)
            )
            if result.rowcount == 0:
                raise NotFoundError(f"no API key {key_id!r}")

    def api_keys(self) -> list[ApiKey]:
        with self.store._read() as conn:
            rows = conn.execute(
                sa.select(schema.api_keys).order_by(schema.api_keys.c.created_us)
            ).all()
        return [self._key(r._mapping) for r in rows]

    @staticmethod
    def _key(row: object) -> ApiKey:
        r = dict(row)  # type: ignore[call-overload]
        return ApiKey(
            r["key_id"],
            r["owner"],
            Role(r["role"]),
            tuple(json.loads(r["sources"])),
            r["care_team"],
            r["created_us"],
            r["revoked_us"],
        )

    # -- refresh tokens ---------------------------------------------------------

    def remember_refresh(self, jti: str, username: str, expires_us: int) -> None:
        with self.store._write() as conn:
            conn.execute(
                sa.insert(schema.refresh_tokens),
                [{"jti": jti, "username": username, "expires_us": expires_us, "revoked_us": None}],
            )

    def use_refresh(self, jti: str, *, now_us: int) -> str | None:
        """Revoke a live refresh token and return its user; None if unknown, used or expired.

        Each refresh token works once (rotation): replaying a used one fails.
        """
        table = schema.refresh_tokens
        with self.store._write() as conn:
            row = conn.execute(sa.select(table).where(table.c.jti == jti)).first()
            if row is None or row.revoked_us is not None or row.expires_us <= now_us:
                return None
            conn.execute(sa.update(table).where(table.c.jti == jti).values(revoked_us=now_us))
        return str(row.username)

    def revoke_refresh(self, jti: str, *, now_us: int) -> None:
        table = schema.refresh_tokens
        with self.store._write() as conn:
            conn.execute(
                sa.update(table)
                .where(table.c.jti == jti, table.c.revoked_us.is_(None))
                .values(revoked_us=now_us)
            )

    def is_revoked(self, jti: str) -> bool:
        """Whether a session (tracked like a refresh token) was revoked or never issued."""
        table = schema.refresh_tokens
        with self.store._read() as conn:
            row = conn.execute(sa.select(table.c.revoked_us).where(table.c.jti == jti)).first()
        return row is None or row.revoked_us is not None


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
