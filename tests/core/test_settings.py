"""Settings: MEDTWIN_* environment variables, production safety checks, redaction."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from medtwin.core.errors import ConfigurationError, MedtwinError
from medtwin.core.settings import DEFAULT_STORE_URL, Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No MEDTWIN_* variables and no .env file but those a test sets."""
    for name in list(os.environ):
        if name.upper().startswith("MEDTWIN_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults() -> None:
    settings = Settings()
    assert settings.environment == "development"
    assert settings.store_url == DEFAULT_STORE_URL
    assert settings.sqlite_synchronous == "FULL"
    assert settings.port == 8000
    assert settings.news2_window_s == 3600.0


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDTWIN_STORE_URL", "sqlite:////data/ward.db")
    monkeypatch.setenv("MEDTWIN_PORT", "9001")
    monkeypatch.setenv("MEDTWIN_NEWS2_WINDOW_S", "1800")
    monkeypatch.setenv("MEDTWIN_SQLITE_SYNCHRONOUS", "EXTRA")
    monkeypatch.setenv("MEDTWIN_LOG_LEVEL", "debug")
    monkeypatch.setenv("MEDTWIN_DEMO_PATIENTS", "100")
    settings = Settings()
    assert settings.store_url == "sqlite:////data/ward.db"
    assert settings.port == 9001
    assert settings.news2_window_s == 1800.0
    assert settings.sqlite_synchronous == "EXTRA"
    assert settings.log_level == "debug"
    assert settings.demo_patients == 100


def test_environment_variable_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("medtwin_port", "9002")
    assert Settings().port == 9002


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("MEDTWIN_PORT=9003\nMEDTWIN_MAX_BATCH_ITEMS=50\n")
    settings = Settings()
    assert settings.port == 9003
    assert settings.max_batch_items == 50


def test_environment_overrides_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("MEDTWIN_PORT=9003\n")
    monkeypatch.setenv("MEDTWIN_PORT", "9004")
    assert Settings().port == 9004


def test_other_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDTWIN_NO_SUCH_SETTING", "1")
    monkeypatch.setenv("PORT", "1234")
    assert Settings().port == 8000


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MEDTWIN_PORT", "0"),
        ("MEDTWIN_PORT", "70000"),
        ("MEDTWIN_NEWS2_WINDOW_S", "0"),
        ("MEDTWIN_SQLITE_SYNCHRONOUS", "SOMETIMES"),
        ("MEDTWIN_ENVIRONMENT", "staging"),
        ("MEDTWIN_DEMO_ACCELERATION", "-1"),
    ],
)
def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.removeprefix("MEDTWIN_").lower()):
        Settings()


def test_production_refuses_the_default_store_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDTWIN_ENVIRONMENT", "production")
    # Pydantic passes errors other than ValueError/AssertionError through unwrapped.
    with pytest.raises(ConfigurationError, match="MEDTWIN_STORE_URL") as caught:
        Settings()
    assert isinstance(caught.value, MedtwinError)
    assert not isinstance(caught.value, ValidationError)


@pytest.mark.parametrize("level", ["OFF", "NORMAL"])
def test_production_refuses_weak_sqlite_synchronous(
    monkeypatch: pytest.MonkeyPatch, level: str
) -> None:
    monkeypatch.setenv("MEDTWIN_ENVIRONMENT", "production")
    monkeypatch.setenv("MEDTWIN_STORE_URL", "sqlite:////data/ward.db")
    monkeypatch.setenv("MEDTWIN_SQLITE_SYNCHRONOUS", level)
    with pytest.raises(ConfigurationError, match="MEDTWIN_SQLITE_SYNCHRONOUS below FULL"):
        Settings()


def with_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDTWIN_SECRET_KEY", "s" * 40)
    monkeypatch.setenv("MEDTWIN_AUDIT_KEY", "a" * 40)
    monkeypatch.setenv("MEDTWIN_DATA_KEYS", "k1:" + "A" * 43 + "=")
    monkeypatch.setenv("MEDTWIN_BLIND_INDEX_KEY", "B" * 43 + "=")
    monkeypatch.setenv("MEDTWIN_PSEUDONYM_KEY", "p" * 40)


@pytest.mark.parametrize("level", ["FULL", "EXTRA"])
def test_production_accepts_durable_sqlite(monkeypatch: pytest.MonkeyPatch, level: str) -> None:
    with_secrets(monkeypatch)
    monkeypatch.setenv("MEDTWIN_ENVIRONMENT", "production")
    monkeypatch.setenv("MEDTWIN_STORE_URL", "sqlite:////data/ward.db")
    monkeypatch.setenv("MEDTWIN_SQLITE_SYNCHRONOUS", level)
    settings = Settings()
    assert settings.environment == "production"
    assert settings.sqlite_synchronous == level


def test_production_ignores_sqlite_synchronous_for_postgres(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with_secrets(monkeypatch)
    monkeypatch.setenv("MEDTWIN_ENVIRONMENT", "production")
    monkeypatch.setenv("MEDTWIN_STORE_URL", "postgresql://medtwin@db:5432/medtwin")
    monkeypatch.setenv("MEDTWIN_SQLITE_SYNCHRONOUS", "OFF")
    assert Settings().store_url.startswith("postgresql://")


def test_development_allows_the_unsafe_defaults() -> None:
    settings = Settings(sqlite_synchronous="OFF")
    assert settings.store_url == DEFAULT_STORE_URL
    assert settings.sqlite_synchronous == "OFF"


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("sqlite:///var/medtwin.db", "sqlite:///var/medtwin.db"),
        ("postgresql://db:5432/medtwin", "postgresql://db:5432/medtwin"),
        ("postgresql://medtwin@db:5432/medtwin", "postgresql://db:5432/medtwin"),
        ("postgresql://medtwin:s3cret@db:5432/medtwin", "postgresql://db:5432/medtwin"),
        ("postgresql+psycopg://medtwin:p@ss@db/medtwin", "postgresql+psycopg://db/medtwin"),
        (
            "postgresql://db/medtwin?sslmode=require&password=s3cret",
            "postgresql://db/medtwin?sslmode=require&password=***",
        ),
        (
            "postgresql://db/medtwin?Password=s3@cret&sslpassword=key&sslmode=require",
            "postgresql://db/medtwin?Password=***&sslpassword=***&sslmode=require",
        ),
    ],
)
def test_redacted_store_url_hides_credentials(url: str, redacted: str) -> None:
    shown = Settings(store_url=url).redacted_store_url()
    assert shown == redacted
    assert "s3cret" not in shown
    assert "cret" not in shown


@pytest.mark.parametrize(
    "missing",
    [
        "MEDTWIN_SECRET_KEY",
        "MEDTWIN_AUDIT_KEY",
        "MEDTWIN_DATA_KEYS",
        "MEDTWIN_BLIND_INDEX_KEY",
        "MEDTWIN_PSEUDONYM_KEY",
    ],
)
def test_production_refuses_to_start_without_secrets(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    with_secrets(monkeypatch)
    monkeypatch.delenv(missing)
    monkeypatch.setenv("MEDTWIN_ENVIRONMENT", "production")
    monkeypatch.setenv("MEDTWIN_STORE_URL", "postgresql://medtwin@db:5432/medtwin")
    with pytest.raises(ConfigurationError, match=f"needs {missing} set"):
        Settings()


def test_short_secrets_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDTWIN_SECRET_KEY", "changeme")
    with pytest.raises(ConfigurationError, match="MEDTWIN_SECRET_KEY is shorter than 32"):
        Settings()


def test_development_generates_secrets_once_and_keeps_them_private(tmp_path: Path) -> None:
    settings = Settings(secrets_file=tmp_path / "var" / "secrets.json")
    first = settings.secret("secret_key")
    assert len(first) >= 32
    assert settings.secret("audit_key") != first
    assert Settings(secrets_file=tmp_path / "var" / "secrets.json").secret("secret_key") == first
    assert (tmp_path / "var" / "secrets.json").stat().st_mode & 0o777 == 0o600
    assert "x" * 40 not in repr(Settings(secret_key="x" * 40))


def test_secrets_from_the_environment_win(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEDTWIN_SECRET_KEY", "k" * 40)
    settings = Settings(secrets_file=tmp_path / "secrets.json")
    assert settings.secret("secret_key") == b"k" * 40
    assert (
        not (tmp_path / "secrets.json").exists()
        or "secret_key" not in (tmp_path / "secrets.json").read_text()
    )


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", ""])
def test_production_refuses_plain_http_beyond_loopback(
    monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    with_secrets(monkeypatch)
    monkeypatch.setenv("MEDTWIN_ENVIRONMENT", "production")
    monkeypatch.setenv("MEDTWIN_STORE_URL", "postgresql://medtwin@db:5432/medtwin")
    monkeypatch.setenv("MEDTWIN_HOST", host)
    with pytest.raises(ConfigurationError, match="refuses plain HTTP"):
        Settings()
    monkeypatch.setenv("MEDTWIN_HOST", "::1")
    assert Settings().host == "::1"


def test_tls_key_without_certificate_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="TLS_KEYFILE is set without"):
        Settings(tls_keyfile=Path("key.pem"))
