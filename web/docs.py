"""API docs every worker serves, without credentials and without any CDN.

`/openapi.json` is the document from `web.openapi`; `/docs` (Swagger UI) and `/redoc` (ReDoc)
are small pages written here whose scripts and styles come from the installed
`drf-spectacular-sidecar` package, served under `/docs/assets/`. That package's `__init__`
imports Django, so its folder is found with `find_spec`, which locates a top-level package
without importing it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import orjson
from aiohttp import web

from tables.errors import AtlasError
from web.openapi import ASSETS_PATH, build_document

SIDECAR = "drf_spectacular_sidecar"
ASSETS_PREFIX = ASSETS_PATH.removesuffix("{asset}")


class DocsAssetsMissing(AtlasError):
    """The drf-spectacular-sidecar package (Swagger UI and ReDoc builds) is not installed."""


@dataclass(frozen=True)
class Asset:
    content_type: str
    file: str | None = None  # under the sidecar's static folder; None: `text` below
    text: str | None = None


_JS = "text/javascript; charset=utf-8"

# Swagger UI's own validator badge would call an outside service: `validatorUrl: null`.
SWAGGER_INIT = """\
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
"""

ASSETS: dict[str, Asset] = {
    "swagger-ui-bundle.js": Asset(_JS, "swagger-ui-dist/swagger-ui-bundle.js"),
    "swagger-ui.css": Asset("text/css; charset=utf-8", "swagger-ui-dist/swagger-ui.css"),
    "favicon-32x32.png": Asset("image/png", "swagger-ui-dist/favicon-32x32.png"),
    "redoc.standalone.js": Asset(_JS, "redoc/bundles/redoc.standalone.js"),
    "swagger-init.js": Asset(_JS, text=SWAGGER_INIT),
}

SWAGGER_HTML = f"""\
<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Atlas API</title>
  <link rel="icon" type="image/png" href="{ASSETS_PREFIX}favicon-32x32.png">
  <link rel="stylesheet" href="{ASSETS_PREFIX}swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{ASSETS_PREFIX}swagger-ui-bundle.js"></script>
  <script src="{ASSETS_PREFIX}swagger-init.js"></script>
</body>
</html>
"""

REDOC_HTML = f"""\
<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Atlas API</title>
  <link rel="icon" type="image/png" href="{ASSETS_PREFIX}favicon-32x32.png">
  <style>body {{ margin: 0; padding: 0; }}</style>
</head>
<body>
  <redoc spec-url="/openapi.json"></redoc>
  <script src="{ASSETS_PREFIX}redoc.standalone.js"></script>
</body>
</html>
"""

_CACHE = "public, max-age=3600"


def sidecar_static() -> Path:
    """The sidecar's static folder, found without importing the package (it imports Django)."""
    spec = importlib.util.find_spec(SIDECAR)
    if spec is None or not spec.submodule_search_locations:
        raise DocsAssetsMissing(f"{SIDECAR} is not installed: {DocsAssetsMissing.__doc__}")
    return Path(next(iter(spec.submodule_search_locations))) / "static" / SIDECAR


class Docs:
    """The handlers; files are checked once, when the routes are installed."""

    def __init__(self, version: str, static: Path | None = None) -> None:
        static = static or sidecar_static()
        self.files: dict[str, Path] = {}
        for name, asset in ASSETS.items():
            if asset.file is None:
                continue
            path = static / asset.file
            if not path.is_file():
                raise DocsAssetsMissing(f"{path} is missing: reinstall {SIDECAR}")
            self.files[name] = path
        self.document = orjson.dumps(build_document(version, ASSETS))

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self.document, content_type="application/json")

    async def swagger_ui(self, request: web.Request) -> web.Response:
        return _html(SWAGGER_HTML)

    async def redoc(self, request: web.Request) -> web.Response:
        return _html(REDOC_HTML)

    async def asset(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["asset"]
        asset = ASSETS.get(name)
        if asset is None:
            raise web.HTTPNotFound()
        headers = {"Content-Type": asset.content_type, "Cache-Control": _CACHE}
        if asset.text is not None:
            return web.Response(text=asset.text, headers=headers)
        return web.FileResponse(self.files[name], headers=headers)

    def install(self, router: web.UrlDispatcher) -> None:
        router.add_get("/openapi.json", self.openapi)
        router.add_get("/docs", self.swagger_ui)
        router.add_get("/redoc", self.redoc)
        router.add_get(ASSETS_PATH, self.asset)


def _html(page: str) -> web.Response:
    return web.Response(text=page, content_type="text/html", headers={"Cache-Control": "no-cache"})


def install_docs(router: web.UrlDispatcher, version: str) -> None:
    """Serve `/openapi.json`, `/docs`, `/redoc` and their assets on `router`."""
    Docs(version).install(router)
