"""Authentication and authorization, in one place.

Callers prove who they are with a bearer JWT (OAuth2 password flow), an API
key (``mtk_...``, devices and systems) or, for the dashboard's GET requests and
its WebSocket, a session cookie. Every route declares a :class:`Policy`; a
test walks all routes to prove none is without one.

Rules: a role not allowed on a route gets 403; a patient the caller may not see
gets 404, exactly like a patient that does not exist (no enumeration).
Clinicians see the patients of their care team, others only through break-glass
(header ``X-Break-Glass: <reason>``), which is audited with high priority.
Admins see every patient. Researchers and devices see no identified patient.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import jwt
from fastapi import HTTPException
from starlette.requests import HTTPConnection

from medtwin.data.accounts import Accounts, Role, User

SESSION_COOKIE = "medtwin_session"
BREAK_GLASS_HEADER = "x-break-glass"
ALGORITHM = "HS256"


class AuthenticationFailed(HTTPException):
    """401 with the Bearer challenge."""

    def __init__(self, detail: str = "authentication required") -> None:
        super().__init__(401, detail, headers={"WWW-Authenticate": "Bearer"})


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a user or an API key."""

    name: str
    role: Role
    kind: str  # "user" | "api-key"
    care_team: str | None = None
    sources: frozenset[str] = field(default_factory=frozenset)
    break_glass: str | None = None  # the reason given, when the caller broke the glass

    def for_break_glass(self, reason: str) -> Principal:
        return Principal(self.name, self.role, self.kind, self.care_team, self.sources, reason)


class Tokens:
    """Issue and check JWTs. Token times are wall-clock times, whatever the app's clock."""

    def __init__(
        self,
        key: bytes,
        *,
        issuer: str,
        audience: str,
        access_ttl_s: int,
        refresh_ttl_s: int,
        session_ttl_s: int,
    ) -> None:
        self._key = key
        self.issuer = issuer
        self.audience = audience
        self.ttl = {"access": access_ttl_s, "refresh": refresh_ttl_s, "session": session_ttl_s}

    def issue(self, user: User, kind: str) -> tuple[str, str, int]:
        """(token, jti, expiry in µs since epoch) of a new ``kind`` token for ``user``."""
        now = int(time.time())
        jti = secrets.token_urlsafe(16)
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": user.username,
            "role": user.role.value,
            "typ": kind,
            "iat": now,
            "nbf": now,
            "exp": now + self.ttl[kind],
            "jti": jti,
        }
        return (
            jwt.encode(claims, self._key, algorithm=ALGORITHM),
            jti,
            (now + self.ttl[kind]) * 1_000_000,
        )

    def decode(self, token: str, kind: str) -> dict[str, Any]:
        """Claims of a valid ``kind`` token; AuthenticationFailed otherwise.

        Only HS256 is accepted (so ``alg: none`` and key-confusion tokens fail), and
        signature, expiry, not-before, issuer and audience are all checked.
        """
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti", "typ"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationFailed("token expired") from exc
        except jwt.PyJWTError as exc:
            raise AuthenticationFailed("invalid token") from exc
        if claims.get("typ") != kind:
            raise AuthenticationFailed("wrong token type")
        return claims


def _bearer(headers: Any) -> str | None:
    value = headers.get("authorization")
    if not value:
        return None
    scheme, _, credentials = value.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise AuthenticationFailed("use 'Authorization: Bearer <token>'")
    return str(credentials.strip())


def authenticate(
    connection: HTTPConnection,
    accounts: Accounts,
    tokens: Tokens,
    *,
    allow_cookie: bool,
) -> Principal:
    """The caller of ``connection``; AuthenticationFailed if there is none or it is invalid."""
    credential = _bearer(connection.headers) or connection.headers.get("x-api-key")
    if credential is None and connection.scope["type"] == "websocket":
        credential = connection.query_params.get("access_token")
    if credential is not None:
        if credential.startswith("mtk_"):
            key = accounts.check_api_key(credential)
            if key is None:
                raise AuthenticationFailed("invalid API key")
            return Principal(key.owner, key.role, "api-key", key.care_team, frozenset(key.sources))
        claims = tokens.decode(credential, "access")
        return _user_principal(accounts, claims)
    cookie = connection.cookies.get(SESSION_COOKIE)
    if cookie and allow_cookie:
        claims = tokens.decode(cookie, "session")
        if accounts.is_revoked(claims["jti"]):
            raise AuthenticationFailed("signed out")
        return _user_principal(accounts, claims)
    raise AuthenticationFailed()


def _user_principal(accounts: Accounts, claims: dict[str, Any]) -> Principal:
    user = accounts.user(str(claims["sub"]))
    if user is None or user.disabled:
        raise AuthenticationFailed("account disabled")
    if claims["iat"] * 1_000_000 < user.password_changed_us - 1_000_000:
        raise AuthenticationFailed("password changed since this token was issued")
    return Principal(user.username, user.role, "user", user.care_team)


@dataclass(frozen=True)
class Policy:
    """Who may call a route, and whether it is scoped to the patient in its path.

    ``action`` names the operation in the audit trail (read, search, write, ...).
    A patient-scoped route names its patient in the path parameter ``patient``, or
    in another parameter that ``patient_of(context, value)`` resolves to a patient
    (a derived value's id); an unknown value there raises NotFoundError.
    """

    roles: frozenset[Role]
    action: str
    patient_scoped: bool = False
    public: bool = False
    patient_param: str = "patient"
    patient_of: Callable[[Any, str], str] | None = None

    @classmethod
    def allow(
        cls,
        *roles: Role,
        action: str,
        patient_scoped: bool = False,
        patient_param: str = "patient",
        patient_of: Callable[[Any, str], str] | None = None,
    ) -> Policy:
        return cls(
            frozenset(roles),
            action,
            patient_scoped,
            patient_param=patient_param,
            patient_of=patient_of,
        )

    @classmethod
    def open(cls, action: str) -> Policy:
        """No authentication: liveness, the sign-in itself, static files."""
        return cls(frozenset(), action, public=True)


def may_see(principal: Principal, patient: str, accounts: Accounts) -> bool:
    """Whether ``principal`` may see identified data of ``patient`` (break-glass aside)."""
    if principal.role is Role.ADMIN:
        return True
    if principal.role is Role.CLINICIAN and principal.care_team:
        return accounts.in_team(principal.care_team, patient)
    return False


def visible(principal: Principal, patients: Iterable[str], accounts: Accounts) -> list[str]:
    """The patients of ``patients`` that ``principal`` may see, in order."""
    if principal.role is Role.ADMIN:
        return list(patients)
    if principal.role is Role.CLINICIAN and principal.care_team:
        team = accounts.team_patients(principal.care_team)
        return [p for p in patients if p in team]
    return []
