"""A standard RFC 6749 token endpoint: refresh, client-credentials and password grants, any
client authentication (shared secret, signed JWT, mutual TLS), optionally DPoP-bound tokens."""

from __future__ import annotations

import dataclasses
import logging
import ssl
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import aiohttp

from .._errors import ConfigurationError, TokenEndpointError
from .._token import Token
from ._client_auth import (
    AUTH_METHODS,
    ClientAuth,
    JWTAssertion,
    MutualTLS,
    SecretBasic,
    SecretPost,
    check_assertion_lifetime,
    load_client_cert,
)
from ._common import BaseTokenProvider
from ._http import (
    DEFAULT_MAX_RESPONSE_BYTES,
    TokenRequest,
    check_optional_str,
    send_token_request,
)

if TYPE_CHECKING:
    from .._dpop import DPoPKey, DPoPNonces

__all__ = ["OAuth2Provider"]

logger = logging.getLogger("asynctoken.providers")

AuthMethod = Literal[
    "client_secret_post",
    "client_secret_basic",
    "client_secret_jwt",
    "private_key_jwt",
    "tls_client_auth",
    "self_signed_tls_client_auth",
]
SigningAlg = Literal["RS256", "PS256", "ES256", "EdDSA"]
_GRANT_TYPES = ("refresh_token", "client_credentials")
_TLS_METHODS = ("tls_client_auth", "self_signed_tls_client_auth")


def _check_scope(scope: str | Sequence[str] | None) -> str | None:
    if scope is None:
        return None
    if isinstance(scope, str):
        return scope.strip() or None
    if isinstance(scope, Sequence) and all(isinstance(s, str) and s for s in scope):
        return " ".join(scope) or None
    raise ConfigurationError("scope must be a string, a sequence of strings, or None")


class OAuth2Provider(BaseTokenProvider):
    """Any OAuth2 token endpoint that follows RFC 6749.

    The refresh-token grant is used whenever the manager has a refresh token. Without one, the
    primary grant runs: the resource-owner password grant when ``username`` and ``password`` are
    given, the client-credentials grant when ``grant_type="client_credentials"``, and otherwise
    :class:`~asynctoken.InvalidGrantError` (seed a refresh token). ``scope`` is sent with the
    primary grant only: a refresh keeps the scope originally granted (RFC 6749 §6).

    Client authentication (``auth_method``):

    * ``"client_secret_post"`` / ``"client_secret_basic"``: the client secret in the body or in
      ``Authorization: Basic`` (id and secret form-urlencoded first, RFC 6749 §2.3.1).
    * ``"private_key_jwt"`` (RFC 7523): a JWT signed with ``private_key`` (``signing_alg``
      RS256, PS256, ES256 or EdDSA; ``key_id`` as its ``kid``), made new for every request:
      ``iss`` = ``sub`` = ``client_id``, ``aud`` = ``assertion_audience`` (the token endpoint
      by default; some servers want their issuer), ``exp`` ``assertion_lifetime`` seconds
      ahead, a random ``jti``.
    * ``"client_secret_jwt"``: the same JWT, HS256 with the client secret as key.
    * ``"tls_client_auth"`` / ``"self_signed_tls_client_auth"`` (RFC 8705): the token request
      presents the client certificate ``client_cert``. The server binds the access token to it
      (``cnf.x5t#S256``): requests that use the token must present the same certificate, so
      give your API session :attr:`ssl_context` (see the documentation, "Client authentication
      and DPoP", docs/how-to/client-auth.md).

    The JWT methods need the optional extra ``asynctoken[jwt]``.

    DPoP (RFC 9449), with ``dpop=True`` or a ``dpop_key``: every token request carries a DPoP
    proof and the access token comes back bound to the proof's key (``token_type`` ``"DPoP"``).
    The key is kept on the token (:attr:`Token.dpop_key`), so it is stored with the credential
    and every process proves possession with the same key; the manager's middleware signs a
    proof for each API request with it. The key used is the one stored with the credential,
    else ``dpop_key``, else a new one of ``dpop_alg``. A server's ``DPoP-Nonce`` is remembered
    and sent in later proofs; a ``use_dpop_nonce`` answer is retried once, with the nonce and a
    new client assertion (the server consumed the first one).

    Args:
        token_url: the token endpoint (https, or http to a loopback host; https for mutual TLS).
        client_id: the client id.
        client_secret: the client secret (``""``: a public client with ``client_secret_post``
            sends only ``client_id``; not used by ``private_key_jwt`` and the TLS methods).
        auth_method: how the client authenticates, see above.
        grant_type: the primary grant: ``"refresh_token"`` (none: a refresh token must be
            seeded, unless ``username``/``password`` are given) or ``"client_credentials"``.
        scope: the scope to request with the primary grant, a string or a sequence of strings.
        username: resource owner username for the password grant (optional).
        password: resource owner password for the password grant (optional, with ``username``).
        private_key: for ``private_key_jwt``: an unencrypted PEM private key (``str`` or
            ``bytes``), a ``cryptography`` private key object, or a private JWK.
        key_id: the ``kid`` of ``private_key`` as registered with the server (optional).
        signing_alg: the algorithm for ``private_key_jwt``: ``"RS256"`` (default),
            ``"PS256"``, ``"ES256"`` or ``"EdDSA"``.
        assertion_audience: the ``aud`` of client assertions; default ``token_url``.
        assertion_lifetime: seconds a client assertion is valid, at most 600 (default 60).
        client_cert: for the TLS methods: ``(cert_path, key_path)`` (PEM files; the server is
            verified with the system trust store) or an :class:`ssl.SSLContext` that presents
            the certificate.
        dpop: bind access tokens to a DPoP key.
        dpop_key: the DPoP key to use when the credential has none stored yet
            (:class:`~asynctoken.DPoPKey`, PEM, key object or private JWK); implies ``dpop``.
        dpop_alg: the algorithm of new DPoP keys and of ``dpop_key``: ``"ES256"`` (default),
            ``"EdDSA"``, ``"PS256"`` or ``"RS256"``.
        allow_insecure_http: accept a plain ``http://`` ``token_url`` to a non-loopback host.
        timeout: total seconds for the request, body included.
        max_response_bytes: larger answers are rejected.
        default_expires_in: lifetime in seconds assumed when an answer has no ``expires_in``
            and its access token is not a JWT with an ``exp`` claim (read, unverified, for
            timing only); otherwise such an answer is a
            :class:`~asynctoken.MalformedResponseError`.
        extra_headers: more request headers (not ``Authorization``, ``Cookie``,
            ``Content-Type``, …).

    Raises:
        ConfigurationError: an argument is invalid or missing for the chosen ``auth_method``,
            only one of ``username``/``password`` is given, the password grant is combined with
            ``grant_type="client_credentials"``, or a JWT method or DPoP is asked for without
            the ``jwt`` extra installed. Messages never quote keys or secrets.
    """

    __slots__ = (
        "_auth",
        "_dpop_alg",
        "_dpop_key",
        "_dpop_nonces",
        "_last_stored_key",
        "_mtls",
        "auth_method",
        "dpop",
        "grant_type",
        "key_id",
        "scope",
        "signing_alg",
        "username",
    )

    name: str = "oauth2"

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str = "",
        auth_method: AuthMethod = "client_secret_post",
        grant_type: Literal["refresh_token", "client_credentials"] = "refresh_token",
        scope: str | Sequence[str] | None = None,
        *,
        username: str | None = None,
        password: str | None = None,
        private_key: object = None,
        key_id: str | None = None,
        signing_alg: SigningAlg = "RS256",
        assertion_audience: str | None = None,
        assertion_lifetime: float = 60.0,
        client_cert: tuple[str, str] | ssl.SSLContext | None = None,
        dpop: bool = False,
        dpop_key: object = None,
        dpop_alg: SigningAlg = "ES256",
        allow_insecure_http: bool = False,
        timeout: float = 10.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        default_expires_in: float | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            token_url=token_url,
            client_id=client_id,
            client_secret=client_secret,
            allow_insecure_http=allow_insecure_http,
            timeout=timeout,
            max_response_bytes=max_response_bytes,
            extra_headers=extra_headers,
            default_expires_in=default_expires_in,
            require_client_secret=False,
        )
        if auth_method not in AUTH_METHODS:
            raise ConfigurationError(f"auth_method must be one of {', '.join(AUTH_METHODS)}")
        if grant_type not in _GRANT_TYPES:
            raise ConfigurationError(f"grant_type must be one of {', '.join(_GRANT_TYPES)}")
        self.auth_method: AuthMethod = auth_method
        self.grant_type: Literal["refresh_token", "client_credentials"] = grant_type
        self.scope: str | None = _check_scope(scope)
        self.username: str | None = check_optional_str(username, "username")
        self._password = check_optional_str(password, "password")
        if (self.username is None) != (self._password is None):
            raise ConfigurationError(
                "give both username and password for the password grant, or neither"
            )
        if self._password is not None and grant_type == "client_credentials":
            raise ConfigurationError(
                "the password grant (username/password) and grant_type='client_credentials' "
                "are alternatives: choose one"
            )
        self.key_id: str | None = check_optional_str(key_id, "key_id")
        self.signing_alg: str | None = None
        self._mtls: MutualTLS | None = None
        self._auth: ClientAuth = self._client_auth(
            private_key=private_key,
            signing_alg=signing_alg,
            audience=assertion_audience,
            lifetime=assertion_lifetime,
            client_cert=client_cert,
        )
        if (
            grant_type == "client_credentials"
            and auth_method == "client_secret_post"
            and not (self._client_secret)
        ):
            raise ConfigurationError("the client_credentials grant needs a client_secret")
        self._init_dpop(dpop, dpop_key, dpop_alg)

    def _client_auth(
        self,
        *,
        private_key: object,
        signing_alg: str,
        audience: str | None,
        lifetime: float,
        client_cert: object,
    ) -> ClientAuth:
        method = self.auth_method
        if private_key is not None and method != "private_key_jwt":
            raise ConfigurationError("private_key is only used with auth_method='private_key_jwt'")
        if client_cert is not None and method not in _TLS_METHODS:
            raise ConfigurationError(
                "client_cert is only used with auth_method='tls_client_auth' or "
                "'self_signed_tls_client_auth'"
            )
        if audience is not None:
            audience = check_optional_str(audience, "assertion_audience")
        lifetime = check_assertion_lifetime(lifetime)
        if method == "client_secret_post":
            return SecretPost(self.client_id, self._client_secret)
        if method == "client_secret_basic":
            return SecretBasic(self.client_id, self._client_secret)
        if method == "client_secret_jwt":
            if not self._client_secret:
                raise ConfigurationError("auth_method='client_secret_jwt' needs a client_secret")
            self.signing_alg = "HS256"
            return JWTAssertion.client_secret(
                self.client_id,
                self._client_secret,
                audience=audience or self.token_url,
                lifetime=lifetime,
            )
        if method == "private_key_jwt":
            if private_key is None:
                raise ConfigurationError("auth_method='private_key_jwt' needs a private_key")
            self.signing_alg = signing_alg
            return JWTAssertion.private_key(
                self.client_id,
                private_key,
                key_id=self.key_id,
                signing_alg=signing_alg,
                audience=audience or self.token_url,
                lifetime=lifetime,
            )
        if client_cert is None:
            raise ConfigurationError(f"auth_method={method!r} needs client_cert")
        if not self.token_url.lower().startswith("https://"):
            raise ConfigurationError(f"auth_method={method!r} needs an https:// token_url")
        self._mtls = MutualTLS(self.client_id, load_client_cert(client_cert))
        return self._mtls

    def _init_dpop(self, dpop: object, dpop_key: object, dpop_alg: str) -> None:
        if not isinstance(dpop, bool):
            raise ConfigurationError("dpop must be True or False")
        self.dpop: bool = dpop or dpop_key is not None
        self._dpop_alg = dpop_alg
        self._dpop_key: DPoPKey | None = None
        self._dpop_nonces: DPoPNonces | None = None
        self._last_stored_key: tuple[str, DPoPKey] | None = None
        if not self.dpop:
            return
        from .._dpop import DPoPKey, DPoPNonces

        if isinstance(dpop_key, DPoPKey):
            self._dpop_key = dpop_key
            self._dpop_alg = dpop_key.alg
        elif dpop_key is not None:
            self._dpop_key = DPoPKey(dpop_key, dpop_alg)
        else:
            DPoPKey.generate(dpop_alg)  # checks dpop_alg and the extra now, not at a refresh
        self._dpop_nonces = DPoPNonces()

    @property
    def can_reauthenticate(self) -> bool:
        """True with username/password or ``grant_type="client_credentials"``."""
        return self._password is not None or self.grant_type == "client_credentials"

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        """For the TLS methods: the context presenting the client certificate, to give the
        sessions that send certificate-bound access tokens; ``None`` otherwise."""
        return None if self._mtls is None else self._mtls.context

    def build_request(
        self, refresh_token: str | None, *, dpop_key: DPoPKey | None = None
    ) -> TokenRequest:
        """Build the refresh-token request, or the primary grant when ``refresh_token`` is None.

        Every call makes a new client assertion and, with ``dpop_key``, a new DPoP proof (with
        the token endpoint's last nonce).

        Raises:
            InvalidGrantError: ``refresh_token`` is ``None`` and no primary grant is configured.
        """
        secrets: list[str] = [self._client_secret]
        form: dict[str, str]
        if refresh_token is not None:
            grant = "refresh_token"
            form = {"grant_type": grant, "refresh_token": refresh_token}
            secrets.append(refresh_token)
        elif self.username is not None and self._password is not None:
            grant = "password"
            form = {"grant_type": grant, "username": self.username, "password": self._password}
            secrets.append(self._password)
        elif self.grant_type == "client_credentials":
            grant = "client_credentials"
            form = {"grant_type": grant}
        else:
            raise self._no_primary_grant(
                "primary grant (username/password or grant_type='client_credentials')"
            )
        if grant != "refresh_token" and self.scope is not None:
            form["scope"] = self.scope
        headers = self._base_headers()
        secrets.extend(self._auth.apply(form, headers))
        if dpop_key is not None:
            nonce = None if self._dpop_nonces is None else self._dpop_nonces.get(self.token_url)
            headers["DPoP"] = dpop_key.proof("POST", self.token_url, nonce=nonce)
        return TokenRequest(
            url=self.token_url,
            grant_type=grant,
            headers=headers,
            form=form,
            secrets=tuple(secrets),
            ssl_context=None if self._mtls is None else self._mtls.context,
        )

    async def fetch_token(
        self,
        session: aiohttp.ClientSession,
        *,
        refresh_token: str | None,
        issued_at: float,
        current: Token | None = None,
    ) -> Token:
        """Make one token request (and one retry when the server asks for a DPoP nonce).

        Args:
            session: the session to send it with (see
                :meth:`~asynctoken.providers.Provider.fetch_token`).
            refresh_token: use the refresh-token grant with this token; ``None`` (or ``""``)
                means the primary grant.
            issued_at: unix time at which the request is sent.
            current: the credential's stored token, if any: with DPoP, its key is used again.

        Returns:
            The new token. With DPoP and a ``token_type`` of ``"DPoP"``, it carries the key in
            :attr:`Token.dpop_key`.

        Raises:
            TokenError: the errors of :meth:`~asynctoken.providers.Provider.fetch_token`.
        """
        if not self.dpop:
            return await super().fetch_token(
                session, refresh_token=refresh_token, issued_at=issued_at
            )
        key = self._key_for(current)
        nonces = self._dpop_nonces
        assert nonces is not None
        for attempt in range(2):
            request = self.build_request(refresh_token or None, dpop_key=key)
            response = await send_token_request(
                session,
                request,
                provider=self.name,
                timeout=self.timeout,
                max_response_bytes=self.max_response_bytes,
            )
            fresh_nonce = nonces.update(self.token_url, response.headers.get("DPoP-Nonce"))
            try:
                token = self.parse_response(response, request=request, issued_at=issued_at)
            except TokenEndpointError as exc:
                if attempt == 0 and fresh_nonce and (exc.error or "").lower() == "use_dpop_nonce":
                    logger.debug("%s: token endpoint asked for a DPoP nonce; retrying", self.name)
                    continue
                raise
            if token.token_type.lower() != "dpop":
                logger.warning(
                    "%s: DPoP proof sent, but the token endpoint issued a %r token; it is used "
                    "unbound",
                    self.name,
                    token.token_type,
                )
                return token
            return dataclasses.replace(token, dpop_key=key.jwk)
        raise AssertionError("unreachable")  # pragma: no cover

    def _key_for(self, current: Token | None) -> DPoPKey:
        """The credential's DPoP key: the stored one, else ``dpop_key``, else a new one."""
        from .._dpop import DPoPKey

        stored = None if current is None else current.dpop_key
        if stored:
            cached = self._last_stored_key
            if cached is not None and cached[0] == stored:
                return cached[1]
            key = DPoPKey.from_jwk(stored)
            self._last_stored_key = (stored, key)
            return key
        if self._dpop_key is not None:
            return self._dpop_key
        return DPoPKey.generate(self._dpop_alg)

    def _repr_fields(self) -> list[str]:
        fields = [f"auth_method={self.auth_method!r}", f"grant_type={self.grant_type!r}"]
        if self.signing_alg is not None and self.auth_method == "private_key_jwt":
            fields.append(f"signing_alg={self.signing_alg!r}")
        if self.key_id is not None:
            fields.append(f"key_id={self.key_id!r}")
        if self.dpop:
            fields.append(f"dpop={self._dpop_alg!r}")
        if self.scope is not None:
            fields.append(f"scope={self.scope!r}")
        if self.username is not None:
            fields.append(f"username={self.username!r}")
        fields.append(f"password_grant={self._password is not None}")
        return fields
