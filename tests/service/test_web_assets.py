"""The page, /docs and /redoc reference only files the server itself serves (vendored under
app/web/static, licences beside them): nothing from a CDN. The browser tests render them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings

VENDOR = Path(__file__).resolve().parents[2] / "app" / "web" / "static" / "vendor"
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
    for folder, licence in [
        ("3dmol", "BSD-3-Clause"),
        ("swagger-ui", "Apache-2.0"),
        ("redoc", "MIT"),
    ]:
        assert (VENDOR / folder / "LICENSE").is_file()
        assert f"`{folder}/`" in readme and licence in readme
