"""Encryption at rest for personal data: envelope encryption, rotation, shredding, blind indexes.

Envelope scheme (three layers)::

    Keyring      key-encryption keys (KEKs) from settings, by id; one is active
      └─ wraps   DataKeys: one random data-encryption key (DEK) per patient
                   └─ seals  the patient's personal fields

All encryption is AES-256-GCM with a fresh random 96-bit nonce per message. Every
ciphertext is a self-describing blob::

    version (1 byte, = 1) | key id length (1 byte) | key id (ASCII)
    | nonce (12 bytes) | ciphertext | tag (16 bytes)

The key id names the keyring KEK; it is empty for fields sealed under a DEK (the
caller supplies that key). The header is authenticated together with the caller's
``aad`` (associated data such as ``b"patients:p1:demographics"``), so a blob copied
to another row or field, or given another header, fails to decrypt.

Nonce bound: with random 96-bit nonces one key may encrypt at most 2**32 messages
(NIST SP 800-38D) before the chance of a nonce collision, which breaks both
confidentiality and integrity, becomes unacceptable. KEKs only wrap the small DEKs
and each DEK only seals one patient's fields, so both stay far below the bound;
rotating to a new active KEK starts a fresh count.

Rotation without downtime: add a new key to the keyring spec and make it active.
Old blobs still decrypt (every key decrypts, only the active one encrypts);
:meth:`Keyring.needs_rotation` finds them and :meth:`DataKeys.rewrap` re-encrypts
the wrapped DEKs alone, never the data. Remove the old key once nothing needs it.

Crypto-shredding: a patient's data is erased by deleting the patient's wrapped
DEK; the sealed fields may stay behind but no key opens them. A backup that still
holds the wrapped DEK can unwrap it until every KEK that wrapped it is destroyed,
so backups are shredded by rotation plus removal of the old KEK. The patient's
blind-index digests are keyed by a global key and must be deleted with the DEK,
else they still confirm guesses of the erased values.

Blind indexes (:class:`BlindIndex`) are truncated HMAC-SHA256 digests of
normalized values under their own key, for equality search over encrypted
fields. They leak equality (rows with the same value share a digest) and hence
frequency (common surnames and birth years stand out), and anyone holding the
index key can test guesses; small domains such as birth years are enumerable.
Changing the index key means recomputing every digest from the plaintext.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import unicodedata
from collections.abc import Mapping, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medtwin.core.errors import ConfigurationError, InputError, MedtwinError

KEY_BYTES = 32
"""Length of every key: AES-256 keys, DEKs and the blind-index key."""
FORMAT_VERSION = 1
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
"""Keyring key ids: ASCII letters, digits, ``._-``; at most 32 characters."""

_DEK_AAD_PREFIX = b"medtwin:dek:v1\x00"
_INDEX_DIGEST_BYTES = 16
_KIND_PATTERN = re.compile(r"[a-z][a-z0-9_]*")
_APOSTROPHES = frozenset("'`\u2018\u2019\u02bc\u02b9\u02bb\u2032\uff07")


class CryptoError(MedtwinError):
    """A blob cannot be decrypted: wrong key or aad, unknown key id, tampered or malformed.

    Messages never contain plaintext or key material.
    """


# ---------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------


def generate_key() -> str:
    """A new random 256-bit key as urlsafe base64 text (for settings and key specs)."""
    return base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def _decode_key(text: str) -> bytes | None:
    """``text`` as base64 (urlsafe or standard, padding optional), or None if it is not."""
    text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def parse_keys(spec: str) -> dict[str, bytes]:
    """``'k1:BASE64,k2:BASE64'`` -> ``{key_id: 32-byte key}``, in spec order.

    Raises :class:`ConfigurationError` naming the faulty entry (by position, and by
    id when the id is valid) without ever echoing key material.
    """
    if not spec.strip():
        raise ConfigurationError("key spec is empty: expected 'id:BASE64KEY[,id:BASE64KEY...]'")
    keys: dict[str, bytes] = {}
    positions: dict[str, int] = {}
    for position, raw in enumerate(spec.split(","), start=1):
        entry = raw.strip()
        where = f"key spec entry {position}"
        if not entry:
            raise ConfigurationError(f"{where} is empty")
        key_id, colon, text = entry.partition(":")
        key_id, text = key_id.strip(), text.strip()
        if not colon:
            raise ConfigurationError(f"{where} is not of the form 'id:BASE64KEY'")
        if not KEY_ID_PATTERN.fullmatch(key_id):
            # Not echoed: a malformed id may be a key pasted in the wrong place.
            raise ConfigurationError(
                f"{where} has an invalid key id (1-32 of A-Z a-z 0-9 . _ -, "
                "starting with a letter or digit)"
            )
        where = f"{where} ({key_id!r})"
        if key_id in positions:
            raise ConfigurationError(
                f"{where}: key id {key_id!r} already used by entry {positions[key_id]}"
            )
        if not text:
            raise ConfigurationError(f"{where} has no key")
        key = _decode_key(text)
        if key is None:
            raise ConfigurationError(f"{where}: key is not valid base64")
        if len(key) != KEY_BYTES:
            raise ConfigurationError(
                f"{where}: key is {len(key)} bytes, expected {KEY_BYTES} (256 bits)"
            )
        keys[key_id] = key
        positions[key_id] = position
    return keys


# ---------------------------------------------------------------------------
# Blob format
# ---------------------------------------------------------------------------


def _header(key_id: str) -> bytes:
    raw = key_id.encode("ascii")
    return bytes((FORMAT_VERSION, len(raw))) + raw


def _seal(aead: AESGCM, key_id: str, plaintext: bytes, aad: bytes) -> bytes:
    header = _header(key_id)
    nonce = os.urandom(NONCE_BYTES)
    return header + nonce + aead.encrypt(nonce, plaintext, header + aad)


def _split(blob: bytes) -> tuple[str, int]:
    """(key id, length of the header) of ``blob``; CryptoError when malformed."""
    if len(blob) < 2:
        raise CryptoError("malformed blob: too short")
    if blob[0] != FORMAT_VERSION:
        raise CryptoError(f"unsupported blob format version {blob[0]}")
    end = 2 + blob[1]
    if len(blob) < end + NONCE_BYTES + TAG_BYTES:
        raise CryptoError("malformed blob: too short")
    raw = blob[2:end]
    key_id = raw.decode("ascii", errors="replace")
    if raw and not KEY_ID_PATTERN.fullmatch(key_id):
        raise CryptoError("malformed blob: invalid key id")
    return key_id, end


def _open(aead: AESGCM, blob: bytes, header_end: int, aad: bytes, what: str) -> bytes:
    nonce = blob[header_end : header_end + NONCE_BYTES]
    try:
        return aead.decrypt(nonce, blob[header_end + NONCE_BYTES :], blob[:header_end] + aad)
    except InvalidTag:
        raise CryptoError(
            f"decryption under {what} failed: wrong key, wrong aad or tampered blob"
        ) from None


def _check_key(key: bytes, what: str) -> None:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise ConfigurationError(f"{what} must be {KEY_BYTES} bytes")


# ---------------------------------------------------------------------------
# Keyring: key-encryption keys
# ---------------------------------------------------------------------------


class Keyring:
    """Key-encryption keys by id; the active one encrypts, all of them decrypt."""

    def __init__(self, keys: Mapping[str, bytes], active: str) -> None:
        """ConfigurationError for a bad id or key length, or an unknown ``active``."""
        if not keys:
            raise ConfigurationError("keyring has no keys")
        self._aeads: dict[str, AESGCM] = {}
        for key_id, key in keys.items():
            if not isinstance(key_id, str) or not KEY_ID_PATTERN.fullmatch(key_id):
                raise ConfigurationError("keyring has an invalid key id")
            _check_key(key, f"keyring key {key_id!r}")
            self._aeads[key_id] = AESGCM(key)
        if active not in self._aeads:
            raise ConfigurationError(
                f"active key id {active!r} is not in the keyring ({', '.join(self._aeads)})"
            )
        self.active_id = active

    @classmethod
    def from_spec(cls, spec: str, active: str | None = None) -> Keyring:
        """A keyring from a :func:`parse_keys` spec; ``active`` defaults to the last id."""
        keys = parse_keys(spec)
        return cls(keys, list(keys)[-1] if active is None else active)

    @property
    def ids(self) -> tuple[str, ...]:
        """The key ids, in the order given."""
        return tuple(self._aeads)

    def __repr__(self) -> str:
        return f"Keyring(ids={self.ids!r}, active={self.active_id!r})"

    def encrypt(self, plaintext: bytes, *, aad: bytes) -> bytes:
        """``plaintext`` as a blob under the active key, bound to ``aad``."""
        return _seal(self._aeads[self.active_id], self.active_id, plaintext, aad)

    def encrypt_many(self, plaintexts: Sequence[bytes], aads: Sequence[bytes]) -> list[bytes]:
        """:meth:`encrypt` of each plaintext with its aad (the same blobs, each with its
        own random nonce; one call for a batch saves the per-call overhead)."""
        if len(plaintexts) != len(aads):
            raise ValueError("one aad per plaintext")
        aead, header = self._aeads[self.active_id], _header(self.active_id)
        nonces = os.urandom(NONCE_BYTES * len(plaintexts))
        blobs = []
        for i, (plaintext, aad) in enumerate(zip(plaintexts, aads, strict=True)):
            nonce = nonces[i * NONCE_BYTES : (i + 1) * NONCE_BYTES]
            blobs.append(header + nonce + aead.encrypt(nonce, plaintext, header + aad))
        return blobs

    def decrypt(self, blob: bytes, *, aad: bytes) -> bytes:
        """The plaintext of ``blob``; CryptoError on any mismatch, tampering or unknown key."""
        key_id, end = self._locate(blob)
        return _open(self._aeads[key_id], blob, end, aad, f"key {key_id!r}")

    def key_id_of(self, blob: bytes) -> str:
        """The id of the key ``blob`` was encrypted under (known to this keyring or not)."""
        key_id, _ = _split(blob)
        if not key_id:
            raise CryptoError("blob is sealed under a data key, not a keyring key")
        return key_id

    def needs_rotation(self, blob: bytes) -> bool:
        """Whether ``blob`` is under a key other than the active one."""
        return self.key_id_of(blob) != self.active_id

    def rotate(self, blob: bytes, *, aad: bytes) -> bytes:
        """``blob`` re-encrypted under the active key.

        A blob already under the active key is verified and returned unchanged.
        """
        plaintext = self.decrypt(blob, aad=aad)
        if not self.needs_rotation(blob):
            return blob
        return self.encrypt(plaintext, aad=aad)

    def _locate(self, blob: bytes) -> tuple[str, int]:
        key_id, end = _split(blob)
        if not key_id:
            raise CryptoError("blob is sealed under a data key, not a keyring key")
        if key_id not in self._aeads:
            raise CryptoError(f"unknown key id {key_id!r}: not in the keyring")
        return key_id, end


# ---------------------------------------------------------------------------
# DataKeys: per-patient data-encryption keys
# ---------------------------------------------------------------------------


class DataKeys:
    """Per-patient data-encryption keys, wrapped (encrypted) by the keyring.

    A wrapped key is bound to its patient id: it unwraps under that id only.
    """

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    @staticmethod
    def _aad(patient: str) -> bytes:
        return _DEK_AAD_PREFIX + patient.encode("utf-8")

    def new_key(self, patient: str) -> tuple[bytes, bytes]:
        """A fresh random data key for ``patient``: (plaintext key, wrapped key to store)."""
        data_key = os.urandom(KEY_BYTES)
        return data_key, self.keyring.encrypt(data_key, aad=self._aad(patient))

    def unwrap(self, patient: str, wrapped: bytes) -> bytes:
        """The plaintext data key of ``patient``; CryptoError if ``wrapped`` is not theirs."""
        data_key = self.keyring.decrypt(wrapped, aad=self._aad(patient))
        if len(data_key) != KEY_BYTES:
            raise CryptoError("wrapped data key has the wrong length")
        return data_key

    def rewrap(self, patient: str, wrapped: bytes) -> bytes:
        """``wrapped`` re-encrypted under the active keyring key (the sealed data is untouched)."""
        self.unwrap(patient, wrapped)
        return self.keyring.rotate(wrapped, aad=self._aad(patient))

    @staticmethod
    def seal(data_key: bytes, plaintext: bytes, *, aad: bytes) -> bytes:
        """``plaintext`` as a blob (empty key id) under ``data_key``, bound to ``aad``."""
        return _seal(_data_aead(data_key), "", plaintext, aad)

    @staticmethod
    def open(data_key: bytes, blob: bytes, *, aad: bytes) -> bytes:
        """The plaintext of a :meth:`seal` blob; CryptoError on any mismatch or tampering."""
        key_id, end = _split(blob)
        if key_id:
            raise CryptoError(f"blob is under keyring key {key_id!r}, not a data key")
        return _open(_data_aead(data_key), blob, end, aad, "the data key")


def _data_aead(data_key: bytes) -> AESGCM:
    if not isinstance(data_key, bytes) or len(data_key) != KEY_BYTES:
        raise CryptoError(f"data key must be {KEY_BYTES} bytes")
    return AESGCM(data_key)


# ---------------------------------------------------------------------------
# Blind indexes
# ---------------------------------------------------------------------------


def _normalize_identifier(value: str) -> str:
    value = unicodedata.normalize("NFKC", value)
    kept = (c for c in value if not c.isspace() and c != "." and unicodedata.category(c) != "Pd")
    return "".join(kept).casefold()


def _name_words(name: str) -> list[str]:
    """Normalized name tokens, in order, duplicates kept."""
    text = unicodedata.normalize("NFKD", name.casefold())
    words: list[str] = []
    current: list[str] = []
    for c in text:
        category = unicodedata.category(c)
        if category[0] == "M" or c in _APOSTROPHES:
            continue  # accents dropped; apostrophes join: "O'Neil" -> "oneil"
        if category[0] == "L":
            current.append(c)
        elif current:
            words.append("".join(current))
            current = []
    if current:
        words.append("".join(current))
    return words


class BlindIndex:
    """Keyed digests for equality search over encrypted fields.

    Digests are HMAC-SHA256 truncated to 16 bytes, as 32 hex characters, under a
    key that must be separate from the encryption keys. Each method hashes under
    its own domain (and identifiers under their kind), so equal texts of different
    kinds never share a digest. What digests leak: see the module docstring.
    """

    def __init__(self, key: bytes) -> None:
        _check_key(key, "blind index key")
        self._key = key

    def __repr__(self) -> str:
        return "BlindIndex(key=<hidden>)"

    def _digest(self, *parts: str) -> str:
        message = b"\x00".join(part.encode("utf-8") for part in parts)
        return hmac.new(self._key, message, hashlib.sha256).digest()[:_INDEX_DIGEST_BYTES].hex()

    def identifier(self, kind: str, value: str) -> str:
        """Digest of an identifier of ``kind`` (e.g. ``"ssn"``, ``"passport"``, ``"mrn"``).

        ``value`` is NFKC-normalized, stripped of whitespace, dots and dashes, and
        casefolded: ``"123-45-6789"``, ``"123 45 6789"`` and ``"123.45.6789"`` match.
        Raises :class:`InputError` for a malformed ``kind`` or a value that is empty
        after normalization.
        """
        if not _KIND_PATTERN.fullmatch(kind):
            raise InputError("must be lowercase letters, digits and _", "kind")
        normalized = _normalize_identifier(value)
        if not normalized:
            raise InputError(f"{kind} is empty after normalization", "value")
        return self._digest("id", kind, normalized)

    def name_tokens(self, name: str) -> list[str]:
        """One digest per distinct name token, in order of first appearance.

        Tokens: casefold, NFKD, drop combining marks (accents) and apostrophes,
        split on anything that is not a letter (spaces, hyphens, digits), drop
        empties. So ``"José  O'Neil"`` == ``"jose oneil"`` == ``"JOSE ONEIL"``, and
        ``"Müller-Lüdenscheidt"`` gives ``muller``, ``ludenscheidt``; ``"O Neil"``
        does not match ``"O'Neil"``. An empty list when no token remains.
        """
        seen: dict[str, None] = {}
        for word in _name_words(name):
            seen.setdefault(word)
        return [self._digest("name", word) for word in seen]

    def birth_year(self, year: int) -> str:
        """Digest of a birth year (1-9999). Enumerable by anyone holding the key."""
        if isinstance(year, bool) or not isinstance(year, int) or not 1 <= year <= 9999:
            raise InputError("must be an integer year from 1 to 9999", "birth_year")
        return self._digest("birth_year", f"{year:04d}")
