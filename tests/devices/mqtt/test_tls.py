"""The subscriber over TLS, with and without client certificates (mutual TLS).

Certificates are made here with ``cryptography``: a CA, the broker's certificate for
127.0.0.1, a device's and the subscriber's client certificates, and a second CA
that the broker does not trust. Each test runs its own Mosquitto with a TLS listener.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from medtwin.core.errors import ConfigurationError, MedtwinError
from medtwin.core.settings import Settings
from medtwin.data.store import Origin, SqlStore
from medtwin.devices.mqtt import MqttConfig, MqttError, MqttSubscriber
from medtwin.devices.mqtt.loadgen import observation_payloads, publish
from medtwin.devices.mqtt.subscriber import tls_context

from .conftest import MOSQUITTO, Broker, Rig, _unavailable, hours_ago, wait_for


@dataclass(frozen=True)
class Identity:
    certfile: Path
    keyfile: Path


@dataclass(frozen=True)
class Pki:
    ca: Path
    server: Identity
    subscriber: Identity
    device: Identity
    rogue_ca: Path  # a CA nobody trusts
    rogue: Identity  # a client certificate from it


def _write(
    folder: Path, name: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
) -> Identity:
    keyfile = folder / f"{name}.key"
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    certfile = folder / f"{name}.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Identity(certfile, keyfile)


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    server: bool = False,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name if issuer is None else issuer[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is None:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    elif server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    signer = key if issuer is None else issuer[1]
    return builder.sign(signer, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("medtwin test CA", ca_key, None)
    ca_file = _write(folder, "ca", ca_key, ca).certfile
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    rogue_ca = _issue("someone else's CA", rogue_key, None)
    rogue_file = _write(folder, "rogue-ca", rogue_key, rogue_ca).certfile

    def leaf(
        name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], server: bool = False
    ) -> Identity:
        key = ec.generate_private_key(ec.SECP256R1())
        return _write(folder, name, key, _issue(name, key, issuer, server=server))

    return Pki(
        ca=ca_file,
        server=leaf("broker", (ca, ca_key), server=True),
        subscriber=leaf("medtwin-ingest", (ca, ca_key)),
        device=leaf("pump-1", (ca, ca_key)),
        rogue_ca=rogue_file,
        rogue=leaf("intruder", (rogue_ca, rogue_key)),
    )


def _tls_broker(tmp_path: Path, pki: Pki, *, require_certificate: bool) -> Broker:
    if not Path(MOSQUITTO).exists():
        _unavailable(f"no mosquitto binary at {MOSQUITTO}")
    directory = tmp_path / "broker"
    directory.mkdir()
    options = [
        f"cafile {pki.ca}",
        f"certfile {pki.server.certfile}",
        f"keyfile {pki.server.keyfile}",
        f"require_certificate {'true' if require_certificate else 'false'}",
    ]
    broker = Broker(directory, listener_options=options)
    broker.start()
    return broker


@pytest.fixture
def mtls_broker(tmp_path: Path, pki: Pki) -> Iterator[Broker]:
    """Mosquitto with a TLS listener that admits clients with a certificate from the CA."""
    broker = _tls_broker(tmp_path, pki, require_certificate=True)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def sqlite_store(stores: object) -> SqlStore:
    return stores.new("sqlite")  # type: ignore[attr-defined, no-any-return]


def _device_tls(pki: Pki, identity: Identity | None) -> ssl.SSLContext:
    config = MqttConfig(
        tls_ca=pki.ca,
        tls_certfile=None if identity is None else identity.certfile,
        tls_keyfile=None if identity is None else identity.keyfile,
    )
    return tls_context(config)


def _refused(rig: Rig, **overrides: object) -> MedtwinError:
    """Start a subscriber that must not get connected; the error it reports."""
    subscriber = MqttSubscriber(rig.config(**overrides), rig.ingestor)
    subscriber.start()
    try:
        wait_for(lambda: subscriber.last_error is not None, 10, "the connection error")
        # Retrying (with backoff from 0.2 s) does not get it in either.
        with pytest.raises(MqttError):
            subscriber.wait_connected(1.5)
        assert subscriber.stats.connects == 0
        assert subscriber.last_error is not None
        return subscriber.last_error
    finally:
        subscriber.stop(timeout_s=5)


def _encrypted_key(identity: Identity, folder: Path, password: str) -> Path:
    key = serialization.load_pem_private_key(identity.keyfile.read_bytes(), None)
    path = folder / f"{identity.keyfile.stem}-encrypted.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password.encode()),
        )
    )
    return path


def test_mutual_tls_subscriber_stores_a_reading(
    sqlite_store: SqlStore, mtls_broker: Broker, pki: Pki, tmp_path: Path
) -> None:
    rig = Rig(sqlite_store, mtls_broker.host, mtls_broker.port)
    start = hours_ago(1)
    rig.bind("pump-1", "p1", start)
    try:
        # The subscriber's key is kept encrypted, its passphrase in the configuration.
        subscriber = rig.subscriber(
            tls_ca=pki.ca,
            tls_certfile=pki.subscriber.certfile,
            tls_keyfile=_encrypted_key(pki.subscriber, tmp_path, "correct horse"),
            tls_keyfile_password="correct horse",
        )
        payloads = observation_payloads(3, start=start, boot_id="tls")
        publish(
            rig.host,
            rig.port,
            [(rig.topic("pump-1"), p) for p in payloads],
            tls=_device_tls(pki, pki.device),
            timeout_s=10,
        )
        wait_for(lambda: subscriber.stats.acked == 3, 10, "the readings over TLS")
        assert subscriber.stats.stored == 3
        stored = {item.observation.source_id for item in sqlite_store.history("p1").items}
        assert stored == {"tls.0", "tls.1", "tls.2"}
        assert sqlite_store.origins_of([("pump-1", "tls.0", 1)]) == {
            ("pump-1", "tls.0", 1): Origin("mqtt", rig.topic("pump-1"), "tls.0")
        }
    finally:
        rig.close()


def test_clients_without_a_certificate_from_the_ca_are_refused(
    sqlite_store: SqlStore, mtls_broker: Broker, pki: Pki
) -> None:
    rig = Rig(sqlite_store, mtls_broker.host, mtls_broker.port)
    rig.bind("pump-1", "p1", hours_ago(1))
    # No client certificate at all.
    error = _refused(rig, tls_ca=pki.ca)
    assert "certificate required" in str(error)
    # A certificate the broker's CA did not sign.
    error = _refused(
        rig, tls_ca=pki.ca, tls_certfile=pki.rogue.certfile, tls_keyfile=pki.rogue.keyfile
    )
    assert "unknown ca" in str(error)
    # Plain MQTT on the TLS port gets nowhere either.
    assert "before accepting it" in str(_refused(rig))
    # Nor does a device without a certificate: the broker never acknowledges its publish.
    with pytest.raises(MedtwinError):
        publish(
            rig.host,
            rig.port,
            [(rig.topic("pump-1"), observation_payloads(1, start=hours_ago(1))[0])],
            tls=_device_tls(pki, None),
            timeout_s=2,
        )
    assert sqlite_store.count("observations") == 0


def test_subscriber_refuses_a_broker_it_cannot_verify(
    sqlite_store: SqlStore, mtls_broker: Broker, pki: Pki
) -> None:
    rig = Rig(sqlite_store, mtls_broker.host, mtls_broker.port)
    # The broker's certificate is from a CA this subscriber does not trust.
    error = _refused(
        rig,
        tls_ca=pki.rogue_ca,
        tls_certfile=pki.subscriber.certfile,
        tls_keyfile=pki.subscriber.keyfile,
    )
    assert "certificate verify failed" in str(error)
    # The broker's certificate names 127.0.0.1, not the host name used to reach it.
    error = _refused(
        rig,
        host="localhost",
        tls_ca=pki.ca,
        tls_certfile=pki.subscriber.certfile,
        tls_keyfile=pki.subscriber.keyfile,
    )
    assert "Hostname mismatch" in str(error)


def test_server_authenticated_tls_without_client_certificates(
    sqlite_store: SqlStore, tmp_path: Path, pki: Pki
) -> None:
    broker = _tls_broker(tmp_path, pki, require_certificate=False)
    rig = Rig(sqlite_store, broker.host, broker.port)
    start = hours_ago(1)
    rig.bind("pump-1", "p1", start)
    try:
        subscriber = rig.subscriber(tls_ca=pki.ca)
        publish(
            rig.host,
            rig.port,
            [(rig.topic("pump-1"), observation_payloads(1, start=start, boot_id="s")[0])],
            tls=_device_tls(pki, None),
            timeout_s=10,
        )
        wait_for(lambda: subscriber.stats.acked == 1, 10, "the reading over TLS")
        assert sqlite_store.count("observations") == 1
    finally:
        rig.close()
        broker.stop()


def test_unusable_tls_settings_are_configuration_errors(
    sqlite_store: SqlStore, tmp_path: Path, pki: Pki
) -> None:
    rig = Rig(sqlite_store, "127.0.0.1", 1)
    bad: list[dict[str, object]] = [
        {"tls_ca": pki.ca, "tls_keyfile": pki.subscriber.keyfile},  # key without certificate
        {"tls_keyfile": pki.subscriber.keyfile},  # the same, and no CA: not plain MQTT
        {"tls_ca": tmp_path / "missing.pem"},
        {"tls_ca": pki.ca, "tls_certfile": pki.subscriber.certfile},  # key not in that file
        {"tls_ca": pki.subscriber.keyfile},  # not a certificate
        {
            "tls_ca": pki.ca,
            "tls_certfile": pki.subscriber.certfile,
            "tls_keyfile": pki.device.keyfile,  # another certificate's key
        },
        {
            "tls_ca": pki.ca,
            "tls_certfile": pki.subscriber.certfile,
            "tls_keyfile": _encrypted_key(pki.subscriber, tmp_path, "right"),
            "tls_keyfile_password": "wrong",
        },
        {  # an encrypted key and no passphrase: refused, never asked for on a terminal
            "tls_ca": pki.ca,
            "tls_certfile": pki.subscriber.certfile,
            "tls_keyfile": _encrypted_key(pki.subscriber, tmp_path, "right"),
        },
    ]
    for overrides in bad:
        subscriber = MqttSubscriber(rig.config(**overrides), rig.ingestor)
        with pytest.raises(ConfigurationError):
            subscriber.start()
    assert not MqttConfig().tls
    assert MqttConfig(tls_ca=pki.ca).tls
    assert "secret" not in repr(MqttConfig(tls_keyfile_password="secret"))


def test_settings_give_the_tls_files(pki: Pki) -> None:
    settings = Settings(store_url="sqlite://", mqtt_host="127.0.0.1", mqtt_tls_ca=pki.ca)
    config = MqttConfig.from_settings(settings)
    assert (config.tls_ca, config.tls) == (pki.ca, True)


def test_settings_give_the_client_certificate(pki: Pki) -> None:
    settings = Settings(
        store_url="sqlite://",
        mqtt_host="127.0.0.1",
        mqtt_tls_ca=pki.ca,
        mqtt_tls_certfile=pki.subscriber.certfile,
        mqtt_tls_keyfile=pki.subscriber.keyfile,
        mqtt_tls_keyfile_password="not used by this key",
    )
    config = MqttConfig.from_settings(settings)
    assert (config.tls_certfile, config.tls_keyfile) == (
        pki.subscriber.certfile,
        pki.subscriber.keyfile,
    )
    assert config.tls_keyfile_password == "not used by this key"
