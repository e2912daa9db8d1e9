"""The page, /docs and /redoc reference only files the server itself serves (3Dmol.js vendored
under app/web/static, Swagger UI and ReDoc from the fastapi-offline wheel; licences in
app/web/static/vendor/README.md): nothing from a CDN. The browser tests render them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.routes.web import _docs_dir
from app.settings import Settings

REPO = Path(__file__).resolve().parents[2]
VENDOR = REPO / "app" / "web" / "static" / "vendor"
ASSET = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*'([^']+)'""")


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    d = tmp_path_factory.mktemp("web")
    settings = Settings(
        database_url=f"sqlite:///{d}/matdesign.db", worker_warm_up=False, sweeper_enabled=False
    )
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.mark.parametrize("path", ["/", "/docs", "/redoc"])
def test_pages_load_assets_from_the_server_only(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200
    urls = [a or b for a, b in ASSET.findall(r.text)]
    assert urls, r.text
    for url in urls:
        assert url.startswith("/"), f"{path} references {url}"
        if url.startswith("/static/"):
            asset = client.get(url)
            assert asset.status_code == 200 and len(asset.content) > 50, url
    assert "cdn." not in r.text and "fonts.googleapis" not in r.text


def test_docs_pages_forbid_other_origins(client: TestClient) -> None:
    for path in ("/docs", "/redoc"):
        csp = client.get(path).headers["content-security-policy"]
        assert "default-src 'self'" in csp and "img-src 'self' data:" in csp


def test_vendored_libraries_keep_their_licences() -> None:
    readme = (VENDOR / "README.md").read_text()
    assert (VENDOR / "3dmol" / "LICENSE").is_file() and "BSD-3-Clause" in readme
    # Swagger UI and ReDoc come from the pinned wheel; the README names their licences.
    assert "Apache-2.0 (Swagger UI)" in readme and "MIT (ReDoc)" in readme
    pin = re.search(r'"fastapi-offline==([\d.]+)"', (REPO / "pyproject.toml").read_text())
    assert pin is not None and f"| {pin.group(1)} (Swagger UI" in readme
    assert metadata.version("fastapi-offline") == pin.group(1)


def test_docs_bundles_are_served_from_the_wheel_not_the_repository(client: TestClient) -> None:
    # What the repository vendors stays small; the 2.8 MB of docs JavaScript is the wheel's.
    vendored = sum(f.stat().st_size for f in VENDOR.rglob("*") if f.is_file())
    assert vendored < 2 * 1024 * 1024, vendored
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        served = client.get(f"/static/docs/{name}")
        assert served.status_code == 200, name
        assert served.content == (_docs_dir() / name).read_bytes()
