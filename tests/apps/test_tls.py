"""TLS of the HTTP server: a real uvicorn over TLS, TLS 1.2+ only, no plain HTTP."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from medtwin.apps.api import create_app
from medtwin.core.errors import ConfigurationError
from medtwin.core.settings import Settings
from medtwin.core.tls import server_context, ssl_options
from tests.apps.conftest import _free_port


class TlsSettings(Settings):
    """Settings with the TLS fields (harmless once Settings has them itself)."""

    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None


@dataclass(frozen=True)
class Certificate:
    certfile: Path
    keyfile: Path


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1 (SAN IP address), valid for a day."""
    folder = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "medtwin test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = folder / "cert.pem", folder / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Certificate(certfile, keyfile)


def _settings(tmp_path: Path, port: int, certificate: Certificate | None) -> TlsSettings:
    return TlsSettings(
        store_url=f"sqlite:///{tmp_path / 'tls.db'}",
        port=port,
        secrets_file=tmp_path / "secrets.json",
        audit_checkpoint_path=tmp_path / "audit-checkpoints.jsonl",
        tls_certfile=certificate.certfile if certificate else None,
        tls_keyfile=certificate.keyfile if certificate else None,
    )


@dataclass(frozen=True)
class TlsServer:
    port: int
    certificate: Certificate

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def trusting(self) -> ssl.SSLContext:
        """A client context that trusts the test certificate (and checks the host)."""
        return ssl.create_default_context(cafile=str(self.certificate.certfile))


@pytest.fixture
def tls_server(tmp_path: Path, certificate: Certificate) -> Iterator[TlsServer]:
    port = _free_port()
    settings = _settings(tmp_path, port, certificate)
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        **ssl_options(settings),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    running = TlsServer(port, certificate)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            answer = httpx.get(f"{running.url}/readyz", verify=running.trusting(), timeout=1)
            if answer.status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    else:
        server.should_exit = True
        thread.join(timeout=10)
        pytest.fail("medtwin TLS server did not become ready in 20 s")
    try:
        yield running
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _handshake(port: int, context: ssl.SSLContext) -> str | None:
    """The protocol version negotiated with the server on ``port`` (raises on failure)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return tls.version()


def _legacy_client() -> ssl.SSLContext:
    """A client that speaks TLS 1.0 or 1.1 only, with every cipher OpenSSL still has."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # that is the point
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")
    return context


@pytest.fixture(scope="module")
def legacy_client_works(certificate: Certificate) -> None:
    """Skip unless this OpenSSL can still speak TLS 1.1 to a server that allows it.

    Without this control, "the TLS 1.1 client fails" could mean the client never tried.
    """
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certificate.certfile, certificate.keyfile)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server.minimum_version = ssl.TLSVersion.TLSv1
    server.set_ciphers("ALL:@SECLEVEL=0")
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def accept() -> None:
            connection, _ = listener.accept()
            try:
                with server.wrap_socket(connection, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                pass

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            version = _handshake(listener.getsockname()[1], _legacy_client())
        except ssl.SSLError as exc:
            pytest.skip(f"this OpenSSL cannot speak TLS 1.1 at all: {exc}")
        finally:
            thread.join(timeout=5)
    assert version in ("TLSv1", "TLSv1.1")


def test_https_request_verified_against_the_certificate(tls_server: TlsServer) -> None:
    answer = httpx.get(f"{tls_server.url}/healthz", verify=tls_server.trusting(), timeout=5)
    assert answer.status_code == 200


def test_https_refuses_an_untrusted_client_setup(tls_server: TlsServer) -> None:
    # The certificate really is checked: a client without it does not connect.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{tls_server.url}/healthz", verify=ssl.create_default_context(), timeout=5)


def test_negotiates_tls_1_2_or_newer(tls_server: TlsServer) -> None:
    assert _handshake(tls_server.port, tls_server.trusting()) in ("TLSv1.2", "TLSv1.3")
    only_12 = tls_server.trusting()
    only_12.maximum_version = ssl.TLSVersion.TLSv1_2
    assert _handshake(tls_server.port, only_12) == "TLSv1.2"
    # And the TLS 1.2 cipher is a forward-secret AEAD one.
    with (
        socket.create_connection(("127.0.0.1", tls_server.port), timeout=5) as raw,
        only_12.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        cipher = tls.cipher()
    assert cipher is not None
    assert cipher[0].startswith(("ECDHE-", "DHE-"))
    assert "GCM" in cipher[0] or "CHACHA20" in cipher[0]


@pytest.mark.usefixtures("legacy_client_works")
def test_tls_1_1_client_is_refused(tls_server: TlsServer) -> None:
    with pytest.raises(ssl.SSLError) as refused:
        _handshake(tls_server.port, _legacy_client())
    # The server said no: a protocol version alert, or asyncio's TLS closing the connection
    # without one. Not the client refusing to try (the control fixture rules that out).
    reason = str(refused.value.reason)
    assert reason in ("TLSV1_ALERT_PROTOCOL_VERSION", "UNEXPECTED_EOF_WHILE_READING"), refused.value


@pytest.mark.usefixtures("legacy_client_works")
def test_minimum_version_alone_refuses_tls_1_1(tmp_path: Path, certificate: Certificate) -> None:
    """Even with every cipher allowed, the context's minimum version refuses TLS 1.1."""
    context = server_context(_settings(tmp_path, 8443, certificate))
    context.set_ciphers("ALL:@SECLEVEL=0")
    failures: list[BaseException] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def accept() -> None:
            connection, _ = listener.accept()
            try:
                with context.wrap_socket(connection, server_side=True):
                    pass
            except (OSError, ssl.SSLError) as exc:
                failures.append(exc)

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION"):
            _handshake(listener.getsockname()[1], _legacy_client())
        thread.join(timeout=5)
    assert failures
    assert "UNSUPPORTED_PROTOCOL" in str(failures[0])


def test_plain_http_to_the_tls_port_fails(tls_server: TlsServer) -> None:
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{tls_server.port}/healthz", timeout=5)


def test_server_context_is_tls_1_2_minimum(tmp_path: Path, certificate: Certificate) -> None:
    context = server_context(_settings(tmp_path, 8443, certificate))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.protocol == ssl.PROTOCOL_TLS_SERVER


def test_uvicorn_loads_our_context(tmp_path: Path, certificate: Certificate) -> None:
    settings = _settings(tmp_path, 8443, certificate)
    config = uvicorn.Config(create_app(settings), **ssl_options(settings))
    config.load()
    assert isinstance(config.ssl, ssl.SSLContext)
    assert config.ssl.minimum_version == ssl.TLSVersion.TLSv1_2
    assert config.is_ssl


def test_no_certificate_means_no_tls(tmp_path: Path) -> None:
    assert ssl_options(_settings(tmp_path, 8000, None)) == {}
    with pytest.raises(ConfigurationError):
        server_context(_settings(tmp_path, 8000, None))


def test_unusable_tls_files_are_refused(tmp_path: Path, certificate: Certificate) -> None:
    missing = TlsSettings(
        store_url=f"sqlite:///{tmp_path / 'tls.db'}",
        secrets_file=tmp_path / "secrets.json",
        tls_certfile=tmp_path / "nope.pem",
    )
    with pytest.raises(ConfigurationError, match="no file"):
        ssl_options(missing)
    # (Settings will refuse this too; ssl_options does not rely on it.)
    key_only = SimpleNamespace(tls_certfile=None, tls_keyfile=certificate.keyfile)
    with pytest.raises(ConfigurationError, match="without"):
        ssl_options(key_only)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    bad = TlsSettings(
        store_url=f"sqlite:///{tmp_path / 'tls.db'}",
        secrets_file=tmp_path / "secrets.json",
        tls_certfile=garbage,
        tls_keyfile=certificate.keyfile,
    )
    with pytest.raises(ConfigurationError, match="cannot load"):
        ssl_options(bad)


def test_serve_hands_uvicorn_the_tls_options(
    tmp_path: Path, certificate: Certificate, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medtwin.apps import cli

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.append(options))
    cli._serve(object(), _settings(tmp_path, 8443, certificate))
    (options,) = calls
    assert options["ssl_certfile"] == str(certificate.certfile)
    assert options["access_log"] is False
    config = uvicorn.Config(create_app(_settings(tmp_path, 8443, None)), **options)
    config.load()
    assert config.ssl is not None
    assert config.ssl.minimum_version == ssl.TLSVersion.TLSv1_2
    cli._serve(object(), _settings(tmp_path, 8000, None))
    assert "ssl_context_factory" not in calls[1]


def test_serve_refuses_an_unusable_certificate(tmp_path: Path, certificate: Certificate) -> None:
    import typer

    from medtwin.apps import cli

    settings = TlsSettings(
        store_url=f"sqlite:///{tmp_path / 'tls.db'}",
        secrets_file=tmp_path / "secrets.json",
        tls_certfile=tmp_path / "missing.pem",
    )
    with pytest.raises(typer.Exit) as exited:
        cli._serve(object(), settings)
    assert exited.value.exit_code == 2
