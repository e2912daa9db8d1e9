"""Fixtures of the browser tests: a real ``matdesign serve`` (embedded worker, SQLite, API key
required) in a subprocess, and Chromium driven by Playwright.

Chromium is Debian's (``apt-get install chromium``; ``.ci/run`` installs it), found on PATH or
at ``MATDESIGN_CHROMIUM``; Playwright's own browser download is not used. Screenshots go to
``MATDESIGN_SCREENSHOT_DIR`` (default: a pytest temporary directory, printed at the end).
Without Playwright or Chromium the tests skip, unless ``MATDESIGN_REQUIRE_BROWSER=1`` (CI),
where they fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
REQUIRE_BROWSER = os.environ.get("MATDESIGN_REQUIRE_BROWSER", "").lower() in ("1", "true")


def _unavailable(msg: str) -> None:
    if REQUIRE_BROWSER:
        pytest.fail(msg)
    pytest.skip(msg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, root: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "MATDESIGN_DATABASE_URL": f"sqlite:///{root}/matdesign.db",
            "MATDESIGN_BROKER_URL": "embedded",
            "MATDESIGN_REQUIRE_API_KEY": "true",
            "MATDESIGN_PROGRESS_INTERVAL_S": "0.2",
            "MATDESIGN_CANCEL_POLL_INTERVAL_S": "0.2",
            "MATDESIGN_CACHE_DIR": str(root / "cache"),
        }
        self.log_path = root / "server.log"
        self.key = subprocess.run(
            [sys.executable, "-m", "app.cli", "keys", "create", "--name", "browser"],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port)],
            cwd=REPO,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"server not up after {timeout} s: {self.log()[-3000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("browser-server"))
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = os.environ.get("MATDESIGN_SCREENSHOT_DIR")
    path = Path(d) if d else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    yield path
    print(f"\nbrowser screenshots: {path}")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        _unavailable(f"playwright is not installed: {exc}")
    exe = os.environ.get("MATDESIGN_CHROMIUM") or shutil.which("chromium")
    if not exe:
        _unavailable("no chromium on PATH (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=exe,
            # Root in CI needs --no-sandbox; SwiftShader gives headless WebGL for the 3D view.
            args=["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"],
        )
        yield b
        b.close()


class Offsite:
    """Every request a page tries outside the server, blocked and recorded."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.urls: list[str] = []

    def __call__(self, route: Any) -> None:
        url = route.request.url
        if url.startswith(self.base) or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            self.urls.append(url)
            route.abort()


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[tuple[Any, Offsite]]:
    context = browser.new_context(viewport={"width": 1360, "height": 900}, accept_downloads=True)
    offsite = Offsite(server.url)
    context.route("**/*", offsite)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg, offsite
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
