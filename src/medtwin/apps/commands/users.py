"""``medtwin users``: add, list, disable, enable and reset users; API keys for devices."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from medtwin.apps.commands import operator
from medtwin.core.clock import SystemClock
from medtwin.core.errors import MedtwinError
from medtwin.core.settings import Settings
from medtwin.data.accounts import Accounts, Role
from medtwin.data.audit import AuditEntry, AuditLog
from medtwin.data.store import store_for

app = typer.Typer(help="Users and API keys.", no_args_is_help=True)


class _Admin:
    """Accounts, and the audit trail every account change goes into."""

    def __init__(self, accounts: Accounts, audit: AuditLog) -> None:
        self.accounts = accounts
        self.audit = audit

    def record(self, action: str, **detail: str) -> None:
        entry = AuditEntry(operator(), "system", action, "success", detail=detail)
        self.audit.append([entry])


@contextmanager
def _accounts() -> Iterator[_Admin]:
    settings = Settings()
    store = store_for(settings)
    audit = AuditLog(
        store,
        settings.secret("audit_key"),
        SystemClock(),
        checkpoint_path=settings.audit_checkpoint_path,
    )
    try:
        yield _Admin(Accounts(store), audit)
    except MedtwinError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        store.close()


def _now_us() -> int:
    return time.time_ns() // 1_000


def new_password() -> str:
    """A random password of 20 URL-safe characters (about 120 bits)."""
    return secrets.token_urlsafe(15)


@app.command()
def add(
    username: str,
    role: Annotated[Role, typer.Option(help="clinician, researcher, device or admin")],
    care_team: Annotated[str | None, typer.Option(help="Care team of a clinician")] = None,
) -> None:
    """Create a user with a random password, printed once."""
    password = new_password()
    with _accounts() as admin:
        admin.accounts.add_user(username, password, role, care_team=care_team, now_us=_now_us())
        admin.record("user-add", user=username, role=role.value)
    typer.echo(f"user {username} ({role.value}) created; password: {password}")


@app.command("list")
def list_users() -> None:
    """List users (never their passwords)."""
    with _accounts() as admin:
        admin.record("user-list")
        for user in admin.accounts.users():
            state = "disabled" if user.disabled else "active"
            typer.echo(f"{user.username}\t{user.role.value}\t{user.care_team or '-'}\t{state}")


def _set_disabled(username: str, disabled: bool) -> None:
    action, word = ("user-disable", "disabled") if disabled else ("user-enable", "enabled")
    with _accounts() as admin:
        admin.accounts.set_disabled(username, disabled)
        admin.record(action, user=username)
    typer.echo(f"user {username} {word}")


@app.command()
def disable(username: str) -> None:
    """Disable a user: sign-in and every open session stop working."""
    _set_disabled(username, True)


@app.command()
def enable(username: str) -> None:
    """Enable a disabled user again."""
    _set_disabled(username, False)


@app.command()
def reset(username: str) -> None:
    """Set a new random password (printed once); sessions of the user end."""
    password = new_password()
    with _accounts() as admin:
        admin.accounts.set_password(username, password, now_us=_now_us())
        admin.record("user-reset", user=username)
    typer.echo(f"user {username}: new password: {password}")


@app.command("add-key")
def add_key(
    owner: str,
    source: Annotated[list[str], typer.Option(help="A device/system source the key may write for")],
    care_team: Annotated[str | None, typer.Option(help="Team that new patients join")] = None,
) -> None:
    """Create a device API key (printed once; only its hash is kept)."""
    with _accounts() as admin:
        key, text = admin.accounts.add_api_key(
            owner, sources=source, care_team=care_team, now_us=_now_us()
        )
        admin.record("device-add", owner=owner, id=key.key_id)
    typer.echo(f"API key {key.key_id} for {owner}: {text}")


@app.command("revoke-key")
def revoke_key(key_id: str) -> None:
    """Revoke a device API key."""
    with _accounts() as admin:
        admin.accounts.revoke_api_key(key_id, now_us=_now_us())
        admin.record("device-revoke", id=key_id)
    typer.echo(f"API key {key_id} revoked")
