"""The token endpoint's OAuth logic for each flavor: read a request, decide, answer.

:func:`read_token_request` does the awaiting (reading the body); :meth:`TokenEndpoint.answer`
never awaits, so deciding and rotating happen in one step of the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple
from urllib.parse import unquote_plus

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from .._secrets import mask
from ._records import TokenRequest
from ._registry import AccessToken, Registry

__all__ = ["ClientCredentials", "Flavor", "Settings", "TokenEndpoint", "read_token_request"]

Flavor = Literal["keliweb", "erpeasy", "oauth2"]

_PASSPORT_INVALID_RT = "The refresh token is invalid."
_PASSPORT_MISSING = (
    "The request is missing a required parameter, includes an invalid parameter value, "
    "includes a parameter more than once, or is otherwise malformed."
)
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@dataclass(slots=True, repr=False)
class Settings:
    """The server's knobs; mutable so a test can change them between requests.

    ``repr`` masks the client secret and the users' passwords.
    """

    flavor: Flavor
    client_id: str
    client_secret: str
    expires_in: float
    rotate: bool
    revoke_family_on_reuse: bool
    refresh_token_ttl: float | None
    passport_legacy_errors: bool
    users: dict[str, str]
    company_id: int
    company_document: str
    company_name: str
    refresh_token_sources: frozenset[str]
    cookie_domain: str

    def __repr__(self) -> str:
        fields = []
        for name in self.__dataclass_fields__:
            value: Any = getattr(self, name)
            if name == "client_secret":
                value = mask(value)
            elif name == "users":
                value = {user: mask(password) for user, password in value.items()}
            fields.append(f"{name}={value!r}")
        return f"Settings({', '.join(fields)})"


class ClientCredentials(NamedTuple):
    """Client credentials as presented; kept out of the record's repr, masked in its own."""

    client_id: str | None
    client_secret: str | None
    method: str | None  # "basic", "post", "both" or None

    def __repr__(self) -> str:
        secret = None if self.client_secret is None else mask(self.client_secret)
        return (
            f"ClientCredentials(client_id={self.client_id!r}, client_secret={secret!r}, "
            f"method={self.method!r})"
        )


def _basic(header: str | None) -> tuple[str, str] | None:
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ("", "")
    client_id, _, secret = decoded.partition(":")
    return client_id, secret


async def read_token_request(
    request: web.Request, settings: Settings
) -> tuple[TokenRequest, ClientCredentials]:
    """Read everything the endpoint needs from ``request`` into a record.

    The caller fills in ``index`` and ``time`` once the body has been read.
    """
    params: dict[str, str] = {}
    content_type = request.content_type
    if request.method == "POST":
        if content_type == "application/json" and settings.flavor == "keliweb":
            try:
                data = json.loads(await request.read() or b"null")
            except ValueError:
                data = None
            if isinstance(data, dict):
                params = {str(k): str(v) for k, v in data.items() if isinstance(v, (str, int))}
        else:
            try:
                form = await request.post()
            except ValueError:  # a broken multipart body
                form = None
            params = {k: v for k, v in (form or {}).items() if isinstance(v, str)}
        # drain whatever post() ignored (e.g. a JSON body) so keep-alive stays clean
        await request.read()
    cookies = dict(request.cookies)

    basic = _basic(request.headers.get("Authorization"))
    if settings.flavor == "oauth2" and basic is not None:
        basic = (unquote_plus(basic[0]), unquote_plus(basic[1]))
    in_body = "client_id" in params or "client_secret" in params
    method = "both" if basic and in_body else "basic" if basic else "post" if in_body else None
    if settings.flavor == "erpeasy":  # Spring: form authentication for clients is off
        creds = ClientCredentials(basic[0] if basic else None, basic[1] if basic else None, method)
    elif settings.flavor == "keliweb":  # league/oauth2-server: body first, Basic as fallback
        creds = ClientCredentials(
            params.get("client_id", basic[0] if basic else None),
            params.get("client_secret", basic[1] if basic else None),
            method,
        )
    elif basic:
        creds = ClientCredentials(basic[0], basic[1], method)
    else:
        creds = ClientCredentials(params.get("client_id"), params.get("client_secret"), method)

    refresh_token: str | None = None
    source: str | None = None
    erpeasy = settings.flavor == "erpeasy"
    sources = settings.refresh_token_sources if erpeasy else frozenset({"body"})
    if "cookie" in sources and "refresh_token" in cookies:
        refresh_token, source = cookies["refresh_token"], "cookie"
    elif "body" in sources and "refresh_token" in params:
        refresh_token, source = params["refresh_token"], "body"
    username = params.get("username")
    if settings.flavor == "erpeasy":
        username = params.get("email", username)

    record = TokenRequest(
        index=-1,
        time=0.0,
        loop_time=asyncio.get_running_loop().time(),
        method=request.method,
        content_type=content_type,
        grant_type=params.get("grant_type"),
        refresh_token=refresh_token,
        refresh_token_source=source,
        client_id=creds.client_id,
        client_auth=method,
        username=username,
        params=params,
        headers=CIMultiDictProxy(CIMultiDict(request.headers)),
        cookies=cookies,
    )
    return record, creds


def _json(
    status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(dict(body), status=status, headers={**_NO_STORE, **(headers or {})})


def _seconds(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


class TokenEndpoint:
    """Decides token requests for one flavor against one :class:`Registry`."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry

    def answer(self, record: TokenRequest, creds: ClientCredentials) -> web.Response:
        """Decide ``record``; fills in its outcome and what was issued."""
        s = self.settings
        if record.method != "POST":
            record.outcome = "method_not_allowed"
            return _json(405, {"error": "invalid_request", "error_description": "Use POST."})
        grants = {"refresh_token", "password"}
        if s.flavor == "oauth2":
            grants.add("client_credentials")
        if s.flavor == "erpeasy" and not self._client_ok(creds):
            return self._invalid_client(record)
        if record.grant_type is None and s.flavor != "keliweb":
            desc = "Missing grant type" if s.flavor == "erpeasy" else "grant_type is required"
            return self._error(record, "invalid_request", 400, "invalid_request", desc)
        if record.grant_type not in grants:
            return self._unsupported(record)
        if s.flavor == "oauth2" and creds.method == "both":
            desc = "Use one client authentication method, not both."
            return self._error(record, "invalid_request", 400, "invalid_request", desc)
        if not self._client_ok(creds):
            return self._invalid_client(record)
        if record.grant_type == "refresh_token":
            return self._refresh(record)
        if record.grant_type == "password":
            return self._password(record)
        access = self.registry.issue_access(None, s.client_id, None, s.expires_in)
        return self._success(record, access, None, include_refresh=False)

    # -- grants ----------------------------------------------------------------------------

    def _refresh(self, record: TokenRequest) -> web.Response:
        s = self.settings
        if record.refresh_token is None:
            return self._missing(record, "refresh_token")
        check, token = self.registry.check_refresh(record.refresh_token)
        if check == "reused" and token is not None and s.revoke_family_on_reuse:
            self.registry.revoke_family(token.family)
        if check != "ok" or token is None:
            return self._invalid_refresh(record, "invalid" if check == "unknown" else check)
        issued = self.registry.rotate(token, s.refresh_token_ttl) if s.rotate else token
        access = self.registry.issue_access(
            token.family, s.client_id, token.family.user, s.expires_in
        )
        return self._success(record, access, issued.value, include_refresh=s.rotate)

    def _password(self, record: TokenRequest) -> web.Response:
        s = self.settings
        params = record.params
        fields = ["email", "password", "company"] if s.flavor == "erpeasy" else []
        fields = fields or ["username", "password"]
        for name in fields:
            if name not in params:
                return self._missing(record, name)
        user = record.username
        ok = user is not None and s.users.get(user) == params["password"]
        if s.flavor == "erpeasy":
            ok = ok and _digits(params["company"]) == _digits(s.company_document)
        if not ok or user is None:
            desc = {
                "keliweb": "The user credentials were incorrect.",
                "erpeasy": "Bad credentials",
            }.get(s.flavor, "Invalid resource owner credentials.")
            return self._error(record, "invalid", 400, "invalid_grant", desc)
        family = self.registry.new_family(user, s.client_id)
        refresh = self.registry.issue_refresh(family, s.refresh_token_ttl)
        access = self.registry.issue_access(family, s.client_id, user, s.expires_in)
        return self._success(record, access, refresh.value, include_refresh=True)

    # -- answers ---------------------------------------------------------------------------

    def _success(
        self,
        record: TokenRequest,
        access: AccessToken,
        refresh: str | None,
        *,
        include_refresh: bool,
    ) -> web.Response:
        s = self.settings
        record.outcome = "ok"
        record.issued_access_token = access.value
        headers: dict[str, str] = {}
        body: dict[str, Any]
        if s.flavor == "keliweb":
            body = {"token_type": "Bearer", "expires_in": _seconds(s.expires_in)}
            body["access_token"] = access.value
            body["refresh_token"] = refresh
            record.issued_refresh_token = refresh
        elif s.flavor == "erpeasy":
            body = {"access_token": access.value, "token_type": "bearer"}
            body.update(expires_in=_seconds(s.expires_in), scope="read write")
            body.update(self.erpeasy_fields(access.user or "", access.jti))
            if refresh is not None:
                headers["Set-Cookie"] = (
                    f"refresh_token={refresh}; Domain={s.cookie_domain}; Path=/oauth/token; "
                    "Secure; HttpOnly"
                )
                record.issued_refresh_token = refresh
        else:
            body = {"access_token": access.value, "token_type": "Bearer"}
            body["expires_in"] = _seconds(s.expires_in)
            if refresh is not None and include_refresh:
                body["refresh_token"] = refresh
                record.issued_refresh_token = refresh
            if "scope" in record.params:
                body["scope"] = record.params["scope"]
        return _json(200, body, headers)

    def erpeasy_fields(self, user: str, jti: str) -> dict[str, Any]:
        """The ERPeasy-specific fields of a token answer."""
        s = self.settings
        users = list(s.users)
        local = user.split("@", 1)[0].replace(".", " ").replace("_", " ")
        return {
            "user_id": users.index(user) + 1 if user in users else 1,
            "user_name": local.title() or "Test User",
            "user_email": user,
            "company_id": s.company_id,
            "company_document": s.company_document,
            "company_name": s.company_name,
            "jti": jti,
        }

    def _error(
        self,
        record: TokenRequest,
        outcome: str,
        status: int,
        error: str,
        description: str,
        *,
        hint: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        record.outcome = outcome
        body = {"error": error, "error_description": description}
        if hint is not None:
            body["hint"] = hint
        return _json(status, body, headers)

    def _invalid_refresh(self, record: TokenRequest, outcome: str) -> web.Response:
        s = self.settings
        if s.flavor == "keliweb":
            hint = "Token has expired" if outcome == "expired" else "Token has been revoked"
            if s.passport_legacy_errors:
                return self._error(
                    record, outcome, 401, "invalid_request", _PASSPORT_INVALID_RT, hint=hint
                )
            return self._error(
                record, outcome, 400, "invalid_grant", _PASSPORT_INVALID_RT, hint=hint
            )
        if s.flavor == "erpeasy":
            shown = mask(record.refresh_token)
            if outcome == "expired":
                desc = f"Invalid refresh token (expired): {shown}"
                return self._error(record, outcome, 401, "invalid_token", desc)
            return self._error(
                record, outcome, 400, "invalid_grant", f"Invalid refresh token: {shown}"
            )
        desc = {
            "expired": "The refresh token has expired.",
            "reused": "The refresh token has already been used.",
            "revoked": "The refresh token has been revoked.",
        }.get(outcome, "The refresh token is invalid.")
        return self._error(record, outcome, 400, "invalid_grant", desc)

    def _missing(self, record: TokenRequest, name: str) -> web.Response:
        if self.settings.flavor == "keliweb":
            hint = f"Check the `{name}` parameter"
            return self._error(
                record, "invalid_request", 400, "invalid_request", _PASSPORT_MISSING, hint=hint
            )
        desc = f"Missing parameter: {name}"
        return self._error(record, "invalid_request", 400, "invalid_request", desc)

    def _unsupported(self, record: TokenRequest) -> web.Response:
        flavor = self.settings.flavor
        if flavor == "keliweb":
            desc = "The authorization grant type is not supported by the authorization server."
            hint = "Check that all required parameters have been provided"
            return self._error(
                record, "unsupported_grant_type", 400, "unsupported_grant_type", desc, hint=hint
            )
        desc = f"Unsupported grant type: {record.grant_type}"
        return self._error(record, "unsupported_grant_type", 400, "unsupported_grant_type", desc)

    def _client_ok(self, creds: ClientCredentials) -> bool:
        s = self.settings
        return creds.client_id == s.client_id and creds.client_secret == s.client_secret

    def _invalid_client(self, record: TokenRequest) -> web.Response:
        flavor = self.settings.flavor
        headers: dict[str, str] = {}
        if flavor == "erpeasy":
            desc = "Bad client credentials"
            headers["WWW-Authenticate"] = 'Basic realm="oauth2/client"'
        elif flavor == "keliweb":
            desc = "Client authentication failed"
            if "Authorization" in record.headers:
                headers["WWW-Authenticate"] = 'Basic realm="OAuth"'
        else:
            desc = "Client authentication failed."
            headers["WWW-Authenticate"] = 'Basic realm="fake-oauth2"'
        return self._error(record, "invalid_client", 401, "invalid_client", desc, headers=headers)


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())
