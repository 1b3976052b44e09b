"""/docs served from the package: Swagger UI's JavaScript, CSS and favicon come from the
swagger-ui-bundle-v2 distribution (Swagger UI 5, which reads FastAPI's OpenAPI 3.1), mounted
under /docs-assets, as FastAPI documents for self-hosting. Nothing is fetched from a CDN, so the
page works on an air-gapped cluster. ReDoc has no packaged build and is not served."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from aistack.gateway.routing import OPEN, guarded

ASSETS = "/docs-assets"


def serve_docs(app: FastAPI) -> None:
    """Mount the assets and the /docs page (the app is built with docs_url=None, redoc_url=None)."""
    app.mount(ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")
    redirect = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    @guarded(OPEN)  # the page and its assets are public, like /openapi.json
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=redirect,
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
        )

    @app.get(redirect, include_in_schema=False)
    @guarded(OPEN)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()
