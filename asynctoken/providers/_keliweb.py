"""Keliweb Fatture (Laravel Passport): client credentials in the body, rotating refresh tokens."""

from __future__ import annotations

from collections.abc import Mapping

from .._errors import ConfigurationError
from ._common import BaseTokenProvider
from ._http import DEFAULT_MAX_RESPONSE_BYTES, TokenRequest, check_optional_str

__all__ = ["KeliwebProvider"]


class KeliwebProvider(BaseTokenProvider):
    """The Keliweb Fatture token endpoint (``https://fatture.keliweb.it/oauth/token``).

    Requests are ``application/x-www-form-urlencoded`` POSTs with ``X-Requested-With:
    XMLHttpRequest`` and the client credentials in the body. The server is Laravel Passport:
    every refresh revokes the refresh token it used and returns a new one in the JSON body, and
    an unused refresh token dies after 10 days, after which only the password grant gets back in.

    Args:
        client_id: the client id Keliweb issued.
        client_secret: the client secret Keliweb issued.
        username: the account's username, for the password grant (optional).
        password: the account's password, for the password grant (optional, with ``username``).
        token_url: the token endpoint; change it only for tests.
        allow_insecure_http: accept a plain ``http://`` ``token_url`` to a non-loopback host.
        timeout: total seconds for the request, body included.
        max_response_bytes: larger answers are rejected.
        extra_headers: more request headers (not ``Authorization``, ``Cookie``,
            ``Content-Type``, …).

    Raises:
        ConfigurationError: an argument is invalid, or only one of ``username``/``password`` is
            given.

    Example::

        provider = KeliwebProvider(
            client_id="4a6af340-…", client_secret=os.environ["KELIWEB_SECRET"],
            username="me@example.it", password=os.environ["KELIWEB_PASSWORD"],
        )
    """

    __slots__ = ("username",)

    name: str = "keliweb"

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        username: str | None = None,
        password: str | None = None,
        token_url: str = "https://fatture.keliweb.it/oauth/token",
        *,
        allow_insecure_http: bool = False,
        timeout: float = 10.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
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
        )
        self.username: str | None = check_optional_str(username, "username")
        self._password = check_optional_str(password, "password")
        if (self.username is None) != (self._password is None):
            raise ConfigurationError(
                "keliweb: give both username and password for the password grant, or neither"
            )

    @property
    def can_reauthenticate(self) -> bool:
        """True when ``username`` and ``password`` are configured (password grant)."""
        return self._password is not None

    def build_request(self, refresh_token: str | None) -> TokenRequest:
        """Build the refresh-token request, or the password grant when ``refresh_token`` is None.

        Raises:
            InvalidGrantError: ``refresh_token`` is ``None`` and no username/password is set.
        """
        headers = self._base_headers()
        headers["X-Requested-With"] = "XMLHttpRequest"
        form = {"client_id": self.client_id, "client_secret": self._client_secret}
        if refresh_token is not None:
            return TokenRequest(
                url=self.token_url,
                grant_type="refresh_token",
                headers=headers,
                form={"grant_type": "refresh_token", **form, "refresh_token": refresh_token},
                secrets=(self._client_secret, refresh_token),
            )
        if self.username is None or self._password is None:
            raise self._no_primary_grant("username/password (password grant)")
        return TokenRequest(
            url=self.token_url,
            grant_type="password",
            headers=headers,
            form={
                "grant_type": "password",
                **form,
                "username": self.username,
                "password": self._password,
            },
            secrets=(self._client_secret, self._password),
        )

    def _repr_fields(self) -> list[str]:
        if self.username is None:
            return ["password_grant=False"]
        return [f"username={self.username!r}", "password_grant=True"]
