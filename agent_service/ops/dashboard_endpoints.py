"""/dashboard: the admin page (HTML + a little JavaScript) and its static assets.

Public at the auth layer: the page holds no data. Its scripts call /api/v1 with the API key the
user signs in with (kept in the browser's sessionStorage), so every piece of data is authorised there.
"""

from __future__ import annotations

import functools
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

from agent_service.errors import NotFound
from agent_service.kit.endpoint import Docs, Public, endpoint, route

PAGE = "dashboard.html"
ASSETS: dict[str, str] = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@functools.cache
def _read(name: str) -> bytes:
    return resources.files("agent_service.ops").joinpath("static", name).read_bytes()


def _asset(name: str, media_type: str) -> Response:
    return Response(_read(name), media_type=media_type, headers=SECURITY_HEADERS)


@endpoint(
    auth=Public(),
    docs=Docs(
        summary="Dashboard page", tag="Admin", media_type="text/html", in_api=False,
        description="The admin dashboard: queue depth, workers, recent tasks with live progress, a task's "
        "stream, cancel and retry. Sign in with an API key; the page calls this API with it.",
    ),
)
async def page(request: Request) -> Response:
    return _asset(PAGE, "text/html; charset=utf-8")


@endpoint(
    auth=Public(),
    docs=Docs(
        summary="Dashboard asset", tag="Admin", errors=(404,), media_type="text/plain", in_api=False,
        description="The dashboard's script and stylesheet (`dashboard.js`, `dashboard.css`); "
        "any other name is a 404.",
    ),
)
async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound("No such dashboard asset.")
    return _asset(name, media_type)


routes = [route("/dashboard", page, ["GET"]), route("/dashboard/static/{name}", asset, ["GET"])]
