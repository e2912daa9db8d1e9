"""The web page at ``/``, its static files, and the API docs (/docs, /redoc), all served by
this server, nothing from a CDN: the page's scripts and 3Dmol.js are vendored under
``app/web/static``; the Swagger UI and ReDoc bundles come from the ``fastapi-offline`` wheel (a
pinned dependency), so the repository does not carry their 2.8 MB of JavaScript."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = "/static"
# Swagger UI (swagger-ui-bundle.js, swagger-ui.css), ReDoc (redoc.standalone.js), favicon.png.
DOCS_ASSETS = f"{STATIC}/docs"
_FAVICON = f"{DOCS_ASSETS}/favicon.png"

# The docs pages may load nothing from elsewhere: ReDoc's sidebar shows a logo from its
# vendor's CDN, which this blocks (the image hides itself on error).
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'"
)

router = APIRouter(include_in_schema=False)


def _docs_dir() -> Path:
    """The wheel's folder of Swagger UI and ReDoc files (an installed package, not a zip)."""
    return Path(fastapi_offline.__file__).parent / "static"


@router.get("/", response_class=HTMLResponse)
def index() -> HTMLResponse:
    return HTMLResponse(files("app.web").joinpath("index.html").read_text())


def install_web(app: FastAPI) -> None:
    """Mount the page, its static files and offline /docs and /redoc on ``app``.

    The app must be created with ``docs_url=None, redoc_url=None``.
    """
    app.include_router(router)
    # Mounted before /static, which would otherwise take /static/docs/... (mounts match by
    # prefix, in order).
    app.mount(DOCS_ASSETS, StaticFiles(directory=_docs_dir()), name="docs-assets")
    app.mount(STATIC, StaticFiles(packages=[("app.web", "static")]), name="static")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - API docs",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=_FAVICON,
            # No badge that would send the schema to the public validator.
            swagger_ui_parameters={"validatorUrl": None},
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        page = get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} - API reference",
            redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=_FAVICON,
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page
