"""Profile whole design jobs through the real runner: per-phase wall time and cProfile's top.

Each (method, n) job runs in this process through ``workers.runner.execute_job`` (the code the
embedded and Celery workers run) on a scratch SQLite database, under cProfile. The per-phase
seconds come from the job summary's ``timings``: ``method_s`` (generation), ``relax_s``,
``oracles_s``, ``hull_s``, ``uniqueness_novelty_s`` (``uniqueness_s`` and ``novelty_s`` before
2026-12-05), ``validity_s``, ``storage_s``,
``ranking_s``, ``total_s``. Models are loaded once first (``warm_up``, reported apart).
Rows are saved to ``--out`` after every job (a timeout keeps what finished). Usage::

    PYTHONPATH=. python benchmarks/job_profile.py --methods smoacs,conditional,substitution \\
        --n 256,1024 --device cuda --out /tmp/job_profile
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

PHASES = (
    "method_s",
    "validity_s",
    "relax_s",
    "oracles_s",
    "hull_s",
    "uniqueness_novelty_s",
    "storage_s",
    "ranking_s",
    "total_s",
)
OBJECTIVES = [
    {"property": "band_gap", "goal": "target", "value": 1.5, "tolerance": 0.5},
    {"property": "formation_energy", "goal": "below", "value": -0.5},
]


def job_request(
    method: str, n: int, relax: bool, seed: int, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "method": method,
        "objectives": OBJECTIVES,
        "constraints": {"max_atoms": 20},
        "num_candidates": n,
        "relax": relax,
        "seed": seed,
        "params": params or {},
    }


def run_job(
    request: dict[str, Any], workdir: Path, top: int, profile: bool = True
) -> dict[str, Any]:
    """One job through the runner on a fresh SQLite file; summary timings and profile
    (``profile`` False: no cProfile, whose overhead inflates Python-heavy phases)."""
    from common import insert_queued_job  # benchmarks/common.py
    from sqlalchemy import select

    from app.db import Database
    from app.models import Job, Structure
    from app.settings import Settings
    from ml.request import DesignRequest
    from workers.runner import execute_job

    path = workdir / f"{uuid.uuid4().hex[:8]}.db"
    settings = Settings(
        database_url=f"sqlite:///{path}", worker_warm_up=False, job_time_limit_s=3600
    )
    db = Database(settings.database_url)
    req = DesignRequest.model_validate(request)
    job_id = insert_queued_job(db, req, owner="profile")
    prof = cProfile.Profile()
    t = time.perf_counter()
    if profile:
        outcome = prof.runcall(execute_job, job_id, db, settings, worker="profile")
    else:
        outcome = execute_job(job_id, db, settings, worker="profile")
    wall = time.perf_counter() - t
    with db.session() as s:
        job = s.get(Job, job_id)
        summary, error = dict(job.summary or {}), job.error
        metas = s.scalars(select(Structure.meta).where(Structure.job_id == job_id)).all()
    steps = [m["relax_steps"] for m in metas if isinstance(m.get("relax_steps"), int)]
    db.dispose()
    buf, tot = io.StringIO(), io.StringIO()
    if profile:
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(top)
        pstats.Stats(prof, stream=tot).sort_stats("tottime").print_stats(top)
    timings = summary.get("timings", {})
    return {
        "outcome": outcome,
        "error": error,
        "wall_s": round(wall, 2),
        "profiled": profile,
        "candidates_per_s": round(summary.get("n_candidates", 0) / wall, 3) if wall else None,
        "timings": timings,
        "counts": {k: v for k, v in summary.items() if k.startswith("n_") and isinstance(v, int)},
        # FIRE steps of the stored candidates: how long the relaxation's tail is.
        "relax_steps_quantiles": (
            [int(q) for q in np.percentile(steps, [10, 50, 90, 99, 100])] if steps else None
        ),
        "profile_cumulative": buf.getvalue(),
        "profile_tottime": tot.getvalue(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--methods", default="smoacs,conditional,substitution")
    parser.add_argument("--n", default="256,1024", help="comma-separated candidate counts")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: ml settings)")
    parser.add_argument("--no-relax", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top", type=int, default=25, help="cProfile entries to print")
    parser.add_argument(
        "--no-profile", action="store_true", help="plain wall times (no cProfile overhead)"
    )
    parser.add_argument(
        "--params",
        type=json.loads,
        default={},
        help="method parameters for every job, JSON (e.g. '{\"batch_size\": 1024}')",
    )
    parser.add_argument(
        "--method-params",
        type=json.loads,
        default={},
        help="per-method parameters, JSON keyed by method (e.g. '{\"smoacs\": {...}}')",
    )
    parser.add_argument("--out", default="job_profile_out")
    args = parser.parse_args()

    import os

    if args.device:
        os.environ["MATDESIGN_DEVICE"] = args.device
    from ml import pipeline
    from ml.settings import get_ml_settings

    device = args.device or get_ml_settings().torch_device()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    loads = pipeline.warm_up(device)
    print(f"device {device}; warm-up {time.perf_counter() - t:.1f} s {loads}", flush=True)
    rows: list[dict[str, Any]] = []
    header = f"{'method':<13}{'n':>6}{'wall':>8}" + "".join(f"{p[:-2][:10]:>11}" for p in PHASES)
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            for n in (int(x) for x in args.n.split(",")):
                params = {**args.params, **args.method_params.get(method, {})}
                request = job_request(method, n, not args.no_relax, args.seed, params)
                print(f"--- {method} n={n} relax={request['relax']}", flush=True)
                try:
                    row = run_job(request, Path(tmp), args.top, not args.no_profile)
                except Exception as exc:  # keep going: the other jobs still tell something
                    row = {"outcome": "crashed", "error": f"{type(exc).__name__}: {exc}"}
                row.update(method=method, n=n, device=device, relax=request["relax"], params=params)
                if device.startswith("cuda"):
                    import torch

                    row["gpu_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                    torch.cuda.reset_peak_memory_stats()
                row.setdefault("profiled", not args.no_profile)
                rows.append(row)
                (out / f"{method}_{n}_profile.txt").write_text(
                    row.get("profile_cumulative", "") + "\n" + row.get("profile_tottime", "")
                )
                slim = [{k: v for k, v in r.items() if not k.startswith("profile")} for r in rows]
                (out / "job_profile.json").write_text(json.dumps(slim, indent=1))
                print(row["outcome"], row.get("error") or "", row.get("counts", ""), flush=True)
                print(row.get("profile_cumulative", "")[:6000], flush=True)
    print(header)
    for r in rows:
        tm = r.get("timings") or {}
        cells = "".join(
            f"{tm[p]:>11.2f}" if isinstance(tm.get(p), int | float) else f"{'-':>11}"
            for p in PHASES
        )
        print(f"{r['method']:<13}{r['n']:>6}{r.get('wall_s', 0):>8.1f}{cells}")


if __name__ == "__main__":
    main()
