"""The gateway's /docs works offline: Swagger UI's assets come from the package, and a real
browser (Debian's chromium, headless, every host but 127.0.0.1 unresolvable) renders the API's
operations from them. The same browser, on FastAPI's default CDN page, renders none: the
network block is real."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.testclient import TestClient
from test_gateway import Served, make_app, model_server  # noqa: F401  (a fixture)

from aistack.gateway.routing import OPEN, guarded
from aistack.steps.model_server import EmbeddedModelServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def app(tmp_path: Path, model_server: EmbeddedModelServer) -> Iterator[FastAPI]:  # noqa: F811
    yield make_app(tmp_path)


def test_docs_reference_only_packaged_assets(app: FastAPI) -> None:
    with TestClient(app) as client:
        page = client.get("/docs")
        assert page.status_code == 200
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']|url: ['"]([^'"]+)['"]""", page.text)
        urls = [a or b for a, b in urls]
        assert urls and all(u.startswith("/") for u in urls), urls  # nothing from another host
        for url in urls:
            got = client.get(url)
            assert got.status_code == 200, url
        assert (
            client.get("/docs-assets/swagger-ui-bundle.js")
            .headers["content-type"]
            .startswith(("application/javascript", "text/javascript"))
        )
        assert client.get("/redoc").status_code in (404, 405)  # no ReDoc: it would need a CDN


def dump_dom(url: str, profile: Path) -> str:
    assert CHROMIUM is not None
    done = subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            f"--user-data-dir={profile}", "--no-first-run", "--disable-background-networking",
            # the network is blocked: no host resolves but the gateway's
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--virtual-time-budget=15000", "--dump-dom", url,
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; make test does)"
)
def test_a_real_browser_renders_the_operations_with_the_network_blocked(app: FastAPI, tmp_path: Path) -> None:
    @app.get("/cdn-docs", include_in_schema=False)
    @guarded(OPEN)
    async def cdn_docs() -> HTMLResponse:  # FastAPI's default page: assets from a CDN
        return get_swagger_ui_html(openapi_url="/openapi.json", title="cdn")

    with Served(app) as served:
        dom = dump_dom(f"{served.url}/docs", tmp_path / "profile")
        assert "swagger-ui" in dom and "opblock" in dom, dom[-2000:]
        for operation in ("/v1/tasks", "/v1/tasks/{name}", "/v1/agents", "/healthz"):
            assert f">{operation}<" in dom.replace("\u200b", "") or operation in dom, operation
        blocked = dump_dom(f"{served.url}/cdn-docs", tmp_path / "profile-cdn")
        assert "opblock" not in blocked, "the CDN page rendered: the network was not blocked"
