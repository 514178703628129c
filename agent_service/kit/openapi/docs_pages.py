"""/docs (Swagger UI) and /redoc (ReDoc), served from the openapi-ui-bundles package: no CDN,
so the docs work with no internet access. Public pages; the API calls they make are not. Pages,
not API operations: they are left out of the OpenAPI document (`in_api=False`)."""

from __future__ import annotations

import mimetypes
from functools import cache
from pathlib import Path

from openapi_ui_bundles import redoc, swagger_ui
from starlette.requests import Request
from starlette.responses import Response

from agent_service.errors import NotFound
from agent_service.kit.endpoint import Docs, Public, endpoint, route

ASSETS: dict[str, Path] = {
    "swagger-ui.css": swagger_ui.static_path / "swagger-ui.css",
    "swagger-ui-bundle.js": swagger_ui.static_path / "swagger-ui-bundle.js",
    "swagger-ui-standalone-preset.js": swagger_ui.static_path / "swagger-ui-standalone-preset.js",
    "favicon-32x32.png": swagger_ui.static_path / "favicon-32x32.png",
    "redoc.standalone.js": redoc.static_path / "redoc.standalone.js",
}
INIT_JS = """
window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true, persistAuthorization: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset], layout: "StandaloneLayout",
    oauth2RedirectUrl: window.location.origin + "/docs/oauth2-redirect"
  });
};
""".strip()
SWAGGER_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Agent Service — API docs</title>
<link rel="icon" href="/docs/static/favicon-32x32.png">
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script src="/docs/static/swagger-ui-standalone-preset.js"></script>
<script src="/docs/static/swagger-init.js"></script></body></html>"""
REDOC_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Agent Service — API reference</title></head>
<body><redoc spec-url="/openapi.json"></redoc>
<script src="/docs/static/redoc.standalone.js"></script></body></html>"""
# Swagger UI and ReDoc set inline styles and ReDoc runs a blob: worker; every script is ours
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
# Swagger UI's redirect page is one inline script that hands the result to its opener
REDIRECT_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; base-uri 'none'; "
                    "form-action 'none'; frame-ancestors 'none'"}
HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff", "Content-Security-Policy": CSP,
           "Referrer-Policy": "no-referrer"}


@cache
def _read(name: str) -> bytes:
    return INIT_JS.encode() if name == "swagger-init.js" else ASSETS[name].read_bytes()


@endpoint(
    auth=Public(),
    docs=Docs(
        summary="API docs (Swagger UI)", tag="Health", media_type="text/html", in_api=False,
        description="Every operation grouped by tag; **Authorize** with a password (OAuth2 flow) or an API key.",
    ),
)
async def swagger(request: Request) -> Response:
    return Response(SWAGGER_HTML, media_type="text/html", headers=HEADERS)


@endpoint(
    auth=Public(),
    docs=Docs(
        summary="API reference (ReDoc)", tag="Health", media_type="text/html", in_api=False,
        description="The same document rendered by ReDoc.",
    ),
)
async def redoc_page(request: Request) -> Response:
    return Response(REDOC_HTML, media_type="text/html", headers=HEADERS)


@endpoint(
    auth=Public(),
    docs=Docs(
        summary="Docs asset", tag="Health", errors=(404,), media_type="text/plain", in_api=False,
        description="Swagger UI and ReDoc files, installed with the package.",
    ),
)
async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name != "swagger-init.js" and name not in ASSETS:
        raise NotFound("No such docs asset.")
    media = "application/javascript" if name.endswith(".js") else mimetypes.guess_type(name)[0] or "text/plain"
    return Response(_read(name), media_type=media, headers={"Cache-Control": "public, max-age=86400",
        "X-Content-Type-Options": "nosniff"})


@endpoint(
    auth=Public(),
    docs=Docs(
        summary="OAuth2 redirect", tag="Health", media_type="text/html", in_api=False,
        description="Swagger UI's OAuth2 redirect page (unused by the password flow, kept for completeness).",
    ),
)
async def oauth2_redirect(request: Request) -> Response:
    return Response((swagger_ui.static_path / "oauth2-redirect.html").read_bytes() if
                    (swagger_ui.static_path / "oauth2-redirect.html").exists() else b"<!doctype html>",
                    media_type="text/html", headers=REDIRECT_HEADERS)


routes = [
    route("/docs", swagger, ["GET"]),
    route("/docs/oauth2-redirect", oauth2_redirect, ["GET"]),
    route("/docs/static/{name}", asset, ["GET"]),
    route("/redoc", redoc_page, ["GET"]),
]
