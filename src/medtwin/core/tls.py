"""TLS for the HTTP server (HIPAA transmission security): TLS 1.2 or newer, strong ciphers.

``ssl_options(settings)`` gives the keyword arguments of ``uvicorn.run``/``uvicorn.Config``.
Uvicorn's own ``ssl_version`` only picks a protocol constant, which leaves TLS 1.0 and 1.1
to OpenSSL's configuration; so the options hand uvicorn an ``ssl_context_factory`` that
builds the context here, with ``minimum_version = TLSv1_2``, whatever the system's
OpenSSL configuration says.
"""

from __future__ import annotations

import inspect
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medtwin.core.errors import ConfigurationError

__all__ = ["CIPHERS", "MINIMUM_VERSION", "server_context", "ssl_options", "tls_enabled"]

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
# TLS 1.2 suites: forward secret AEAD only (Mozilla "intermediate"). TLS 1.3 suites are
# all strong and are not affected by this list.
CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    )
)


def _files(settings: Any) -> tuple[Path, Path | None] | None:
    """(certificate, key) of ``settings``, None when TLS is off; ConfigurationError if unusable."""
    certfile: Path | str | None = getattr(settings, "tls_certfile", None)
    keyfile: Path | str | None = getattr(settings, "tls_keyfile", None)
    if certfile is None:
        if keyfile is not None:
            raise ConfigurationError("MEDTWIN_TLS_KEYFILE is set without MEDTWIN_TLS_CERTFILE")
        return None
    paths = (Path(certfile), Path(keyfile) if keyfile is not None else None)
    for name, path in zip(("MEDTWIN_TLS_CERTFILE", "MEDTWIN_TLS_KEYFILE"), paths, strict=True):
        if path is not None and not path.is_file():
            raise ConfigurationError(f"{name}: no file {path}")
    return paths


def _password(settings: Any) -> str | None:
    """The key's passphrase, if the settings have one (``tls_keyfile_password``, optional)."""
    value = getattr(settings, "tls_keyfile_password", None)
    if value is None:
        return None
    secret = value.get_secret_value() if hasattr(value, "get_secret_value") else value
    return str(secret)


def tls_enabled(settings: Any) -> bool:
    """Whether ``settings`` ask for TLS (a certificate is configured)."""
    return getattr(settings, "tls_certfile", None) is not None


def server_context(settings: Any) -> ssl.SSLContext:
    """The server's TLS context: certificate of ``settings``, TLS 1.2 or newer, AEAD ciphers.

    ConfigurationError when TLS is not configured or the certificate or key cannot be loaded.
    """
    files = _files(settings)
    if files is None:
        raise ConfigurationError("TLS is off: MEDTWIN_TLS_CERTFILE is not set")
    certfile, keyfile = files
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    context.set_ciphers(CIPHERS)
    context.options |= (
        ssl.OP_NO_COMPRESSION  # CRIME
        | ssl.OP_NO_RENEGOTIATION
        | ssl.OP_CIPHER_SERVER_PREFERENCE
        | ssl.OP_SINGLE_DH_USE
        | ssl.OP_SINGLE_ECDH_USE
    )
    context.verify_mode = ssl.CERT_NONE  # clients authenticate with tokens, not certificates
    password = _password(settings)
    try:
        context.load_cert_chain(certfile, keyfile, (lambda: password) if password else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            f"cannot load the TLS certificate {certfile} / key {keyfile or certfile}: {exc}"
        ) from exc
    return context


ContextFactory = Callable[[Any, Callable[[], ssl.SSLContext]], ssl.SSLContext]


def _factory(settings: Any) -> ContextFactory:
    """Uvicorn's ``ssl_context_factory``: our context, plus the ALPN of uvicorn's protocol."""

    def build(config: Any, _default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        context = server_context(settings)
        protocol = getattr(config, "http_protocol_class", None)
        alpn: list[str] | None = getattr(protocol, "alpn_protocols", None)
        if alpn:
            context.set_alpn_protocols(alpn)
        return context

    return build


def _check_uvicorn() -> None:
    """ConfigurationError unless uvicorn takes ``ssl_context_factory`` (uvicorn 0.47 or newer).

    Without it uvicorn would build its own context, which does not refuse TLS 1.0/1.1.
    """
    import uvicorn

    if "ssl_context_factory" not in inspect.signature(uvicorn.Config).parameters:
        raise ConfigurationError(
            f"TLS needs uvicorn 0.47 or newer (ssl_context_factory); found {uvicorn.__version__}"
        )


def ssl_options(settings: Any) -> dict[str, Any]:
    """Keyword arguments of ``uvicorn.run``/``uvicorn.Config`` for TLS; ``{}`` when TLS is off.

    The certificate and key are checked here, so a bad path fails before the server starts.
    ``ssl_certfile``/``ssl_keyfile``/``ssl_ciphers`` describe the setup (uvicorn logs
    ``https``); the context itself comes from ``ssl_context_factory`` (see ``server_context``).
    """
    files = _files(settings)
    if files is None:
        return {}
    certfile, keyfile = files
    _check_uvicorn()
    server_context(settings)  # fail early on an unreadable certificate, key or passphrase
    options: dict[str, Any] = {
        "ssl_certfile": str(certfile),
        "ssl_keyfile": str(keyfile) if keyfile is not None else None,
        "ssl_version": ssl.PROTOCOL_TLS_SERVER,
        "ssl_ciphers": CIPHERS,
        "ssl_context_factory": _factory(settings),
    }
    password = _password(settings)
    if password:
        options["ssl_keyfile_password"] = password
    return options
