"""The web page at ``/``, its static files, and the API docs (/docs, /redoc) served from the
package: every script and style is vendored under ``app/web/static``, nothing from a CDN."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = "/static"
_VENDOR = f"{STATIC}/vendor"
_FAVICON = f"{_VENDOR}/swagger-ui/favicon-32x32.png"

# The docs pages may load nothing from elsewhere: ReDoc's sidebar shows a logo from its
# vendor's CDN, which this blocks (the image hides itself on error).
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'"
)

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def index() -> HTMLResponse:
    return HTMLResponse(files("app.web").joinpath("index.html").read_text())


def install_web(app: FastAPI) -> None:
    """Mount the page, its static files and offline /docs and /redoc on ``app``.

    The app must be created with ``docs_url=None, redoc_url=None``.
    """
    app.include_router(router)
    app.mount(STATIC, StaticFiles(packages=[("app.web", "static")]), name="static")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - API docs",
            swagger_js_url=f"{_VENDOR}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{_VENDOR}/swagger-ui/swagger-ui.css",
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
            redoc_js_url=f"{_VENDOR}/redoc/redoc.standalone.js",
            redoc_favicon_url=_FAVICON,
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page
