"""Encryption at rest: blob format, keyring rotation, data keys, crypto-shredding, blind indexes."""

from __future__ import annotations

import base64
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medtwin.core.errors import ConfigurationError, InputError, MedtwinError
from medtwin.data.crypto import (
    FORMAT_VERSION,
    KEY_BYTES,
    NONCE_BYTES,
    TAG_BYTES,
    BlindIndex,
    CryptoError,
    DataKeys,
    Keyring,
    generate_key,
    parse_keys,
)

K1 = generate_key()
K2 = generate_key()
K3 = generate_key()
AAD = b"patients:p1:demographics"


def raw(key: str) -> bytes:
    return base64.urlsafe_b64decode(key)


@pytest.fixture
def keyring() -> Keyring:
    return Keyring.from_spec(f"k1:{K1}")


@pytest.fixture
def data_keys(keyring: Keyring) -> DataKeys:
    return DataKeys(keyring)


def flips(blob: bytes) -> list[bytes]:
    """``blob`` with each byte in turn changed (low bit flipped)."""
    return [blob[:i] + bytes([blob[i] ^ 1]) + blob[i + 1 :] for i in range(len(blob))]


# ---------------------------------------------------------------------------
# Keys and key specs
# ---------------------------------------------------------------------------


def test_generate_key_is_random_urlsafe_256_bits() -> None:
    keys = {generate_key() for _ in range(20)}
    assert len(keys) == 20
    for key in keys:
        assert set(key) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=")
        assert len(raw(key)) == KEY_BYTES


def test_crypto_error_is_a_medtwin_error() -> None:
    assert issubclass(CryptoError, MedtwinError)


def test_parse_keys_keeps_order_and_accepts_padding_and_alphabet_variants() -> None:
    key = os.urandom(KEY_BYTES)
    standard = base64.b64encode(key).decode()
    urlsafe_unpadded = base64.urlsafe_b64encode(key).decode().rstrip("=")
    keys = parse_keys(f" b:{K2} , a:{standard},c.3_x-y:{urlsafe_unpadded}")
    assert list(keys) == ["b", "a", "c.3_x-y"]
    assert keys == {"b": raw(K2), "a": key, "c.3_x-y": key}


BAD = base64.b64encode(os.urandom(16)).decode()  # valid base64, 16 bytes


@pytest.mark.parametrize(
    ("spec", "secret", "expected"),
    [
        ("", "", "empty"),
        ("   ", "", "empty"),
        (f"k1:{K1},", K1, "entry 2 is empty"),
        (f"k1:{K1},,k2:{K2}", K1, "entry 2 is empty"),
        (f"k1:{K1},{K2}", K2, "entry 2 is not of the form"),
        (f"k1:{K1},k2:", K1, "entry 2 ('k2') has no key"),
        (f"k1:{K1},k2:{K2[:-6]}!!{K2[-4:]}", K2[:-6], "entry 2 ('k2'): key is not valid base64"),
        (f"k1:{K1}:x", K1, "entry 1 ('k1'): key is not valid base64"),
        (f"k1:{BAD}", BAD, "entry 1 ('k1'): key is 16 bytes, expected 32"),
        (f"k1:{K1}{K1}", K1, "entry 1 ('k1'): key is"),
        (f"k1:{K1},k2:{K2},k1:{K3}", K3, "entry 3 ('k1'): key id 'k1' already used by entry 1"),
        # A key pasted where the id belongs is refused without echoing it.
        (f"{K1.rstrip('=')}:{K2}", K1.rstrip("="), "entry 1 has an invalid key id"),
        (f"k 1:{K1}", K1, "entry 1 has an invalid key id"),
        (f":{K1}", K1, "entry 1 has an invalid key id"),
        (f"{'k' * 33}:{K1}", K1, "entry 1 has an invalid key id"),
    ],
)
def test_parse_keys_errors_name_the_entry_without_key_material(
    spec: str, secret: str, expected: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_keys(spec)
    message = str(info.value)
    assert expected in message
    for key in (K1, K2, K3, BAD, secret):
        if key:
            assert key not in message
            assert key.rstrip("=")[:12] not in message


def test_keyring_from_spec_defaults_to_last_key_and_checks_active() -> None:
    assert Keyring.from_spec(f"k1:{K1},k2:{K2}").active_id == "k2"
    assert Keyring.from_spec(f"k1:{K1},k2:{K2}", active="k1").active_id == "k1"
    with pytest.raises(ConfigurationError, match="'k9' is not in the keyring"):
        Keyring.from_spec(f"k1:{K1}", active="k9")


def test_keyring_rejects_bad_keys_and_ids() -> None:
    with pytest.raises(ConfigurationError, match="no keys"):
        Keyring({}, "k1")
    with pytest.raises(ConfigurationError, match="must be 32 bytes"):
        Keyring({"k1": b"short"}, "k1")
    with pytest.raises(ConfigurationError, match="invalid key id"):
        Keyring({"k:1": raw(K1)}, "k:1")


def test_repr_shows_no_key_material() -> None:
    keyring = Keyring.from_spec(f"k1:{K1},k2:{K2}")
    assert repr(keyring) == "Keyring(ids=('k1', 'k2'), active='k2')"
    assert "hidden" in repr(BlindIndex(raw(K3)))


# ---------------------------------------------------------------------------
# Keyring encryption
# ---------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(plaintext=st.binary(max_size=2048), aad=st.binary(max_size=64))
def test_keyring_round_trip(plaintext: bytes, aad: bytes) -> None:
    keyring = Keyring.from_spec(f"k1:{K1},k2:{K2}")
    blob = keyring.encrypt(plaintext, aad=aad)
    assert keyring.decrypt(blob, aad=aad) == plaintext
    assert keyring.key_id_of(blob) == "k2"


def test_blob_layout(keyring: Keyring) -> None:
    blob = keyring.encrypt(b"secret", aad=AAD)
    assert blob[0] == FORMAT_VERSION
    assert blob[1:4] == b"\x02k1"
    assert len(blob) == 4 + NONCE_BYTES + len(b"secret") + TAG_BYTES
    assert b"secret" not in blob


def test_nonces_are_fresh(keyring: Keyring) -> None:
    blobs = {keyring.encrypt(b"same", aad=AAD) for _ in range(50)}
    assert len(blobs) == 50
    assert len({blob[4 : 4 + NONCE_BYTES] for blob in blobs}) == 50


def test_tampering_any_byte_fails(keyring: Keyring) -> None:
    blob = keyring.encrypt(b"Jane Doe, 1970-01-01", aad=AAD)
    for tampered in flips(blob):
        with pytest.raises(CryptoError):
            keyring.decrypt(tampered, aad=AAD)


@settings(max_examples=50, deadline=None)
@given(plaintext=st.binary(max_size=64), data=st.data())
def test_tampering_is_detected_property(plaintext: bytes, data: st.DataObject) -> None:
    keyring = Keyring.from_spec(f"k1:{K1}")
    blob = keyring.encrypt(plaintext, aad=AAD)
    index = data.draw(st.integers(0, len(blob) - 1))
    mask = data.draw(st.integers(1, 255))
    tampered = blob[:index] + bytes([blob[index] ^ mask]) + blob[index + 1 :]
    with pytest.raises(CryptoError):
        keyring.decrypt(tampered, aad=AAD)


def test_header_is_authenticated() -> None:
    """Relabelling a blob with another known key id fails: the header is in the aad."""
    keyring = Keyring({"k1": raw(K1), "k2": raw(K1)}, "k1")  # same key under two ids
    blob = keyring.encrypt(b"x", aad=AAD)
    relabelled = blob[:2] + b"k2" + blob[4:]
    with pytest.raises(CryptoError, match="decryption under key 'k2' failed"):
        keyring.decrypt(relabelled, aad=AAD)


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\x01",
        b"\x02\x02k1" + bytes(40),
        b"\x01\x02k1" + bytes(27),
        b"\x01\x02k\xff" + bytes(28),
    ],
)
def test_malformed_blobs_fail(keyring: Keyring, blob: bytes) -> None:
    with pytest.raises(CryptoError):
        keyring.decrypt(blob, aad=AAD)
    with pytest.raises(CryptoError):
        keyring.key_id_of(blob)


def test_truncation_fails(keyring: Keyring) -> None:
    blob = keyring.encrypt(b"abc", aad=AAD)
    for end in range(len(blob)):
        with pytest.raises(CryptoError):
            keyring.decrypt(blob[:end], aad=AAD)
    with pytest.raises(CryptoError):
        keyring.decrypt(blob + b"\x00", aad=AAD)


def test_wrong_aad_fails(keyring: Keyring) -> None:
    blob = keyring.encrypt(b"Jane Doe", aad=b"patients:p1:demographics")
    for aad in (b"patients:p2:demographics", b"patients:p1:contact", b""):
        with pytest.raises(CryptoError, match="wrong aad") as info:
            keyring.decrypt(blob, aad=aad)
        assert "Jane" not in str(info.value)


def test_unknown_key_id_fails() -> None:
    blob = Keyring.from_spec(f"old:{K1}").encrypt(b"x", aad=AAD)
    keyring = Keyring.from_spec(f"k2:{K2}")
    assert keyring.key_id_of(blob) == "old"
    with pytest.raises(CryptoError, match="unknown key id 'old'"):
        keyring.decrypt(blob, aad=AAD)
    with pytest.raises(CryptoError, match="unknown key id"):
        keyring.rotate(blob, aad=AAD)


def test_same_key_id_with_other_key_fails() -> None:
    blob = Keyring.from_spec(f"k1:{K1}").encrypt(b"x", aad=AAD)
    with pytest.raises(CryptoError, match="decryption under key 'k1' failed"):
        Keyring.from_spec(f"k1:{K2}").decrypt(blob, aad=AAD)


# ---------------------------------------------------------------------------
# Rotation
# ---------------------------------------------------------------------------


def test_rotation_without_downtime() -> None:
    old = Keyring.from_spec(f"k1:{K1}")
    blobs = [old.encrypt(f"value {i}".encode(), aad=AAD + bytes([i])) for i in range(5)]

    new = Keyring.from_spec(f"k1:{K1},k2:{K2}")  # k2 added and active
    assert new.active_id == "k2"
    for i, blob in enumerate(blobs):
        assert new.decrypt(blob, aad=AAD + bytes([i])) == f"value {i}".encode()
        assert new.needs_rotation(blob)
    fresh = new.encrypt(b"new", aad=AAD)
    assert not new.needs_rotation(fresh)
    assert new.key_id_of(fresh) == "k2"

    rotated = [new.rotate(blob, aad=AAD + bytes([i])) for i, blob in enumerate(blobs)]
    assert all(not new.needs_rotation(blob) for blob in rotated)
    assert all(new.key_id_of(blob) == "k2" for blob in rotated)

    # Once everything is rotated the old key can go.
    retired = Keyring.from_spec(f"k2:{K2}")
    for i, blob in enumerate(rotated):
        assert retired.decrypt(blob, aad=AAD + bytes([i])) == f"value {i}".encode()
    with pytest.raises(CryptoError, match="unknown key id 'k1'"):
        retired.decrypt(blobs[0], aad=AAD)


def test_rotate_is_idempotent_and_verifies(keyring: Keyring) -> None:
    blob = keyring.encrypt(b"x", aad=AAD)
    assert keyring.rotate(blob, aad=AAD) == blob
    with pytest.raises(CryptoError):
        keyring.rotate(blob, aad=b"other")
    old = Keyring.from_spec(f"k0:{K2}").encrypt(b"x", aad=AAD)
    with pytest.raises(CryptoError):
        Keyring.from_spec(f"k0:{K2},k1:{K1}").rotate(old, aad=b"other")


# ---------------------------------------------------------------------------
# Data keys and crypto-shredding
# ---------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(plaintext=st.binary(max_size=2048), aad=st.binary(max_size=64))
def test_seal_round_trip(plaintext: bytes, aad: bytes) -> None:
    data_key = os.urandom(KEY_BYTES)
    blob = DataKeys.seal(data_key, plaintext, aad=aad)
    assert blob[:2] == bytes((FORMAT_VERSION, 0))  # empty key id: the caller has the key
    assert DataKeys.open(data_key, blob, aad=aad) == plaintext


def test_sealed_blob_tampering_and_wrong_aad_fail() -> None:
    data_key = os.urandom(KEY_BYTES)
    blob = DataKeys.seal(data_key, b"1970-01-01", aad=AAD)
    for tampered in flips(blob):
        with pytest.raises(CryptoError):
            DataKeys.open(data_key, tampered, aad=AAD)
    with pytest.raises(CryptoError):
        DataKeys.open(data_key, blob, aad=b"patients:p2:demographics")


def test_keyring_and_data_key_blobs_are_not_interchangeable(keyring: Keyring) -> None:
    data_key = os.urandom(KEY_BYTES)
    with pytest.raises(CryptoError, match="not a keyring key"):
        keyring.decrypt(DataKeys.seal(data_key, b"x", aad=AAD), aad=AAD)
    with pytest.raises(CryptoError, match="not a keyring key"):
        keyring.key_id_of(DataKeys.seal(data_key, b"x", aad=AAD))
    with pytest.raises(CryptoError, match="not a data key"):
        DataKeys.open(data_key, keyring.encrypt(b"x", aad=AAD), aad=AAD)


def test_data_key_must_be_32_bytes() -> None:
    with pytest.raises(CryptoError, match="32 bytes"):
        DataKeys.seal(b"short", b"x", aad=AAD)


def test_data_keys_wrap_and_unwrap(data_keys: DataKeys) -> None:
    data_key, wrapped = data_keys.new_key("p1")
    assert len(data_key) == KEY_BYTES
    assert data_key not in wrapped
    assert data_keys.unwrap("p1", wrapped) == data_key
    other_key, _ = data_keys.new_key("p1")
    assert other_key != data_key


def test_wrapped_key_is_bound_to_its_patient(data_keys: DataKeys) -> None:
    _, wrapped = data_keys.new_key("p1")
    for patient in ("p2", "p1 ", "P1", ""):
        with pytest.raises(CryptoError):
            data_keys.unwrap(patient, wrapped)
    with pytest.raises(CryptoError):
        data_keys.rewrap("p2", wrapped)


def test_wrapped_key_is_not_a_plain_keyring_blob(data_keys: DataKeys) -> None:
    _, wrapped = data_keys.new_key("p1")
    with pytest.raises(CryptoError):
        data_keys.keyring.decrypt(wrapped, aad=b"p1")


def test_rewrap_moves_only_the_wrapped_key() -> None:
    old = DataKeys(Keyring.from_spec(f"k1:{K1}"))
    data_key, wrapped = old.new_key("p1")
    sealed = DataKeys.seal(data_key, b"Jane Doe", aad=AAD)

    new = DataKeys(Keyring.from_spec(f"k1:{K1},k2:{K2}"))
    assert new.keyring.needs_rotation(wrapped)
    rewrapped = new.rewrap("p1", wrapped)
    assert new.keyring.key_id_of(rewrapped) == "k2"
    assert new.rewrap("p1", rewrapped) == rewrapped

    retired = DataKeys(Keyring.from_spec(f"k2:{K2}"))
    assert DataKeys.open(retired.unwrap("p1", rewrapped), sealed, aad=AAD) == b"Jane Doe"


def test_crypto_shredding(data_keys: DataKeys) -> None:
    """Once the wrapped key is gone, no other key in reach opens the patient's data."""
    data_key, wrapped = data_keys.new_key("p1")
    sealed = DataKeys.seal(data_key, b"Jane Doe", aad=AAD)
    assert DataKeys.open(data_keys.unwrap("p1", wrapped), sealed, aad=AAD) == b"Jane Doe"

    del data_key, wrapped  # erasure: the store deletes the wrapped key
    candidates = [
        data_keys.new_key("p1")[0],  # a new key for the same patient
        data_keys.new_key("p2")[0],  # another patient's key
        raw(K1),  # the keyring key itself
        raw(K2),
        bytes(KEY_BYTES),
        os.urandom(KEY_BYTES),
    ]
    for candidate in candidates:
        with pytest.raises(CryptoError):
            DataKeys.open(candidate, sealed, aad=AAD)


# ---------------------------------------------------------------------------
# Blind indexes
# ---------------------------------------------------------------------------


@pytest.fixture
def index() -> BlindIndex:
    return BlindIndex(raw(K3))


def test_blind_index_is_deterministic_hex_16_bytes(index: BlindIndex) -> None:
    digest = index.identifier("ssn", "123-45-6789")
    assert digest == BlindIndex(raw(K3)).identifier("ssn", "123-45-6789")
    assert len(digest) == 32
    assert int(digest, 16) >= 0
    assert index.birth_year(1970) == BlindIndex(raw(K3)).birth_year(1970)


def test_blind_index_depends_on_the_key(index: BlindIndex) -> None:
    other = BlindIndex(raw(K2))
    assert index.identifier("ssn", "123456789") != other.identifier("ssn", "123456789")
    assert index.name_tokens("Jane") != other.name_tokens("Jane")
    assert index.birth_year(1970) != other.birth_year(1970)


def test_blind_index_key_must_be_32_bytes() -> None:
    with pytest.raises(ConfigurationError):
        BlindIndex(b"short")


@pytest.mark.parametrize(
    ("kind", "a", "b"),
    [
        ("ssn", "123-45-6789", "123 45 6789"),
        ("ssn", "123-45-6789", "123456789"),
        ("ssn", "123.45.6789", " 123456789\t"),
        ("ssn", "123\u201345\u20146789", "123456789"),  # en and em dashes
        ("ssn", "１２３４５６７８９", "123456789"),  # fullwidth digits
        ("passport", "AB 123-456", "ab123456"),
        ("mrn", "Mrn.0042", "MRN0042"),
    ],
)
def test_identifier_normalization(index: BlindIndex, kind: str, a: str, b: str) -> None:
    assert index.identifier(kind, a) == index.identifier(kind, b)


def test_identifier_distinguishes_values_and_kinds(index: BlindIndex) -> None:
    assert index.identifier("ssn", "123456789") != index.identifier("ssn", "123456780")
    digests = {index.identifier(kind, "123456789") for kind in ("ssn", "passport", "mrn")}
    assert len(digests) == 3
    # Domains are separate: an identifier, a name token and a year never collide.
    assert index.identifier("name", "jane") not in index.name_tokens("jane")
    assert index.identifier("birth_year", "1970") != index.birth_year(1970)


def test_identifier_rejects_bad_kind_and_empty_value(index: BlindIndex) -> None:
    for kind in ("", "SSN", "ss n", "ssn\x00x"):
        with pytest.raises(InputError, match="kind"):
            index.identifier(kind, "123")
    for value in ("", " - . "):
        with pytest.raises(InputError, match="empty"):
            index.identifier("ssn", value)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Müller", "muller"),
        ("MÜLLER", "Mu\u0308ller"),  # precomposed vs combining diaeresis
        ("José  O'Neil", "jose oneil"),
        ("José O\u2019Neil", "JOSE ONEIL"),  # typographic apostrophe
        ("Garcia-Lopez", "garcia lopez"),
        ("Straße", "strasse"),
        ("Ångström", "angstrom"),
        ("  Jane\tDoe\n", "jane doe"),
    ],
)
def test_name_normalization(index: BlindIndex, a: str, b: str) -> None:
    assert index.name_tokens(a) == index.name_tokens(b)


def test_name_tokens_order_and_duplicates(index: BlindIndex) -> None:
    anna, maria = index.name_tokens("Anna")[0], index.name_tokens("Maria")[0]
    assert index.name_tokens("Anna Maria") == [anna, maria]
    assert index.name_tokens("Maria Anna") == [maria, anna]
    assert index.name_tokens("Anna Maria ANNA ánna") == [anna, maria]
    assert index.name_tokens("O Neil") != index.name_tokens("O'Neil")
    assert len(index.name_tokens("Henry 8th")) == 2  # digits split tokens
    assert index.name_tokens("") == []
    assert index.name_tokens(" -'. 42 ") == []


def test_birth_year(index: BlindIndex) -> None:
    assert index.birth_year(1970) != index.birth_year(1971)
    for year in (0, -1, 10000):
        with pytest.raises(InputError):
            index.birth_year(year)
    with pytest.raises(InputError):
        index.birth_year(True)
