"""A small Python client of the HTTP API (httpx).

from app.client import Client
c = Client("http://127.0.0.1:8000", api_key=None)
job = c.submit({"method": "substitution", "num_candidates": 8, ...})
job = c.wait(job["id"])
for s in c.structures(job["id"]):
    print(s["rank"], s["formula"], s["scores"])
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

FINISHED = ("succeeded", "failed", "cancelled")


class ApiError(Exception):
    def __init__(self, response: httpx.Response) -> None:
        try:
            detail: Any = response.json().get("detail")
        except ValueError:
            detail = response.text
        if isinstance(detail, list):
            detail = "; ".join(f"{d.get('field')}: {d.get('msg')}" for d in detail)
        super().__init__(f"HTTP {response.status_code}: {detail}")
        self.status_code = response.status_code
        self.detail = detail


class Client:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout: float = 60.0,
        http: httpx.Client | None = None,
    ) -> None:
        """``http``: an httpx-compatible client to use instead (e.g. a test client)."""
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = http or httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        r = self.http.request(method, path, **kw)
        if r.status_code >= 400:
            raise ApiError(r)
        return r

    def submit(self, request: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._call("POST", "/v1/jobs", json=request, headers=headers).json()

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}").json()

    def jobs(self, **filters: Any) -> Iterator[dict[str, Any]]:
        params = {k: v for k, v in filters.items() if v is not None}
        while True:
            page = self._call("GET", "/v1/jobs", params=params).json()
            yield from page["items"]
            if not page["next_cursor"]:
                return
            params["cursor"] = page["next_cursor"]

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/jobs/{job_id}").json()

    def wait(self, job_id: str, timeout: float = 3600.0, poll: float = 2.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in FINISHED:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout:g} s")
            time.sleep(poll)

    def structures(
        self, job_id: str, hits_only: bool = False, page_size: int = 100
    ) -> Iterator[dict[str, Any]]:
        params: dict[str, Any] = {"limit": page_size, "hits_only": hits_only}
        while True:
            page = self._call("GET", f"/v1/jobs/{job_id}/structures", params=params).json()
            yield from page["items"]
            if not page["next_cursor"]:
                return
            params["cursor"] = page["next_cursor"]

    def download_archive(self, job_id: str, path: str | Path) -> Path:
        path = Path(path)
        with self.http.stream("GET", f"/v1/jobs/{job_id}/archive") as r:
            if r.status_code >= 400:
                r.read()
                raise ApiError(r)
            with path.open("wb") as fh:
                for chunk in r.iter_bytes():
                    fh.write(chunk)
        return path

    def score(self, cifs: list[str], oracles: list[str] | None = None) -> dict[str, Any]:
        return self._call("POST", "/v1/score", json={"cifs": cifs, "oracles": oracles}).json()
