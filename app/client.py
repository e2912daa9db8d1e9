"""A small Python client of the HTTP API (httpx).

from app.client import Client
c = Client("http://127.0.0.1:8000", api_key=None)
job = c.submit({"method": "substitution", "num_candidates": 8, ...})
job = c.follow(job["id"], on_event=print)      # live, from GET /v1/jobs/{id}/events
for d in c.results(job["id"]):                 # pymatgen Structures with their scores
    print(d.rank, d.formula, d.scores["band_gap"], d.structure.lattice.abc)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from pymatgen.core import Structure

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


@dataclass
class DesignedStructure:
    """A designed crystal as pymatgen objects, with the scores the service gave it."""

    id: str
    rank: int | None
    formula: str
    structure: Structure
    relaxed: Structure | None
    scores: dict[str, float | None]
    units: dict[str, str]
    flags: dict[str, bool]
    energy_above_hull: float | None
    method_score: float | None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def sun(self) -> bool:
        """Stable, unique and novel."""
        return all(self.flags.get(f, False) for f in ("stable", "unique", "novel"))

    @classmethod
    def from_api(cls, item: dict[str, Any]) -> DesignedStructure:
        from pymatgen.core import Structure

        def parse(cif: str) -> Structure:
            return Structure.from_str(cif, fmt="cif")

        return cls(
            id=item["id"],
            rank=item["rank"],
            formula=item["formula"],
            structure=parse(item["cif"]),
            relaxed=parse(item["relaxed_cif"]) if item.get("relaxed_cif") else None,
            scores={p: sc["value"] for p, sc in item["scores"].items()},
            units={p: sc["unit"] for p, sc in item["scores"].items()},
            flags=item["flags"],
            energy_above_hull=item["energy_above_hull"],
            method_score=item["method_score"],
            meta=item.get("meta") or {},
        )


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of a text/event-stream, data decoded as JSON."""
    event, data = "message", ""
    for line in lines:
        if line == "":
            if data:
                yield event, json.loads(data)
            event, data = "message", ""
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()


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

    def purge(self, job_id: str) -> None:
        """Delete a finished job with its structures for good (409 while it runs)."""
        self._call("DELETE", f"/v1/jobs/{job_id}", params={"purge": "true"})

    def wait(self, job_id: str, timeout: float = 3600.0, poll: float = 2.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in FINISHED:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout:g} s")
            time.sleep(poll)

    def events(self, job_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """The job's Server-Sent Events (progress, candidates, end) until it finishes."""
        # The stream may be quiet between events: no read timeout. A (connect, read, write,
        # pool) tuple, which httpx and httpx2 (starlette's TestClient) both take.
        timeout = (30.0, None, 30.0, 30.0)
        with self.http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=timeout) as r:
            if r.status_code >= 400:
                r.read()
                raise ApiError(r)
            yield from parse_sse(r.iter_lines())

    def follow(
        self,
        job_id: str,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        timeout: float = 3600.0,
    ) -> dict[str, Any]:
        """Wait for the job through its event stream (calling ``on_event`` for each event);
        falls back to polling when the stream breaks off. Returns the finished job."""
        deadline = time.monotonic() + timeout
        try:
            for event, data in self.events(job_id):
                if on_event is not None:
                    on_event(event, data)
                if event == "end":
                    return data
                if time.monotonic() > deadline:
                    break
        except httpx.TransportError:
            pass  # a dropped stream: polling finishes the wait
        return self.wait(job_id, timeout=max(1.0, deadline - time.monotonic()))

    def results(self, job_id: str, hits_only: bool = False) -> list[DesignedStructure]:
        """The job's structures, best rank first, as pymatgen Structures with scores."""
        return [DesignedStructure.from_api(s) for s in self.structures(job_id, hits_only)]

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
