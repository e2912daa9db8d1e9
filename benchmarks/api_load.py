"""API load: requests/s and p50/p99 latency of POST /v1/jobs and of a 100-structure page of
GET /v1/jobs/{id}/structures, on Postgres, with N concurrent clients.

It creates a scratch database ``matdesign_bench_<random>`` on the Postgres server, starts
``matdesign serve`` on 127.0.0.1 with a Redis broker and a queue name no worker listens to
(so submitted jobs only queue), stores one job with 100 realistic structures (10-atom cells,
five oracle scores each), then runs a bounded number of requests per client. Everything stays
on the loopback interface; the database and the queue are removed at the end.

    python benchmarks/api_load.py --clients 8 --requests 100
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

JOB_BODY: dict[str, Any] = {
    "method": "substitution",
    "objectives": [
        {"property": "band_gap", "goal": "target", "value": 1.5, "tolerance": 0.2},
        {"property": "formation_energy", "goal": "below", "value": -0.5},
    ],
    "constraints": {
        "elements": {"allowed": ["Ba", "Sr", "Ti", "Zr", "O", "S"], "required": ["O"]},
        "max_atoms": 20,
    },
    "num_candidates": 64,
    "relax": False,
    "seed": 0,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _seed_structures(db_url: str, n: int) -> str:
    """A finished job with ``n`` ranked structures, written straight to the database."""
    from app.db import Database, utcnow
    from app.jobs import submit_job
    from app.migrate import upgrade
    from app.models import ANONYMOUS, Job, OracleScore, Structure
    from ml.crystal import Crystal
    from ml.request import DesignRequest
    from workers.store import crystal_to_json

    upgrade(db_url)
    db = Database(db_url)
    job, _ = submit_job(db, ANONYMOUS, DesignRequest.model_validate(JOB_BODY), None)
    rng = np.random.default_rng(0)
    now = utcnow()
    with db.session() as s:
        for i in range(n):
            a = 3.9 + 0.01 * i
            frac = np.array(
                [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
            )
            # A 2x1x1 perovskite supercell (10 atoms), slightly jiggled.
            coords = np.concatenate([frac * [0.5, 1, 1], frac * [0.5, 1, 1] + [0.5, 0, 0]])
            coords = coords + rng.normal(0, 0.002, coords.shape)
            crystal = Crystal(np.diag([2 * a, a, a]), coords, [38, 22, 8, 8, 8] * 2)
            row = Structure(
                id=str(uuid.uuid4()),
                job_id=job.id,
                seq=i + 1,
                fingerprint=f"{i:064d}",
                rank=i + 1,
                formula="SrTiO3",
                n_atoms=10,
                space_group=123,
                cif=crystal.to_cif(),
                relaxed_cif=None,
                crystal=crystal_to_json(crystal),
                relaxed=None,
                method_score=float(i),
                objective_loss=0.01 * i,
                energy_above_hull=0.02,
                flags={
                    "valid": True,
                    "charge_neutral": True,
                    "unique": True,
                    "novel": False,
                    "stable": False,
                    "metastable": True,
                    "hit": i % 3 == 0,
                },
                hit=i % 3 == 0,
                predicted={},
                meta={"reference": "mp-5229", "probability": 0.01},
                created_at=now,
            )
            row.scores = [
                OracleScore(property=p, oracle=o, version="v", value=float(rng.normal()), unit=u)
                for p, o, u in [
                    ("formation_energy", "chgnet-eform", "eV/atom"),
                    ("band_gap", "megnet-gap-pbe", "eV"),
                    ("density", "density", "g/cm^3"),
                    ("energy_above_hull", "chgnet-energy", "eV/atom"),
                    ("hhi", "hhi", "dimensionless"),
                ]
            ]
            s.add(row)
        s.query(Job).filter(Job.id == job.id).update({"status": "succeeded"})
    db.dispose()
    return job.id


async def _client_loop(
    base: str, method: str, path: str, body: Any, n: int, latencies: list[float], errors: list[int]
) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        for _ in range(n):
            t = time.perf_counter()
            r = await client.request(method, path, json=body)
            latencies.append(time.perf_counter() - t)
            expected = 202 if method == "POST" else 200
            if r.status_code != expected:
                errors.append(r.status_code)


async def _scenario(
    base: str, method: str, path: str, body: Any, clients: int, per_client: int
) -> dict[str, float]:
    # Warm-up (connections, imports, caches) is not measured.
    await _client_loop(base, method, path, body, 5, [], [])
    latencies: list[float] = []
    errors: list[int] = []
    t0 = time.perf_counter()
    await asyncio.gather(
        *[
            _client_loop(base, method, path, body, per_client, latencies, errors)
            for _ in range(clients)
        ]
    )
    wall = time.perf_counter() - t0
    lat = sorted(latencies)
    return {
        "requests": len(lat),
        "errors": len(errors),
        "rps": len(lat) / wall,
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))],
        "mean_ms": 1000 * statistics.fmean(lat),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients")
    ap.add_argument("--requests", type=int, default=100, help="requests per client")
    ap.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--structures", type=int, default=100)
    ap.add_argument("--api-processes", type=int, default=1, help="matdesign serve --workers")
    ap.add_argument(
        "--with-limits", action="store_true", help="keep the per-key rate limits and quotas on"
    )
    args = ap.parse_args()

    import psycopg
    import redis

    name = f"matdesign_bench_{uuid.uuid4().hex[:8]}"
    queue = f"bench-{name}"
    with psycopg.connect(args.postgres, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base_url = args.postgres.rpartition("/")[0]
    db_url = f"{base_url}/{name}".replace("postgresql://", "postgresql+psycopg://", 1)
    port = _free_port()
    env = {
        **os.environ,
        "MATDESIGN_DATABASE_URL": db_url,
        "MATDESIGN_BROKER_URL": args.redis,
        "MATDESIGN_QUEUE_NAME": queue,
        "MATDESIGN_SWEEPER_ENABLED": "false",
        # Throughput of the endpoints, not of the 429 path: per-key limits off unless asked.
        "MATDESIGN_LIMITS_ENABLED": "true" if args.with_limits else "false",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    server = None
    try:
        job_id = _seed_structures(db_url, args.structures)
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(args.api_processes),
                "--log-level",
                "warning",
            ],
            cwd=REPO,
            env=env,
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("server did not start")
            time.sleep(0.5)
        page = httpx.get(f"{base}/v1/jobs/{job_id}/structures?limit=100", timeout=30)
        size_kb = len(page.content) / 1024
        assert len(page.json()["items"]) == min(100, args.structures)

        results = {
            "POST /v1/jobs": asyncio.run(
                _scenario(base, "POST", "/v1/jobs", JOB_BODY, args.clients, args.requests)
            ),
            f"GET structures page of 100 ({size_kb:.0f} KiB)": asyncio.run(
                _scenario(
                    base,
                    "GET",
                    f"/v1/jobs/{job_id}/structures?limit=100",
                    None,
                    args.clients,
                    args.requests,
                )
            ),
        }
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        r = redis.Redis.from_url(args.redis)
        leftovers = r.keys(f"*{queue}*")  # the queue and kombu's bindings for it
        if leftovers:
            r.delete(*leftovers)
        with psycopg.connect(args.postgres, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    print(
        f"clients={args.clients} requests/client={args.requests} server: "
        f"{args.api_processes} uvicorn process(es), "
        f"Postgres + Redis on loopback, cores={os.cpu_count()}"
    )
    print(f"{'endpoint':45s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'mean ms':>8s} errors")
    for label, r in results.items():
        print(
            f"{label:45s} {r['rps']:8.1f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} "
            f"{r['mean_ms']:8.1f} {int(r['errors'])}/{int(r['requests'])}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
