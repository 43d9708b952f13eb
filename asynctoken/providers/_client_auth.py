"""How a client proves who it is at the token endpoint (RFC 6749 §2.3, RFC 7523, RFC 8705).

One class per method; each adds its part to a token request being built. JWT assertions are made
fresh for every request (new ``jti``, ``iat``, ``exp``): a server consumes an assertion's ``jti``
even when it rejects the request for another reason (a DPoP nonce), so a retry needs a new one.
"""

from __future__ import annotations

import math
import ssl
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import quote_plus

from .._errors import ConfigurationError
from .._jose import SigningKey, import_private_key, new_jti, require_jose
from ._common import basic_authorization

__all__ = [
    "ASSERTION_TYPE",
    "AUTH_METHODS",
    "ClientAuth",
    "JWTAssertion",
    "MutualTLS",
    "SecretBasic",
    "SecretPost",
    "check_assertion_lifetime",
    "load_client_cert",
]

ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
AUTH_METHODS: Final = (
    "client_secret_post",
    "client_secret_basic",
    "client_secret_jwt",
    "private_key_jwt",
    "tls_client_auth",
    "self_signed_tls_client_auth",
)


class ClientAuth(Protocol):
    """Adds client authentication to a token request's form and headers."""

    def apply(self, form: dict[str, str], headers: dict[str, str]) -> tuple[str, ...]:
        """Add this method's fields; return the secret values added (redacted from errors)."""
        ...


class SecretPost:
    """``client_secret_post``: ``client_id`` and ``client_secret`` in the body (a public
    client with an empty secret sends only ``client_id``)."""

    __slots__ = ("_client_id", "_secret")

    def __init__(self, client_id: str, secret: str) -> None:
        self._client_id = client_id
        self._secret = secret

    def apply(self, form: dict[str, str], headers: dict[str, str]) -> tuple[str, ...]:
        form["client_id"] = self._client_id
        if self._secret:
            form["client_secret"] = self._secret
        return ()


class SecretBasic:
    """``client_secret_basic``: ``Authorization: Basic``, id and secret form-urlencoded first
    (RFC 6749 §2.3.1)."""

    __slots__ = ("_authorization",)

    def __init__(self, client_id: str, secret: str) -> None:
        self._authorization = basic_authorization(
            quote_plus(client_id, safe=""), quote_plus(secret, safe="")
        )

    def apply(self, form: dict[str, str], headers: dict[str, str]) -> tuple[str, ...]:
        headers["Authorization"] = self._authorization
        return (self._authorization,)


def check_assertion_lifetime(value: object) -> float:
    """Validate ``assertion_lifetime``: seconds, more than 0 and at most 600."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 < value <= 600
    ):
        raise ConfigurationError("assertion_lifetime must be a number of seconds in (0, 600]")
    return float(value)


class JWTAssertion:
    """``private_key_jwt`` / ``client_secret_jwt``: a signed JWT in ``client_assertion``.

    Claims (RFC 7523 §3): ``iss`` = ``sub`` = the client id, ``aud`` = ``audience`` (the token
    endpoint, or the issuer when the server wants that), ``iat``, ``exp`` = ``iat`` +
    ``lifetime``, and a random ``jti``: a new assertion per request.
    """

    __slots__ = ("_audience", "_client_id", "_key", "_lifetime")

    def __init__(self, client_id: str, key: SigningKey, audience: str, lifetime: float) -> None:
        self._client_id = client_id
        self._key = key
        self._audience = audience
        self._lifetime = lifetime

    @classmethod
    def private_key(
        cls,
        client_id: str,
        private_key: object,
        *,
        key_id: str | None,
        signing_alg: str,
        audience: str,
        lifetime: float,
    ) -> JWTAssertion:
        """``private_key_jwt`` with ``private_key`` (PEM, a ``cryptography`` key or a JWK)."""
        require_jose("private_key_jwt")
        key = import_private_key(private_key, signing_alg)
        return cls(client_id, SigningKey(key, signing_alg, key_id), audience, lifetime)

    @classmethod
    def client_secret(
        cls, client_id: str, secret: str, *, audience: str, lifetime: float
    ) -> JWTAssertion:
        """``client_secret_jwt``: HS256 with the client secret as the key."""
        require_jose("client_secret_jwt")
        from joserfc.jwk import OctKey

        key = OctKey.import_key(secret.encode())
        return cls(client_id, SigningKey(key, "HS256", None), audience, lifetime)

    @property
    def alg(self) -> str:
        return self._key.alg

    def assertion(self, now: float | None = None) -> str:
        """A new client assertion."""
        issued = int(time.time() if now is None else now)
        claims: dict[str, Any] = {
            "iss": self._client_id,
            "sub": self._client_id,
            "aud": self._audience,
            "jti": new_jti(),
            "iat": issued,
            "exp": issued + math.ceil(self._lifetime),
        }
        return self._key.sign(claims, typ="JWT")

    def apply(self, form: dict[str, str], headers: dict[str, str]) -> tuple[str, ...]:
        assertion = self.assertion()
        form["client_id"] = self._client_id
        form["client_assertion_type"] = ASSERTION_TYPE
        form["client_assertion"] = assertion
        return (assertion,)


def load_client_cert(client_cert: object) -> ssl.SSLContext:
    """An SSL context that presents the client certificate.

    Args:
        client_cert: ``(cert_path, key_path)`` (PEM files; the certificate file may hold the
            chain) — the server is then verified against the system's trust store, as
            :func:`ssl.create_default_context` does — or a ready ``ssl.SSLContext``, used as is.

    Raises:
        ConfigurationError: not a pair of paths nor a context, or the files cannot be loaded
            (the message names the files, never their content).
    """
    if isinstance(client_cert, ssl.SSLContext):
        return client_cert
    if (
        not isinstance(client_cert, tuple)
        or len(client_cert) != 2
        or not all(isinstance(p, (str, Path)) for p in client_cert)
    ):
        raise ConfigurationError(
            "client_cert must be a (cert_path, key_path) tuple or an ssl.SSLContext"
        )
    cert_path, key_path = (str(p) for p in client_cert)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    try:
        context.load_cert_chain(cert_path, key_path)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            f"client_cert: cannot load {cert_path!r} / {key_path!r} ({type(exc).__name__}: "
            f"{getattr(exc, 'strerror', None) or getattr(exc, 'reason', None) or 'bad PEM'})"
        ) from None
    return context


class MutualTLS:
    """``tls_client_auth`` / ``self_signed_tls_client_auth`` (RFC 8705): the client
    certificate authenticates; the body carries ``client_id`` only."""

    __slots__ = ("_client_id", "context")

    def __init__(self, client_id: str, context: ssl.SSLContext) -> None:
        self._client_id = client_id
        self.context = context

    def apply(self, form: dict[str, str], headers: dict[str, str]) -> tuple[str, ...]:
        form["client_id"] = self._client_id
        return ()


def describe(auth: object) -> Mapping[str, Any]:
    """What ``repr`` may show of a client authentication (never a key or secret)."""
    if isinstance(auth, JWTAssertion):
        return {"signing_alg": auth.alg}
    return {}
