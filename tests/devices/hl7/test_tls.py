"""MLLP over TLS with client certificates (mutual TLS): a sender without one is refused."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from medtwin.core.errors import ConfigurationError
from medtwin.core.settings import Settings
from medtwin.data.store import SqlStore
from medtwin.devices.hl7 import send_messages
from medtwin.devices.hl7.coordinator import mllp_ssl_context

from .conftest import serve

MESSAGE = (
    "MSH|^~\\&|LAB|WARD|MEDTWIN|HOSP|20260101100000+0000||ORU^R01|TLS-1|P|2.5.1\r"
    "PID|1||MRN-7^^^HOSP^MR\r"
    "OBX|1|NM|8867-4^Heart rate^LN||77|/min|||||F|||20260101100000+0000\r"
)


def _pem(folder: Path, name: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> Path:
    (folder / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path = folder / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None = None,
    issuer_key: ec.EllipticCurvePrivateKey | None = None, *, ca: bool = False,
) -> x509.Certificate:  # fmt: skip
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key or key, hashes.SHA256())


def test_mutual_tls_admits_only_senders_with_a_certificate_from_the_ca(
    store: SqlStore, tmp_path: Path
) -> None:
    from .conftest import make_processor

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("medtwin test CA", ca_key, ca=True)
    ca_file = _pem(tmp_path, "ca", ca_key, ca)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_file = _pem(
        tmp_path, "server", server_key, _certificate("server", server_key, ca.subject, ca_key)
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_file = _pem(
        tmp_path, "client", client_key, _certificate("lab", client_key, ca.subject, ca_key)
    )
    settings = Settings(
        store_url="sqlite://",
        tls_certfile=server_file,
        tls_keyfile=tmp_path / "server.key",
        mllp_client_ca=ca_file,
    )
    server_context = mllp_ssl_context(settings)
    assert server_context is not None
    assert server_context.verify_mode == ssl.CERT_REQUIRED
    client = ssl.create_default_context(cafile=str(ca_file))
    client.load_cert_chain(str(client_file), str(tmp_path / "client.key"))
    anonymous = ssl.create_default_context(cafile=str(ca_file))
    with serve(make_processor(store), ssl_context=server_context) as running:
        (ack,) = send_messages(
            "127.0.0.1", running.port, [MESSAGE], ssl_context=client, server_hostname="127.0.0.1"
        )
        assert ack is not None
        assert "MSA|AA|TLS-1" in ack
        with pytest.raises((ssl.SSLError, OSError, ConnectionError)):
            send_messages(
                "127.0.0.1",
                running.port,
                [MESSAGE.replace("TLS-1", "TLS-2")],
                ssl_context=anonymous,
                server_hostname="127.0.0.1",
                timeout_s=5,
            )
    assert store.count("observations") == 1


def test_client_ca_without_tls_is_a_configuration_error(tmp_path: Path) -> None:
    settings = Settings(store_url="sqlite://", mllp_client_ca=tmp_path / "ca.pem")
    with pytest.raises(ConfigurationError, match="MLLP_CLIENT_CA needs TLS"):
        mllp_ssl_context(settings)
