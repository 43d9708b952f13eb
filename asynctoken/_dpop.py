"""DPoP (RFC 9449): the proof-of-possession key of a credential, its proofs, and server nonces.

A token bound with DPoP is only accepted together with a fresh proof, a JWT signed with the key
the token was bound to (its RFC 7638 thumbprint is the token's ``cnf.jkt``). The key travels with
the credential: :attr:`Token.dpop_key` holds it as a private JWK, so every process that reads the
credential from the store signs with the same key.

Needs the optional extra ``asynctoken[jwt]`` (joserfc and cryptography).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from yarl import URL

from ._errors import ConfigurationError
from ._jose import (
    ASYMMETRIC_ALGS,
    SigningKey,
    generate_key,
    import_private_key,
    new_jti,
    require_jose,
)

if TYPE_CHECKING:
    from ._jose import AsymmetricKey

__all__ = ["DPoPKey", "DPoPNonces", "access_token_hash", "htu"]

_MAX_NONCES: Final = 256
_TYP: Final = "dpop+jwt"


def htu(url: str | URL) -> str:
    """The ``htu`` claim for ``url``: the URL without query and fragment (RFC 9449 §4.2)."""
    parsed = URL(url) if isinstance(url, str) else url
    return str(parsed.with_query(None).with_fragment(None))


def access_token_hash(access_token: str) -> str:
    """The ``ath`` claim: base64url of the SHA-256 of the access token (RFC 9449 §4.2)."""
    digest = hashlib.sha256(access_token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class DPoPKey:
    """A DPoP key pair: signs proofs, and is saved with the credential as a private JWK.

    Create one with :meth:`generate`, or from a key you keep (PEM, a ``cryptography`` key
    object, or a private JWK). ``repr`` shows the algorithm and the public thumbprint only.

    Args:
        key: the private key: PEM text/bytes, a ``cryptography`` private key, or a private JWK
            (mapping or JSON text).
        alg: ``"ES256"`` (P-256, the default), ``"EdDSA"`` (Ed25519), ``"PS256"`` or
            ``"RS256"`` (RSA).

    Raises:
        ConfigurationError: the key is unreadable or does not fit ``alg``, or the ``jwt`` extra
            is not installed.
    """

    __slots__ = ("_public_jwk", "_signer", "_thumbprint", "alg", "jwk")

    def __init__(self, key: object, alg: str = "ES256") -> None:
        require_jose("DPoP")
        self._init(import_private_key(key, alg, "dpop_key"), alg)

    def _init(self, key: AsymmetricKey, alg: str) -> None:
        self.alg = alg
        self._signer = SigningKey(key, alg, None)
        self._public_jwk: dict[str, Any] = dict(key.as_dict(private=False))
        for name in ("kid", "use", "key_ops", "alg"):
            self._public_jwk.pop(name, None)
        self._thumbprint: str = key.thumbprint()
        private = dict(key.as_dict(private=True))
        private.pop("kid", None)
        private["alg"] = alg
        #: The private JWK as compact JSON text: what :attr:`Token.dpop_key` stores. Secret.
        self.jwk: str = json.dumps(private, separators=(",", ":"), sort_keys=True)

    @classmethod
    def generate(cls, alg: str = "ES256") -> DPoPKey:
        """A new random key pair for ``alg``."""
        require_jose("DPoP")
        if alg not in ASYMMETRIC_ALGS:
            raise ConfigurationError(f"dpop_alg must be one of {', '.join(ASYMMETRIC_ALGS)}")
        self = cls.__new__(cls)
        self._init(generate_key(alg), alg)
        return self

    @classmethod
    def from_jwk(cls, jwk: str | Mapping[str, Any]) -> DPoPKey:
        """The key saved in :attr:`jwk` (its ``alg`` member says the algorithm).

        Raises:
            ConfigurationError: not a private JWK this class wrote.
        """
        try:
            data = json.loads(jwk) if isinstance(jwk, str) else dict(jwk)
        except ValueError:
            raise ConfigurationError("dpop_key is not valid JWK JSON") from None
        alg = data.get("alg") if isinstance(data, dict) else None
        if not isinstance(alg, str) or alg not in ASYMMETRIC_ALGS:
            raise ConfigurationError("dpop_key: the JWK has no supported 'alg' member")
        return cls(data, alg)

    @property
    def thumbprint(self) -> str:
        """The RFC 7638 SHA-256 thumbprint of the public key: the ``jkt`` tokens are bound to."""
        return self._thumbprint

    @property
    def public_jwk(self) -> dict[str, Any]:
        """The public key as a JWK (what each proof carries in its header)."""
        return dict(self._public_jwk)

    def proof(
        self,
        method: str,
        url: str | URL,
        *,
        access_token: str | None = None,
        nonce: str | None = None,
        now: float | None = None,
    ) -> str:
        """A new DPoP proof for one HTTP request.

        Args:
            method: the request method (``htm``).
            url: the request URL; query and fragment are dropped (``htu``).
            access_token: the access token sent with the request, hashed into ``ath``.
            nonce: a server-provided nonce to include.
            now: the ``iat`` in unix seconds (default: the system clock).

        Returns:
            The compact JWT for the ``DPoP`` header; a new ``jti`` every call.
        """
        claims: dict[str, Any] = {
            "jti": new_jti(),
            "htm": method.upper(),
            "htu": htu(url),
            "iat": int(time.time() if now is None else now),
        }
        if access_token is not None:
            claims["ath"] = access_token_hash(access_token)
        if nonce is not None:
            claims["nonce"] = nonce
        return self._signer.sign(claims, typ=_TYP, jwk=self._public_jwk)

    def __repr__(self) -> str:
        return f"DPoPKey(alg={self.alg!r}, thumbprint={self._thumbprint!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DPoPKey):
            return NotImplemented
        return self._thumbprint == other._thumbprint

    def __hash__(self) -> int:
        return hash(self._thumbprint)


class DPoPNonces:
    """The last ``DPoP-Nonce`` each server gave, by origin (scheme, host, port); bounded.

    Servers hand out a nonce with an error (``use_dpop_nonce``) or with any answer, and expect
    it in the next proofs; remembering it per server spares one rejected request per call.
    """

    __slots__ = ("_nonces",)

    def __init__(self) -> None:
        self._nonces: OrderedDict[str, str] = OrderedDict()

    @staticmethod
    def _origin(url: str | URL) -> str:
        parsed = URL(url) if isinstance(url, str) else url
        return f"{parsed.scheme}://{parsed.raw_host}:{parsed.port}"

    def get(self, url: str | URL) -> str | None:
        """The nonce to send to ``url``'s server, if it gave one."""
        return self._nonces.get(self._origin(url))

    def update(self, url: str | URL, nonce: str | None) -> bool:
        """Remember ``nonce`` (a ``DPoP-Nonce`` header value) for ``url``'s server.

        Returns:
            Whether it is a new nonce for that server (``None`` or the same one: ``False``).
        """
        if not nonce or not all("\x21" <= c <= "\x7e" for c in nonce):
            return False
        origin = self._origin(url)
        if self._nonces.get(origin) == nonce:
            return False
        self._nonces[origin] = nonce
        self._nonces.move_to_end(origin)
        while len(self._nonces) > _MAX_NONCES:
            self._nonces.popitem(last=False)
        return True

    def __repr__(self) -> str:
        return f"DPoPNonces(servers={len(self._nonces)})"
