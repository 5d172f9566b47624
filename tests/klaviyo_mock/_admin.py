"""The JSON admin API under ``/__mock__/``, for drivers in another process.

GET    /__mock__/stats                      throttled_count, status counts, per-account counts
POST   /__mock__/keys      {key, account?, scopes?}
DELETE /__mock__/keys      {key}
POST   /__mock__/limits    {account?, events?: {burst_per_s, steady_per_min}, bulk?: {...},
                            retry_after_header?}
POST   /__mock__/faults    {kind, status?, count?, duration_s?, delay_s?, account?,
                            endpoint?, body?}
DELETE /__mock__/faults
GET    /__mock__/timeline?account=acct[&all=1]   (all=1: duplicates included)
GET    /__mock__/requests?limit=100              (Authorization redacted)
POST   /__mock__/reset
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

from aiohttp import web

from tests.klaviyo_mock._config import DEFAULT_SCOPES, WindowLimit
from tests.klaviyo_mock._faults import Fault, FaultKind

if TYPE_CHECKING:
    from tests.klaviyo_mock._server import KlaviyoMock


def add_admin_routes(app: web.Application, mock: KlaviyoMock) -> None:
    """Adds the admin routes for ``mock`` to ``app``."""

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(mock.stats())

    async def add_key(request: web.Request) -> web.Response:
        data = await _json(request)
        mock.add_key(
            str(data["key"]),
            str(data.get("account", "acct")),
            data.get("scopes", sorted(DEFAULT_SCOPES)),
        )
        return web.json_response({"ok": True})

    async def remove_key(request: web.Request) -> web.Response:
        mock.remove_key(str((await _json(request))["key"]))
        return web.json_response({"ok": True})

    async def set_limits(request: web.Request) -> web.Response:
        data = await _json(request)
        mock.set_limits(
            account=data.get("account"),
            events=_window(data.get("events")),
            bulk=_window(data.get("bulk")),
            retry_after_header=data.get("retry_after_header"),
        )
        return web.json_response({"ok": True})

    async def inject(request: web.Request) -> web.Response:
        data = await _json(request)
        fields = {
            k: data[k]
            for k in ("status", "count", "duration_s", "delay_s", "account", "endpoint", "body")
            if k in data
        }
        mock.inject(Fault(kind=FaultKind(data["kind"]), **fields))
        return web.json_response({"ok": True})

    async def clear_faults(_: web.Request) -> web.Response:
        mock.clear_faults()
        return web.json_response({"ok": True})

    async def timeline(request: web.Request) -> web.Response:
        account = request.query.get("account", "acct")
        events = mock.received(account) if request.query.get("all") else mock.timeline(account)
        return web.json_response([e.to_json() for e in events])

    async def requests(request: web.Request) -> web.Response:
        from tests.klaviyo_mock._server import redact

        limit = int(request.query.get("limit", "100"))
        recorded = mock.requests[-limit:] if limit > 0 else []
        return web.json_response(
            [
                {
                    "seq": r.seq,
                    "method": r.method,
                    "path": r.path,
                    "status": r.status,
                    "account": r.account,
                    "received_at": r.received_at,
                    "headers": redact(r.headers.items()),
                    "body": _text(r.body),
                }
                for r in recorded
            ]
        )

    async def reset(_: web.Request) -> web.Response:
        mock.reset()
        return web.json_response({"ok": True})

    app.router.add_get("/__mock__/stats", stats)
    app.router.add_post("/__mock__/keys", add_key)
    app.router.add_delete("/__mock__/keys", remove_key)
    app.router.add_post("/__mock__/limits", set_limits)
    app.router.add_post("/__mock__/faults", inject)
    app.router.add_delete("/__mock__/faults", clear_faults)
    app.router.add_get("/__mock__/timeline", timeline)
    app.router.add_get("/__mock__/requests", requests)
    app.router.add_post("/__mock__/reset", reset)


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="expected a JSON object") from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text="expected a JSON object")
    return data


def _window(data: Any) -> WindowLimit | None:
    if data is None:
        return None
    return WindowLimit(int(data["burst_per_s"]), int(data["steady_per_min"]))


def _text(body: bytes) -> str:
    try:
        return body.decode()
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(body).decode()
