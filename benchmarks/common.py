"""Stages the paper benchmarks share: the papers' StructureMatcher match, a validity check
that never raises, and one spawned process pool per run (module-level functions, so pool
workers can unpickle them; run a benchmark as a script so this folder is on ``sys.path``)."""

from __future__ import annotations

import multiprocessing
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from ml.crystal import Crystal

# CDVAE/DiffCSP/FlowMM's match-rate settings, used by every generation benchmark here.
PAPER_MATCHER = {"ltol": 0.2, "stol": 0.3, "angle_tol": 5}

_POOLS: dict[int, ProcessPoolExecutor] = {}


def match_rms(gen: Crystal, ref: Crystal) -> float:
    """RMS distance of a StructureMatcher match (:data:`PAPER_MATCHER`), NaN when no match
    or when the generated cell is too degenerate to compare."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    warnings.filterwarnings("ignore")
    try:
        rms = StructureMatcher(**PAPER_MATCHER).get_rms_dist(gen.to_structure(), ref.to_structure())
    except Exception:
        return float("nan")
    return float("nan") if rms is None else float(rms[0])


def is_valid_quietly(crystal: Crystal) -> bool:
    """:func:`ml.evaluation.validity.is_valid`, False where it raises (a degenerate cell)."""
    from ml.evaluation.validity import is_valid

    try:
        return bool(is_valid(crystal))
    except Exception:
        return False


def parallel_map(
    fn: Callable[[Any], Any], items: Sequence[Any], workers: int, chunksize: int = 8
) -> list[Any]:
    """``[fn(x) for x in items]``, in ``workers`` spawned processes when more than one.
    Spawn, not fork: forking after torch/CHGNet started their threads can deadlock; one pool
    per size for the whole run, since spawned workers take seconds to import torch."""
    if workers <= 1:
        return [fn(x) for x in items]
    if workers not in _POOLS:
        ctx = multiprocessing.get_context("spawn")
        _POOLS[workers] = ProcessPoolExecutor(workers, mp_context=ctx)
    return list(_POOLS[workers].map(fn, items, chunksize=chunksize))


def shutdown_pools() -> None:
    for pool in _POOLS.values():
        pool.shutdown()
    _POOLS.clear()


def insert_queued_job(db: Any, request: Any, owner: str) -> str:
    """A queued job row for ``request`` (a DesignRequest) in ``db`` (an ``app.db.Database``,
    tables created here), as the API would store it; returns the job id. Benchmarks use it to
    run a job through ``workers.runner.execute_job`` without the API."""
    import uuid

    from app.db import utcnow
    from app.models import QUEUED, Base, Job
    from ml.request import request_hash

    Base.metadata.create_all(db.engine)
    job_id = str(uuid.uuid4())
    with db.session() as s:
        s.add(
            Job(
                id=job_id,
                owner=owner,
                status=QUEUED,
                method=request.method,
                request=request.model_dump(mode="json"),
                request_hash=request_hash(request),
                created_at=utcnow(),
            )
        )
    return job_id


def pack(crystals: Sequence[Crystal]) -> dict[str, np.ndarray]:
    """Crystals as flat arrays for ``np.savez`` (the caller prefixes the keys; :func:`unpack`)."""
    return {
        "lattice": np.stack([c.lattice for c in crystals]),
        "frac": np.concatenate([c.frac_coords for c in crystals]),
        "numbers": np.concatenate([c.numbers for c in crystals]),
        "num_atoms": np.array([c.num_atoms for c in crystals]),
    }


def unpack(z: Any, prefix: str) -> list[Crystal]:
    """The crystals :func:`pack` saved under ``prefix/`` in the archive ``z``."""
    # An NpzFile decompresses an array on every item access: read each one once.
    lattice, frac, numbers = (z[f"{prefix}/{k}"] for k in ("lattice", "frac", "numbers"))
    o = np.concatenate([[0], np.cumsum(z[f"{prefix}/num_atoms"])])
    return [
        Crystal(lattice[i], frac[o[i] : o[i + 1]], numbers[o[i] : o[i + 1]])
        for i in range(len(o) - 1)
    ]


def add_cliqueflowmer_decoding_args(p: Any) -> None:
    """CliqueFlowmer's decoding flags (argparse), defaulting to the service's decoding; ``--anneal
    0 --decode-beams 1 --geometry-samples 1`` decodes as before 2026-12-05."""
    from ml.methods.cliqueflowmer.method import CliqueFlowmerParams

    service = CliqueFlowmerParams.model_fields
    p.add_argument(
        "--anneal", type=float, default=service["anneal"].default, help="anti-annealing s"
    )
    p.add_argument(
        "--decode-beams",
        type=int,
        default=service["decode_beams"].default,
        help="atom-type beams tried per latent",
    )
    p.add_argument(
        "--geometry-samples",
        type=int,
        default=service["geometry_samples"].default,
        help="geometries per atom-type beam; the candidate that re-encodes nearest is kept",
    )
