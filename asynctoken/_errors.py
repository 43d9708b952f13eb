"""Exceptions raised by asynctoken.

Every exception derives from :class:`TokenError`::

    TokenError
    ├── ConfigurationError (also ValueError)     bad arguments, insecure token URL
    ├── CredentialNotFoundError (also KeyError)  no provider registered / resolvable for a key
    ├── TokenEndpointError                       the token endpoint answered with a final error
    │   ├── InvalidGrantError                    refresh token or password dead: re-authorize
    │   └── InvalidClientError                   client id / secret rejected
    ├── TransientError                           5xx, 408, 429, temporarily_unavailable, network
    │                                            errors and timeouts, after the retries ran out
    ├── MalformedResponseError                   the answer was not a usable token response
    └── StoreError                               the token store failed or holds bad data
        ├── StoreLockTimeoutError                another process held the refresh lock too long
        └── SealedRecordError                    an encrypted record cannot be opened

Messages and attributes carry what a person needs to act (credential key, HTTP status, OAuth error
code, URL, file path) and never a secret.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "CredentialNotFoundError",
    "InvalidClientError",
    "InvalidGrantError",
    "MalformedResponseError",
    "SealedRecordError",
    "StoreError",
    "StoreLockTimeoutError",
    "TokenEndpointError",
    "TokenError",
    "TransientError",
]


class TokenError(Exception):
    """Root of every asynctoken exception.

    Attributes:
        key: the credential key the error concerns, when known. The manager fills it in.
    """

    key: str | None = None

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if key is not None:
            self.key = key

    def __str__(self) -> str:
        if self.key is not None:
            return f"[{self.key}] {self.message}"
        return self.message

    def __copy__(self) -> TokenError:
        # BaseException's own copy calls __init__ with args only; keyword-only fields would be
        # missing. Same class, same args and attributes, no traceback.
        clone = type(self).__new__(type(self), *self.args)
        clone.__dict__.update(self.__dict__)
        return clone


class ConfigurationError(TokenError, ValueError):
    """An argument is invalid, e.g. a plain ``http://`` token URL to a non-loopback host."""


class CredentialNotFoundError(TokenError, KeyError):
    """No provider is registered for the key and no provider factory resolved one."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return TokenError.__str__(self)


class TokenEndpointError(TokenError):
    """The token endpoint answered with an error that retrying will not fix.

    Attributes:
        status: the HTTP status code.
        error: the OAuth2 ``error`` code (``"invalid_scope"``, …) or ``None``.
        description: the server's ``error_description``, truncated, or ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error: str | None = None,
        description: str | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(message, key=key)
        self.status = status
        self.error = error
        self.description = description


class InvalidGrantError(TokenEndpointError):
    """The refresh token (or the password grant) was rejected: the credential must be renewed.

    Raised for ``invalid_grant``, for Passport's 401 ``invalid_request`` "refresh token is
    invalid", and when no refresh token is stored and no password grant is configured. Never
    retried; repeated calls within a cooldown fail fast without a request.
    """


class InvalidClientError(TokenEndpointError):
    """The client id or client secret was rejected (``invalid_client``)."""


class TransientError(TokenError):
    """The token endpoint could not be reached or was temporarily failing; retries ran out.

    Attributes:
        status: the last HTTP status, or ``None`` for network errors and timeouts.
        retry_after: the server's last ``Retry-After`` in seconds, if any.
        attempts: how many requests were made.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        attempts: int = 1,
        key: str | None = None,
    ) -> None:
        super().__init__(message, key=key)
        self.status = status
        self.retry_after = retry_after
        self.attempts = attempts


class MalformedResponseError(TokenError):
    """The token endpoint answered, but not with a usable token response.

    Attributes:
        status: the HTTP status code.
        reason: what was wrong (``"invalid JSON"``, ``"missing access_token"``, …).
        refresh_token: the new refresh token the answer carried anyway (a JSON
            ``refresh_token``, or ERPeasy's cookie), else ``None``. A server that answered 2xx
            has usually rotated already, so this is the credential's only working refresh
            token. A secret: never part of ``str()``, ``repr()`` or ``args``.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        reason: str,
        key: str | None = None,
        refresh_token: str | None = None,
    ) -> None:
        super().__init__(message, key=key)
        self.status = status
        self.reason = reason
        self.refresh_token = refresh_token

    def __repr__(self) -> str:
        # Spelled out rather than inherited, so that the secret attribute can never slip in.
        return f"{type(self).__name__}({self.message!r})"


class StoreError(TokenError):
    """The token store failed (unreachable, corrupt, conflicting).

    Attributes:
        location: the file path or (password-free) URL of the store.
    """

    def __init__(
        self, message: str, *, location: str | None = None, key: str | None = None
    ) -> None:
        super().__init__(message, key=key)
        self.location = location


class StoreLockTimeoutError(StoreError):
    """The cross-process refresh lock for a credential was not acquired in time."""


class SealedRecordError(StoreError):
    """An encrypted record cannot be opened: unknown key id, wrong key, altered, copied from
    another credential key, or the store has no cipher.

    The record is left as it was; the credential is unusable until the key is supplied (or the
    credential is added again with ``overwrite=True``). Other credentials are unaffected.

    Attributes:
        key_id: the id of the key the record says it was sealed with (``None`` if unreadable).
    """

    def __init__(
        self,
        message: str,
        *,
        location: str | None = None,
        key: str | None = None,
        key_id: str | None = None,
    ) -> None:
        super().__init__(message, location=location, key=key)
        self.key_id = key_id
