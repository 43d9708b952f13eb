"""JOSE for asynctoken: signing keys and compact JWTs, on ``joserfc`` and ``cryptography``.

Only imported when a feature that signs is configured (``private_key_jwt``,
``client_secret_jwt``, DPoP); both libraries come with the optional extra ``asynctoken[jwt]``.

Why ``joserfc``: besides signing (which PyJWT does as well) DPoP needs JWK export and import of
private keys of every type, and the RFC 7638 thumbprint that binds a token to a key; joserfc
implements those RFCs itself (typed, on ``cryptography``), so nothing here is hand-written beyond
the claims.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from ._errors import ConfigurationError

if TYPE_CHECKING:
    from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey

    AsymmetricKey = RSAKey | ECKey | OKPKey

__all__ = [
    "ASYMMETRIC_ALGS",
    "SigningKey",
    "import_private_key",
    "new_jti",
    "require_jose",
    "sign_jwt",
]

#: The JWS algorithms asynctoken signs with, by the key type they need.
ASYMMETRIC_ALGS: Final = {"RS256": "RSA", "PS256": "RSA", "ES256": "EC", "EdDSA": "OKP"}
_INSTALL_HINT: Final = "install the optional extra: pip install 'asynctoken[jwt]'"


def require_jose(feature: str) -> None:
    """Import joserfc and cryptography, or raise a :class:`ConfigurationError` naming the extra.

    Args:
        feature: what needs them, for the message (``"private_key_jwt"``, ``"DPoP"``).
    """
    try:
        import cryptography  # noqa: F401
        import joserfc  # noqa: F401
    except ImportError:
        raise ConfigurationError(
            f"{feature} needs joserfc and cryptography: {_INSTALL_HINT}"
        ) from None


def new_jti() -> str:
    """A unique JWT id: 128 random bits, base64url."""
    return secrets.token_urlsafe(16)


def _registry() -> Any:
    from joserfc.jws import JWSRegistry

    class _Registry(JWSRegistry):
        """Exactly the algorithms asynctoken chose (``EdDSA`` is only ever an Ed25519 key here,
        which is what RFC 9864's deprecation of the polymorphic name is about). A DPoP header
        carries the public key: an RSA one is longer than joserfc's default header limit."""

        max_header_length = 4096

        def get_alg(self, name: str) -> Any:
            if self.allowed is None or name not in self.allowed:
                raise ValueError(f"algorithm {name!r} is not allowed")
            return self.algorithms[name]

    return _Registry


_REGISTRIES: dict[str, Any] = {}


def sign_jwt(header: Mapping[str, Any], claims: Mapping[str, Any], key: Any, alg: str) -> str:
    """A compact JWS of ``claims`` (JSON) with ``header``, signed with ``key`` (a joserfc key)."""
    from joserfc import jws

    registry = _REGISTRIES.get(alg)
    if registry is None:
        registry = _REGISTRIES[alg] = _registry()(algorithms=[alg])
    payload = json.dumps(dict(claims), separators=(",", ":"))
    return jws.serialize_compact({**header, "alg": alg}, payload, key, registry=registry)


def _key_type(key: Any) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if isinstance(key, rsa.RSAPrivateKey):
        return "RSA"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "EC"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "OKP"
    raise ConfigurationError(
        "the private key must be an RSA, EC (P-256) or Ed25519 private key (PEM or "
        "cryptography key object)"
    )


def import_private_key(key: object, alg: str, what: str = "private_key") -> AsymmetricKey:
    """Load a private key for ``alg`` from PEM text/bytes, a ``cryptography`` key or a JWK.

    Args:
        key: PEM (``str`` or ``bytes``, unencrypted PKCS#8 or traditional), a ``cryptography``
            private key object, or a private JWK (a mapping, or its JSON text).
        alg: ``RS256``, ``PS256``, ``ES256`` or ``EdDSA``.
        what: the argument's name, for messages.

    Raises:
        ConfigurationError: unreadable key, a public key, or a key that does not fit ``alg``.
            The message never quotes the key.
    """
    from cryptography.hazmat.primitives import serialization
    from joserfc.jwk import ECKey, OKPKey, RSAKey

    if alg not in ASYMMETRIC_ALGS:
        raise ConfigurationError(f"signing_alg must be one of {', '.join(ASYMMETRIC_ALGS)}")
    native: Any
    text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
    if isinstance(text, str) and text.lstrip().startswith("{"):
        try:
            key = json.loads(text)
        except ValueError:
            raise ConfigurationError(f"{what} is not valid JWK JSON") from None
    if isinstance(key, Mapping):
        native = _from_jwk(key, what)
    elif isinstance(key, (str, bytes)):
        data = key.encode() if isinstance(key, str) else key
        try:
            native = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            # TypeError: an encrypted key without a password. The message of either may quote
            # parts of the input: not repeated here.
            raise ConfigurationError(
                f"{what} is not an unencrypted PEM private key (RSA, EC P-256 or Ed25519)"
            ) from None
    else:
        native = key
    key_type = _key_type(native)
    if key_type != ASYMMETRIC_ALGS[alg]:
        raise ConfigurationError(
            f"{what} is an {key_type} key, but {alg} needs an {ASYMMETRIC_ALGS[alg]} key"
        )
    imported: AsymmetricKey
    if key_type == "EC":
        if native.curve.name != "secp256r1":
            raise ConfigurationError(f"{what}: ES256 needs a P-256 key")
        imported = ECKey.import_key(native)
    elif key_type == "OKP":
        imported = OKPKey.import_key(native)
    else:
        if native.key_size < 2048:
            raise ConfigurationError(f"{what}: RSA keys must have at least 2048 bits")
        imported = RSAKey.import_key(native)
    return imported


def _from_jwk(jwk: Mapping[Any, Any], what: str) -> Any:
    from joserfc.jwk import JWKRegistry

    try:
        imported = JWKRegistry.import_key(dict(jwk))
        if not imported.is_private:
            raise ValueError("public")
        return imported.private_key
    except Exception:  # joserfc raises several types, and none may be quoted
        raise ConfigurationError(
            f"{what} is not a private JWK (RSA, EC P-256 or Ed25519)"
        ) from None


def generate_key(alg: str) -> AsymmetricKey:
    """A new private key for ``alg`` (``ES256``: P-256; ``EdDSA``: Ed25519; RSA: 2048 bits)."""
    from joserfc.jwk import ECKey, OKPKey, RSAKey

    key: AsymmetricKey
    if alg == "ES256":
        key = ECKey.generate_key("P-256")
    elif alg == "EdDSA":
        key = OKPKey.generate_key("Ed25519")
    elif alg in ("RS256", "PS256"):
        key = RSAKey.generate_key(2048)
    else:
        raise ConfigurationError(f"DPoP alg must be one of {', '.join(ASYMMETRIC_ALGS)}")
    return key


class SigningKey:
    """A private key with the algorithm and key id it signs with; ``repr`` shows no key material.

    Args:
        key: a joserfc key (asymmetric, or an ``OctKey`` for HS256).
        alg: the JWS algorithm.
        key_id: the ``kid`` header to send, or ``None``.
    """

    __slots__ = ("_key", "alg", "key_id")

    def __init__(self, key: AsymmetricKey | OctKey, alg: str, key_id: str | None) -> None:
        self._key = key
        self.alg = alg
        self.key_id = key_id

    def sign(self, claims: Mapping[str, Any], **header: Any) -> str:
        """A compact JWT of ``claims``; ``header`` adds header parameters (``typ``, ``jwk``)."""
        if self.key_id is not None:
            header.setdefault("kid", self.key_id)
        return sign_jwt(header, claims, self._key, self.alg)

    def __repr__(self) -> str:
        return f"SigningKey(alg={self.alg!r}, key_id={self.key_id!r})"
