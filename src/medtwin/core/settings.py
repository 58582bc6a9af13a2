"""Settings: one class, read from ``MEDTWIN_*`` environment variables (or a ``.env`` file).

Production mode refuses unsafe defaults instead of running with them.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from medtwin.core.errors import ConfigurationError

DEFAULT_STORE_URL = "sqlite:///var/medtwin.db"
# Query parameters of a store URL that carry secrets (libpq connection URIs).
_SECRET_PARAMETER = re.compile(r"([?&](?:ssl)?password=)[^&]*", re.IGNORECASE)


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
    max_body_bytes: int = Field(5 * 1024 * 1024, gt=0)
    max_batch_items: int = Field(10_000, gt=0)
    refresh_interval_s: float = Field(5.0, gt=0)
    demo_patients: int = Field(24, ge=1, le=10_000)
    demo_acceleration: float = Field(30.0, gt=0)
    demo_seed: int = 0
    log_level: Literal["debug", "info", "warning", "error"] = "info"

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
        return self

    def redacted_store_url(self) -> str:
        """The store URL without credentials, for logs."""
        scheme, _, rest = self.store_url.partition("://")
        # libpq also takes the password as a query parameter; hide it before cutting
        # the user info, so that an "@" inside it cannot move the cut.
        rest = _SECRET_PARAMETER.sub(r"\1***", rest)
        return f"{scheme}://{rest.rsplit('@', 1)[-1]}"
