"""Encryption at rest: :class:`AESGCMCipher` seals every record a store writes.

Needs the ``cryptography`` package: ``pip install 'asynctoken[crypto]'``. Every persisting store
(:class:`~asynctoken.FileStore`, :class:`~asynctoken.SQLiteStore`, :class:`~asynctoken.RedisStore`)
takes ``cipher=``::

    from asynctoken import FileStore
    from asynctoken.crypto import AESGCMCipher

    cipher = AESGCMCipher.from_env()  # ASYNCTOKEN_KEYS="2026-12:<base64>,2026-06:<base64>"
    store = FileStore("tokens.json", cipher=cipher)

Each record (every field of the token, whatever fields a later version adds) is encrypted as one
piece with AES-256-GCM under the *primary* key, with a random 96-bit nonce; the record keeps the
id of that key in clear, and is bound to its credential key through the associated data, so a
record copied under another credential's key does not open. Any listed key opens a record, so
rotating keys is: make the new key the primary, keep the old one listed, run
``asynctoken rekey`` (it re-seals every record with the primary), then drop the old key.

Keys in the environment (:meth:`AESGCMCipher.from_env`, variable ``ASYNCTOKEN_KEYS`` by
default): entries ``KEY_ID:BASE64`` separated by commas or whitespace; the **first entry is the
primary**. ``BASE64`` is the standard or URL-safe base64 of exactly 32 random bytes (padding
optional); a key id is 1 to 64 letters, digits, ``.``, ``_`` or ``-`` (a date such as ``2026-12``
works well). To make an entry::

    python -c "from asynctoken.crypto import *; print(format_key('2026-12', generate_key()))"
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
from collections.abc import Mapping

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "asynctoken.crypto needs the cryptography package: pip install 'asynctoken[crypto]'"
    ) from exc

from ._errors import ConfigurationError

__all__ = ["ENV_KEYS", "AESGCMCipher", "format_key", "generate_key", "parse_keys"]

#: The environment variable :meth:`AESGCMCipher.from_env` reads by default.
ENV_KEYS = "ASYNCTOKEN_KEYS"

KEY_BYTES = 32
_NONCE_BYTES = 12
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SEPARATORS = re.compile(r"[,\s]+")


def generate_key() -> bytes:
    """Return a new random 32-byte AES-256 key (from :mod:`secrets`)."""
    return secrets.token_bytes(KEY_BYTES)


def format_key(key_id: str, key: bytes) -> str:
    """Return the ``KEY_ID:BASE64`` entry for ``key``, as :func:`parse_keys` reads it.

    Raises:
        ConfigurationError: a bad key id, or a key that is not 32 bytes.
    """
    _check_key(key_id, key)
    return f"{key_id}:{base64.b64encode(key).decode('ascii')}"


def parse_keys(text: str) -> tuple[dict[str, bytes], str]:
    """Read ``KEY_ID:BASE64`` entries (comma or whitespace separated); return ``(keys, primary)``.

    The first entry is the primary key. Error messages name the entry by position and key id,
    never its key material.

    Raises:
        ConfigurationError: no entry, a malformed entry, a bad key id, a key that is not base64 of
            32 bytes, or a key id listed twice.
    """
    keys: dict[str, bytes] = {}
    primary: str | None = None
    entries = [entry for entry in _SEPARATORS.split(text.strip()) if entry]
    if not entries:
        raise ConfigurationError("no encryption keys given: expected KEY_ID:BASE64 entries")
    for position, entry in enumerate(entries, 1):
        key_id, colon, encoded = entry.partition(":")
        if not colon:
            raise ConfigurationError(f"key entry {position} is not of the form KEY_ID:BASE64")
        if not _KEY_ID.fullmatch(key_id):
            raise ConfigurationError(
                f"key entry {position}: the key id must be 1 to 64 letters, digits, '.', '_' or '-'"
            )
        if key_id in keys:
            raise ConfigurationError(f"key id {key_id!r} is listed twice")
        keys[key_id] = _decode_key(key_id, encoded)
        primary = primary or key_id
    assert primary is not None
    return keys, primary


class AESGCMCipher:
    """AES-256-GCM with a set of keys by id: seals with the primary, opens with any.

    Args:
        keys: key id → 32-byte key. Key ids are 1 to 64 letters, digits, ``.``, ``_`` or ``-``.
        primary: the id of the key that seals; must be in ``keys``.

    Raises:
        ConfigurationError: no keys, a bad key id, a key that is not 32 bytes, or a primary that
            is not listed. Messages never contain key material.
    """

    __slots__ = ("_aeads", "_primary")

    #: The algorithm name recorded in sealed records.
    algorithm = "A256GCM"

    def __init__(self, keys: Mapping[str, bytes], *, primary: str) -> None:
        if not keys:
            raise ConfigurationError("AESGCMCipher needs at least one key")
        for key_id, key in keys.items():
            _check_key(key_id, key)
        if primary not in keys:
            raise ConfigurationError(f"the primary key id {primary!r} is not among the keys")
        self._aeads = {key_id: AESGCM(bytes(key)) for key_id, key in keys.items()}
        self._primary = primary

    @classmethod
    def from_env(
        cls, variable: str = ENV_KEYS, *, environ: Mapping[str, str] | None = None
    ) -> AESGCMCipher:
        """Build a cipher from the ``KEY_ID:BASE64`` entries of an environment variable.

        The first entry is the primary (see the module documentation for the format).

        Raises:
            ConfigurationError: the variable is unset or empty, or an entry is malformed.
        """
        text = (os.environ if environ is None else environ).get(variable, "")
        if not text.strip():
            raise ConfigurationError(
                f"{variable} is not set: expected KEY_ID:BASE64 entries, the primary first "
                f"(make one with asynctoken.crypto.format_key(KEY_ID, generate_key()))"
            )
        keys, primary = parse_keys(text)
        return cls(keys, primary=primary)

    @property
    def primary(self) -> str:
        """The id of the key that seals."""
        return self._primary

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every key id that opens records, the primary first."""
        return (self._primary, *(k for k in self._aeads if k != self._primary))

    def encrypt(self, plaintext: bytes, associated_data: bytes) -> tuple[str, bytes]:
        """Seal ``plaintext`` with the primary key; return ``(key id, nonce + ciphertext)``.

        ``associated_data`` is authenticated, not encrypted: the same bytes are needed to open.
        """
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aeads[self._primary].encrypt(nonce, plaintext, associated_data)
        return self._primary, nonce + sealed

    def decrypt(self, key_id: str, data: bytes, associated_data: bytes) -> bytes:
        """Open what :meth:`encrypt` returned.

        Raises:
            KeyError: ``key_id`` is not one of this cipher's keys.
            ValueError: the wrong key, altered data, or other associated data (for instance a
                record copied under another credential key).
        """
        aead = self._aeads.get(key_id)
        if aead is None:
            raise KeyError(key_id)
        if len(data) < _NONCE_BYTES + 16:
            raise ValueError("sealed data is too short")
        try:
            return aead.decrypt(data[:_NONCE_BYTES], data[_NONCE_BYTES:], associated_data)
        except InvalidTag:
            raise ValueError("authentication failed") from None

    def __repr__(self) -> str:
        return f"AESGCMCipher(primary={self._primary!r}, key_ids={list(self.key_ids)!r})"


def _check_key(key_id: object, key: object) -> None:
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        raise ConfigurationError(
            "a key id must be 1 to 64 letters, digits, '.', '_' or '-'"
            + (f", not {key_id!r}" if isinstance(key_id, str) and len(key_id) <= 80 else "")
        )
    if not isinstance(key, (bytes, bytearray, memoryview)) or len(key) != KEY_BYTES:
        raise ConfigurationError(f"key {key_id!r} must be {KEY_BYTES} bytes (AES-256)")


def _decode_key(key_id: str, encoded: str) -> bytes:
    text = encoded.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError(f"key {key_id!r} is not valid base64") from None
    if len(key) != KEY_BYTES:
        raise ConfigurationError(
            f"key {key_id!r} decodes to {len(key)} bytes, not {KEY_BYTES} (AES-256)"
        )
    return key
