"""Settings: one class, read from ``MEDTWIN_*`` environment variables (or a ``.env`` file).

Production mode refuses unsafe defaults instead of running with them.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from medtwin.core.errors import ConfigurationError

DEFAULT_STORE_URL = "sqlite:///var/medtwin.db"
# Query parameters of a store URL that carry secrets (libpq connection URIs).
_SECRET_PARAMETER = re.compile(r"([?&](?:ssl)?password=)[^&]*", re.IGNORECASE)


SECRETS = ("secret_key", "audit_key", "data_keys", "blind_index_key", "pseudonym_key")
# How a missing development secret is made: most are random text; the encryption keys
# follow medtwin.data.crypto's formats.
_GENERATORS = {
    "data_keys": lambda: f"k1:{base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()}",
    "blind_index_key": lambda: base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
}
MIN_SECRET_LENGTH = 32


def is_loopback(host: str) -> bool:
    """Whether ``host`` only reaches this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _load_secrets(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read the secrets file {path}: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigurationError(f"the secrets file {path} is not a JSON object")
    return {str(k): str(v) for k, v in loaded.items()}


def _save_secrets(path: Path, values: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(values, handle)
    temporary.replace(path)


class Settings(BaseSettings):
    """Configuration of a medtwin process. Durations in seconds, sizes in bytes."""

    model_config = SettingsConfigDict(env_prefix="MEDTWIN_", env_file=".env", extra="ignore")

    environment: Literal["development", "production"] = "development"
    store_url: str = DEFAULT_STORE_URL
    sqlite_synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = "FULL"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    news2_window_s: float = Field(3600.0, gt=0)
    max_future_s: float = Field(300.0, ge=0)
    # How far ahead interventions may be recorded through the API and files: a planned
    # meal, bolus or basal rate, which the glucose forecasts count on (s).
    max_planned_s: float = Field(86_400.0, ge=0)
    # Signal conditioning of incoming readings (artifact flags, calibration); the file
    # holds per-stream pipelines (medtwin.devices.conditioning.pipeline), else defaults.
    conditioning: bool = True
    conditioning_file: Path | None = None
    max_body_bytes: int = Field(5 * 1024 * 1024, gt=0)
    max_batch_items: int = Field(10_000, gt=0)
    refresh_interval_s: float = Field(5.0, gt=0)
    demo_patients: int = Field(24, ge=1, le=10_000)
    demo_acceleration: float = Field(30.0, gt=0)
    demo_seed: int = 0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Secrets. In development, missing ones are generated once into ``secrets_file``;
    # production refuses to start without them.
    secret_key: SecretStr | None = Field(None, description="HMAC key signing tokens")
    audit_key: SecretStr | None = Field(None, description="HMAC key chaining the audit trail")
    data_keys: SecretStr | None = Field(
        None,
        description="keyring encrypting personal data: 'id:base64key,...' (32-byte keys); "
        "the last id encrypts, all decrypt",
    )
    blind_index_key: SecretStr | None = Field(
        None, description="HMAC key of the blind indexes (base64 of 32 bytes)"
    )
    pseudonym_key: SecretStr | None = Field(
        None, description="HMAC key of research pseudonyms and date shifts"
    )
    secrets_file: Path = Path("var/secrets.json")
    audit_checkpoint_path: Path = Path("var/audit-checkpoints.jsonl")
    jwt_issuer: str = "medtwin"
    jwt_audience: str = "medtwin-api"
    access_token_ttl_s: int = Field(900, gt=0, le=86_400)
    refresh_token_ttl_s: int = Field(8 * 3600, gt=0)
    session_ttl_s: int = Field(8 * 3600, gt=0, description="dashboard sign-in lifetime (a shift)")
    # TLS of the HTTP server (TLS 1.2+, see medtwin.core.tls). Without a certificate the
    # server speaks plain HTTP, which production allows on loopback only (behind a proxy).
    tls_certfile: Path | None = Field(None, description="PEM certificate chain of the server")
    tls_keyfile: Path | None = Field(
        None, description="PEM private key (omit when the certificate file holds it)"
    )
    tls_keyfile_password: SecretStr | None = None
    # Rate limiting (medtwin.apps.api.ratelimit): per client, requests per second and burst.
    rate_limit_per_s: float = Field(50.0, gt=0)
    rate_limit_burst: int = Field(200, ge=1)
    # FHIR (medtwin.devices.fhir).
    fhir_max_entries: int = Field(10_000, gt=0, description="entries per Bundle")
    fhir_max_depth: int = Field(64, gt=0, description="JSON nesting depth")
    fhir_strict_references: bool = Field(
        False, description="refuse literal references to resources the server does not hold"
    )
    # HL7 v2 over MLLP (medtwin.devices.hl7): off unless a port is set.
    mllp_host: str = "127.0.0.1"
    mllp_port: int | None = Field(None, ge=0, le=65535)
    mllp_idle_timeout_s: float = Field(30.0, gt=0, description="a silent connection is closed")
    mllp_max_message_bytes: int = Field(1024 * 1024, gt=0)
    mllp_allowed_senders: list[str] = Field(
        default_factory=list, description="sending applications allowed (MSH-3); empty: any"
    )
    mllp_allowed_peers: list[str] = Field(
        default_factory=list, description="client IP addresses allowed; empty: any"
    )
    mllp_client_ca: Path | None = Field(None, description="CA of client certificates (mutual TLS)")
    hl7_time_zones: dict[str, str] = Field(
        default_factory=dict, description="IANA time zone per sender for times without offset"
    )
    # MQTT devices (medtwin.devices.mqtt): off unless a host is set.
    mqtt_host: str | None = None
    mqtt_port: int = Field(1883, ge=1, le=65535)
    mqtt_client_id: str = "medtwin-ingest"
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_tls_ca: Path | None = None
    mqtt_tls_certfile: Path | None = Field(
        None, description="client certificate (PEM chain) for brokers that require one (mTLS)"
    )
    mqtt_tls_keyfile: Path | None = Field(
        None, description="its private key (omit when the certificate file holds it)"
    )
    mqtt_tls_keyfile_password: SecretStr | None = None
    mqtt_password_file: Path | None = Field(
        None, description="Mosquitto password file to provision"
    )
    mqtt_acl_file: Path | None = Field(None, description="Mosquitto ACL file to provision")
    # Alarms (medtwin.twins.alarms): the rules (TOML or JSON; unset: the shipped rules),
    # what a rule over a module the service does not run does, and the outbound channels.
    alarm_rules_file: Path | None = None
    alarm_unknown_modules: Literal["error", "warn"] = Field(
        "warn", description="a rule over an unknown module: fail at start, or warn and skip it"
    )
    alarm_max_suppress_minutes: float = Field(240.0, gt=0)
    alarm_webhook_urls: list[str] = Field(
        default_factory=list, description="each alarm transition is POSTed as JSON to these"
    )
    alarm_webhook_retries: int = Field(3, ge=0, le=10)
    alarm_webhook_timeout_s: float = Field(5.0, gt=0)
    alarm_mqtt_host: str | None = Field(None, description="publish alarm transitions here")
    alarm_mqtt_port: int = Field(1883, ge=1, le=65535)
    alarm_mqtt_topic: str = Field("medtwin/alarms", description="prefix; one level per patient")
    alarm_mqtt_username: str | None = None
    alarm_mqtt_password: SecretStr | None = None

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Settings:
        if self.environment == "production":
            if self.store_url == DEFAULT_STORE_URL:
                raise ConfigurationError(
                    "production mode needs MEDTWIN_STORE_URL set explicitly, not the demo default"
                )
            if self.sqlite_synchronous in ("OFF", "NORMAL") and self.store_url.startswith("sqlite"):
                raise ConfigurationError(
                    "production mode refuses MEDTWIN_SQLITE_SYNCHRONOUS below FULL: "
                    "acknowledged data could be lost on power failure"
                )
            if self.tls_certfile is None and not is_loopback(self.host):
                raise ConfigurationError(
                    f"production mode refuses plain HTTP on {self.host!r}: set "
                    "MEDTWIN_TLS_CERTFILE and MEDTWIN_TLS_KEYFILE, or bind a loopback "
                    "MEDTWIN_HOST behind a TLS-terminating proxy"
                )
            for name in SECRETS:
                value = getattr(self, name)
                if value is None:
                    raise ConfigurationError(
                        f"production mode needs MEDTWIN_{name.upper()} set (at least "
                        f"{MIN_SECRET_LENGTH} random characters); no default secret is used"
                    )
        if self.tls_keyfile is not None and self.tls_certfile is None:
            raise ConfigurationError("MEDTWIN_TLS_KEYFILE is set without MEDTWIN_TLS_CERTFILE")
        for name in SECRETS:
            value = getattr(self, name)
            if value is not None and len(value.get_secret_value()) < MIN_SECRET_LENGTH:
                raise ConfigurationError(
                    f"MEDTWIN_{name.upper()} is shorter than {MIN_SECRET_LENGTH} characters"
                )
        return self

    def secret(self, name: str) -> bytes:
        """The secret ``name`` (see ``SECRETS``) as bytes.

        In development a missing secret is generated once and kept in ``secrets_file``
        (mode 0600), so tokens and the audit chain survive restarts.
        """
        if name not in SECRETS:
            raise KeyError(name)
        value: SecretStr | None = getattr(self, name)
        if value is not None:
            return value.get_secret_value().encode()
        if self.environment == "production":  # unreachable: the validator refuses it
            raise ConfigurationError(f"MEDTWIN_{name.upper()} is not set")
        stored = _load_secrets(self.secrets_file)
        if name not in stored:
            stored[name] = _GENERATORS.get(name, lambda: secrets.token_urlsafe(48))()
            _save_secrets(self.secrets_file, stored)
        return stored[name].encode()

    def redacted_store_url(self) -> str:
        """The store URL without credentials, for logs."""
        scheme, _, rest = self.store_url.partition("://")
        # libpq also takes the password as a query parameter; hide it before cutting
        # the user info, so that an "@" inside it cannot move the cut.
        rest = _SECRET_PARAMETER.sub(r"\1***", rest)
        return f"{scheme}://{rest.rsplit('@', 1)[-1]}"
