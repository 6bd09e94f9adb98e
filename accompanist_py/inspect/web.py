"""`python -m accompanist_py.inspect serve`: one page and the JSON behind it.

    GET /                              the page (page.html: no script or style from elsewhere)
    GET /api/sessions?state=&limit=    recent sessions across the sidecars, state per role
    GET /api/sessions/{id}/timeline    the merged timeline (as `--json` prints it)
    GET /api/sessions/{id}/diagram.svg its sequence diagram (`svg.render_svg`)
    GET /api/metrics                   each sidecar's key metrics from its /metrics

Every request asks the sidecars afresh, with the inspector's client credentials; the page
binds to loopback by default, since whoever reaches it reads the sessions those credentials
may read.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from accompanist_py.inspect.sidecars import Sidecars
from accompanist_py.inspect.svg import render_svg

PAGE = Path(__file__).with_name("page.html")
SIDECARS = web.AppKey("sidecars", Sidecars)
MAX_LIMIT = 1000


async def page(request: web.Request) -> web.Response:
    return web.Response(text=PAGE.read_text(), content_type="text/html")


async def sessions(request: web.Request) -> web.Response:
    text = request.query.get("limit", "50")
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise web.HTTPBadRequest(text=f"'limit' must be an integer from 1 to {MAX_LIMIT}")
    state = request.query.get("state") or None
    return web.json_response(await request.app[SIDECARS].sessions(state, int(text)))


async def timeline(request: web.Request) -> web.Response:
    found = await request.app[SIDECARS].timeline(request.match_info["session_id"])
    return web.json_response(found.to_json(), status=200 if found.entries else 404)


async def diagram(request: web.Request) -> web.Response:
    found = await request.app[SIDECARS].timeline(request.match_info["session_id"])
    return web.Response(
        text=render_svg(found), content_type="image/svg+xml", status=200 if found.entries else 404
    )


async def metrics(request: web.Request) -> web.Response:
    return web.json_response(await request.app[SIDECARS].metrics())


def make_app(sidecars: Sidecars) -> web.Application:
    """The inspector's application; it opens and closes `sidecars` with itself."""
    app = web.Application()
    app[SIDECARS] = sidecars

    async def lifecycle(app: web.Application):  # type: ignore[no-untyped-def]
        async with sidecars:
            yield

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/", page)
    app.router.add_get("/api/sessions", sessions)
    app.router.add_get("/api/sessions/{session_id}/timeline", timeline)
    app.router.add_get("/api/sessions/{session_id}/diagram.svg", diagram)
    app.router.add_get("/api/metrics", metrics)
    return app


__all__ = ["make_app"]
