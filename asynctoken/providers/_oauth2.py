"""A standard RFC 6749 token endpoint: refresh, client-credentials and password grants."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal
from urllib.parse import quote_plus

from .._errors import ConfigurationError
from ._common import BaseTokenProvider, basic_authorization
from ._http import DEFAULT_MAX_RESPONSE_BYTES, TokenRequest, check_optional_str

__all__ = ["OAuth2Provider"]

_AUTH_METHODS = ("client_secret_post", "client_secret_basic")
_GRANT_TYPES = ("refresh_token", "client_credentials")


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

    Args:
        token_url: the token endpoint (https, or http to a loopback host).
        client_id: the client id.
        client_secret: the client secret (``""`` for a public client with
            ``client_secret_post``: then only ``client_id`` is sent).
        auth_method: ``"client_secret_post"`` (credentials in the body) or
            ``"client_secret_basic"`` (``Authorization: Basic``, id and secret form-urlencoded
            first as RFC 6749 §2.3.1 requires).
        grant_type: the primary grant: ``"refresh_token"`` (none: a refresh token must be
            seeded, unless ``username``/``password`` are given) or ``"client_credentials"``.
        scope: the scope to request with the primary grant, a string or a sequence of strings.
        username: resource owner username for the password grant (optional).
        password: resource owner password for the password grant (optional, with ``username``).
        allow_insecure_http: accept a plain ``http://`` ``token_url`` to a non-loopback host.
        timeout: total seconds for the request, body included.
        max_response_bytes: larger answers are rejected.
        default_expires_in: lifetime in seconds assumed when an answer has no ``expires_in``
            (otherwise such an answer is a :class:`~asynctoken.MalformedResponseError`).
        extra_headers: more request headers (not ``Authorization``, ``Cookie``,
            ``Content-Type``, …).

    Raises:
        ConfigurationError: an argument is invalid, only one of ``username``/``password`` is
            given, or the password grant is combined with ``grant_type="client_credentials"``.
    """

    __slots__ = ("auth_method", "grant_type", "scope", "username")

    name: str = "oauth2"

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        auth_method: Literal["client_secret_post", "client_secret_basic"] = "client_secret_post",
        grant_type: Literal["refresh_token", "client_credentials"] = "refresh_token",
        scope: str | Sequence[str] | None = None,
        *,
        username: str | None = None,
        password: str | None = None,
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
        if auth_method not in _AUTH_METHODS:
            raise ConfigurationError(f"auth_method must be one of {', '.join(_AUTH_METHODS)}")
        if grant_type not in _GRANT_TYPES:
            raise ConfigurationError(f"grant_type must be one of {', '.join(_GRANT_TYPES)}")
        self.auth_method: Literal["client_secret_post", "client_secret_basic"] = auth_method
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
        if grant_type == "client_credentials" and not self._client_secret:
            raise ConfigurationError("the client_credentials grant needs a client_secret")

    @property
    def can_reauthenticate(self) -> bool:
        """True with username/password or ``grant_type="client_credentials"``."""
        return self._password is not None or self.grant_type == "client_credentials"

    def build_request(self, refresh_token: str | None) -> TokenRequest:
        """Build the refresh-token request, or the primary grant when ``refresh_token`` is None.

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
        if self.auth_method == "client_secret_basic":
            authorization = basic_authorization(
                quote_plus(self.client_id, safe=""), quote_plus(self._client_secret, safe="")
            )
            headers["Authorization"] = authorization
            secrets.append(authorization)
        else:
            form["client_id"] = self.client_id
            if self._client_secret:
                form["client_secret"] = self._client_secret
        return TokenRequest(
            url=self.token_url,
            grant_type=grant,
            headers=headers,
            form=form,
            secrets=tuple(secrets),
        )

    def _repr_fields(self) -> list[str]:
        fields = [f"auth_method={self.auth_method!r}", f"grant_type={self.grant_type!r}"]
        if self.scope is not None:
            fields.append(f"scope={self.scope!r}")
        if self.username is not None:
            fields.append(f"username={self.username!r}")
        fields.append(f"password_grant={self._password is not None}")
        return fields
