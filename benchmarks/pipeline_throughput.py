"""Throughput of ``ml.pipeline.evaluate_candidates`` on real MP-20 test structures (CPU).

One warm-up call loads the models; then a batch of ``--n`` candidates is evaluated twice
(relax off): the second pass has reference cells and hull diagrams cached. ``--relax N`` also
times N relaxing candidates. Usage::

    OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/pipeline_throughput.py --n 200 --relax 10
"""

from __future__ import annotations

import argparse
import time

from ml.data import load_records
from ml.methods.base import Candidate
from ml.pipeline import evaluate_candidates, rank_candidates, summarize
from ml.request import DesignRequest, Objective
from ml.settings import get_ml_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--relax", type=int, default=0)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = args.device or get_ml_settings().torch_device()

    start = 400  # away from the rows the tests touch, so reference look-ups are cold
    recs = load_records("mp20", "test", limit=start + args.n + args.relax)
    gap = Objective(property="band_gap", goal="target", value=1.5, tolerance=0.2)
    req = DesignRequest(
        method="bench", relax=False, objectives=[gap], constraints={"charge_neutral": False}
    )
    evaluate_candidates([Candidate(recs[0].crystal)], req, device=device)  # load models
    cands = [Candidate(r.crystal) for r in recs[start : start + args.n]]
    print(f"device: {device}")
    for label in ("cold reference/hull caches", "warm caches"):
        t = time.perf_counter()
        out = evaluate_candidates(cands, req, device=device)
        dt = time.perf_counter() - t
        print(
            f"relax=False, {len(cands)} candidates, {label}: {dt:.1f} s = "
            f"{len(cands) / dt:.2f} candidates/s"
        )
    summary = summarize(rank_candidates(out), req)
    print({k: v for k, v in summary.items() if k != "best"})
    if args.relax:
        req_relax = req.model_copy(update={"relax": True})
        cands = [Candidate(r.crystal) for r in recs[start + args.n : start + args.n + args.relax]]
        t = time.perf_counter()
        out = evaluate_candidates(cands, req_relax, device=device)
        dt = time.perf_counter() - t
        steps = [o.meta.get("relax_steps") for o in out]
        print(
            f"relax=True, {len(cands)} candidates: {dt:.1f} s = {len(cands) / dt:.3f} "
            f"candidates/s (FIRE steps {steps})"
        )


if __name__ == "__main__":
    main()
