"""``/_fake/…`` control routes, so a test can drive a server running in another process.

Enabled with ``FakeOAuthServer(control_api=True)`` (the standalone mode turns it on). Loopback
only, like the server itself.

=======  ============================  ====================================================
GET      /_fake/stats                  counters and outcome tally
GET      /_fake/requests               token-request summaries (tokens masked, arrival times)
POST     /_fake/refresh-token          ``{"refresh_token": …}`` minted in a new family
POST     /_fake/token                  a full token pair, as ``Token.to_dict()``
POST     /_fake/expire-access-tokens   expire every access token
POST     /_fake/expire-refresh-tokens  expire every refresh token
POST     /_fake/fail-next              JSON: n, status, retry_after, error, delay
POST     /_fake/hold                   close the gate
POST     /_fake/release                JSON (optional): ``n``
=======  ============================  ====================================================
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .._secrets import mask

if TYPE_CHECKING:
    from ._server import FakeOAuthServer

__all__ = ["add_control_routes"]


async def _json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except ValueError as exc:
        raise web.HTTPBadRequest(text="body must be a JSON object") from exc
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return data


def add_control_routes(app: web.Application, server: FakeOAuthServer) -> None:
    """Register the control routes of ``server`` on ``app``."""

    async def stats(_: web.Request) -> web.Response:
        outcomes = Counter(record.outcome for record in server.requests)
        return web.json_response(
            {
                "flavor": server.flavor,
                "token_requests": server.token_requests,
                "reuse_detected": server.reuse_detected,
                "api_requests": server.api_requests,
                "api_unauthorized": server.api_unauthorized,
                "valid_refresh_tokens": len(server.valid_refresh_tokens),
                "parked": server.parked,
                "outcomes": dict(outcomes),
            }
        )

    async def requests(_: web.Request) -> web.Response:
        return web.json_response(
            [
                {
                    "index": r.index,
                    "loop_time": r.loop_time,
                    "grant_type": r.grant_type,
                    "refresh_token": mask(r.refresh_token),
                    "refresh_token_source": r.refresh_token_source,
                    "client_auth": r.client_auth,
                    "outcome": r.outcome,
                    "status": r.status,
                }
                for r in server.requests
            ]
        )

    async def refresh_token(_: web.Request) -> web.Response:
        return web.json_response({"refresh_token": server.issue_refresh_token()})

    async def token(_: web.Request) -> web.Response:
        return web.json_response(server.issue_token().to_dict())

    async def expire_access(_: web.Request) -> web.Response:
        server.expire_all_access_tokens()
        return web.json_response({"ok": True})

    async def expire_refresh(_: web.Request) -> web.Response:
        server.expire_all_refresh_tokens()
        return web.json_response({"ok": True})

    async def fail_next(request: web.Request) -> web.Response:
        data = await _json_body(request)
        allowed = {"n", "status", "retry_after", "error", "delay"}
        if not set(data) <= allowed:
            raise web.HTTPBadRequest(text=f"allowed fields: {sorted(allowed)}")
        try:
            server.fail_next(**data)
        except (TypeError, ValueError) as exc:
            raise web.HTTPBadRequest(text=str(exc)) from exc
        return web.json_response({"pending_failures": server.pending_failures})

    async def hold(_: web.Request) -> web.Response:
        server.hold()
        return web.json_response({"held": True})

    async def release(request: web.Request) -> web.Response:
        n = (await _json_body(request)).get("n")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int)):
            raise web.HTTPBadRequest(text="n must be an int")
        return web.json_response({"released": server.release(n)})

    app.router.add_get("/_fake/stats", stats)
    app.router.add_get("/_fake/requests", requests)
    app.router.add_post("/_fake/refresh-token", refresh_token)
    app.router.add_post("/_fake/token", token)
    app.router.add_post("/_fake/expire-access-tokens", expire_access)
    app.router.add_post("/_fake/expire-refresh-tokens", expire_refresh)
    app.router.add_post("/_fake/fail-next", fail_next)
    app.router.add_post("/_fake/hold", hold)
    app.router.add_post("/_fake/release", release)
