"""What a store keeps for one credential: a plain JSON record, or one sealed by a cipher.

A plain record is a JSON object, the fields of :meth:`Token.to_dict` (plus a store's own header
fields, such as RedisStore's ``"v"``). A sealed record is a JSON object too::

    {"v": 1, "sealed": "A256GCM", "kid": "2026-12", "data": "<base64 of nonce + ciphertext>"}

whose ciphertext is the whole plain record as JSON, so every field of the token is sealed,
including fields added by later versions. The associated data binds it to its credential key:
``b"asynctoken.record.v1\\0" + key`` (UTF-8). Only the algorithm and the key id are in clear.
Readers accept both kinds; writers of a store with a cipher always seal.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .._errors import SealedRecordError, StoreError
from .._token import Token

__all__ = ["Cipher", "RecordCodec", "Resealed", "associated_data", "is_sealed"]

SEALED_VERSION = 1
_AD_PREFIX = b"asynctoken.record.v1\0"


@runtime_checkable
class Cipher(Protocol):
    """What a store needs from a cipher; :class:`asynctoken.crypto.AESGCMCipher` is one."""

    @property
    def algorithm(self) -> str:
        """The name recorded in sealed records (``"A256GCM"``)."""
        ...

    @property
    def primary(self) -> str:
        """The id of the key that seals."""
        ...

    def encrypt(self, plaintext: bytes, associated_data: bytes) -> tuple[str, bytes]:
        """Seal with the primary key; return ``(key id, sealed bytes)``."""
        ...

    def decrypt(self, key_id: str, data: bytes, associated_data: bytes) -> bytes:
        """Open; raise :class:`KeyError` for an unknown key id, :class:`ValueError` otherwise."""
        ...


@dataclass(frozen=True, slots=True)
class Resealed:
    """What a store's ``reseal(keys)`` did.

    Attributes:
        rewritten: records sealed anew with the primary key (plain or older-key records).
        unchanged: records already sealed with the primary key, and keys no longer stored.
        errors: one :class:`~asynctoken.StoreError` per record that could not be read or opened
            (each names its key; such records are left as they were).
    """

    rewritten: int = 0
    unchanged: int = 0
    errors: tuple[StoreError, ...] = ()


def is_sealed(record: object) -> bool:
    """Whether a decoded record is a sealed one."""
    return isinstance(record, dict) and "sealed" in record


class RecordCodec:
    """Turns tokens into the records a store keeps, and back; seals when given a cipher.

    Args:
        cipher: seals every record written, and opens sealed records; ``None`` writes plain
            records (and refuses to read sealed ones, with :class:`SealedRecordError`).
        location: the store's path or password-free URL, for errors.
        header: fields every plain record carries besides the token's (RedisStore's ``"v"``).
    """

    __slots__ = ("_header", "cipher", "location")

    def __init__(
        self, cipher: Cipher | None, location: str, header: Mapping[str, Any] | None = None
    ) -> None:
        if cipher is not None and not isinstance(cipher, Cipher):
            raise TypeError("cipher must provide algorithm, primary, encrypt() and decrypt()")
        self.cipher = cipher
        self.location = location
        self._header = dict(header or {})

    def encode(self, key: str, token: Token) -> dict[str, Any]:
        """The record to store for ``token`` under ``key``.

        Raises:
            StoreError: the token holds something JSON cannot represent (in ``extra``).
        """
        plain = {**self._header, **token.to_dict()}
        text = self._dumps(key, plain)
        if self.cipher is None:
            return plain
        key_id, data = self.cipher.encrypt(text.encode("ascii"), associated_data(key))
        return {
            "v": SEALED_VERSION,
            "sealed": self.cipher.algorithm,
            "kid": key_id,
            "data": base64.b64encode(data).decode("ascii"),
        }

    def dumps(self, key: str, token: Token) -> str:
        """:meth:`encode` as compact JSON text (ASCII)."""
        return json.dumps(self.encode(key, token), separators=(",", ":"), allow_nan=False)

    def decode(self, key: str, record: Any, *, where: str) -> Token:
        """The token in ``record`` (plain or sealed), stored under ``key``.

        ``where`` names the record in messages (``"record 'k' in /path"``).

        Raises:
            SealedRecordError: a sealed record that cannot be opened.
            StoreError: not a valid token record; the message names the field, never a value.
        """
        if is_sealed(record):
            record = self._open(key, record, where)
        try:
            return Token.from_dict(record)
        except ValueError as exc:
            raise StoreError(f"{where}: {exc}", location=self.location, key=key) from None

    def is_current(self, record: object) -> bool:
        """Whether ``record`` is as this codec would write it now (sealed with the primary key,
        or plain without a cipher), so that re-sealing it would change nothing."""
        if not isinstance(record, dict) or not is_sealed(record):
            return self.cipher is None
        return self.cipher is not None and _key_id(record) == self.cipher.primary

    def _open(self, key: str, record: dict[str, Any], where: str) -> dict[str, Any]:
        key_id = _key_id(record)
        shown = "an unreadable key id" if key_id is None else f"key id {key_id!r}"
        cipher = self.cipher
        if cipher is None:
            raise self._sealed_error(
                key,
                key_id,
                f"{where} is sealed ({shown}) but this store has no cipher: open it with "
                f"cipher=AESGCMCipher(...) holding that key",
            )
        if record.get("sealed") != cipher.algorithm or key_id is None:
            algorithm = record.get("sealed")
            named = repr(algorithm)[:40] if isinstance(algorithm, str) else "an unknown algorithm"
            raise self._sealed_error(
                key, key_id, f"{where} is sealed with {named} ({shown}), not {cipher.algorithm}"
            )
        try:
            data = base64.b64decode(str(record.get("data", "")), validate=True)
            plaintext = cipher.decrypt(key_id, data, associated_data(key))
        except KeyError:
            raise self._sealed_error(
                key,
                key_id,
                f"{where} is sealed with {shown}, which this store's cipher does not hold",
            ) from None
        except (ValueError, binascii.Error):
            raise self._sealed_error(
                key,
                key_id,
                f"{where} cannot be opened with {shown}: a different key of that id, a record "
                f"altered, or copied from another credential key",
            ) from None
        try:
            opened = json.loads(plaintext)
        except (UnicodeDecodeError, json.JSONDecodeError):
            opened = None
        if not isinstance(opened, dict):
            raise self._sealed_error(key, key_id, f"{where} opened to something not a record")
        return opened

    def _sealed_error(self, key: str, key_id: str | None, message: str) -> SealedRecordError:
        return SealedRecordError(message, location=self.location, key=key, key_id=key_id)

    def _dumps(self, key: str, plain: dict[str, Any]) -> str:
        try:
            # ASCII with \\u escapes: any str (an unpaired surrogate too) round-trips.
            return json.dumps(plain, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            message = (
                f"token cannot be stored in {self.location}: {type(exc).__name__} while "
                f"encoding JSON"
            )
            raise StoreError(message, location=self.location, key=key) from None


def associated_data(key: str) -> bytes:
    """What binds a sealed record to its credential key."""
    return _AD_PREFIX + key.encode("utf-8", "surrogatepass")


def _key_id(record: Mapping[str, Any]) -> str | None:
    key_id = record.get("kid")
    return key_id if isinstance(key_id, str) and 0 < len(key_id) <= 64 else None
