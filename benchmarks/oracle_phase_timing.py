"""Oracle phase of the pipeline on 150 MP-20 test crystals, unrelaxed, CPU, three warm runs:
``timings["oracles_s"]`` (judge energy + every oracle) and the pipeline total. Used to
compare before and after a change to ``ml/pipeline/evaluation.py``; pass a label to print.

    PYTHONPATH=. python benchmarks/oracle_phase_timing.py after
"""

from __future__ import annotations

import sys

from ml.data import load_records
from ml.methods.base import Candidate
from ml.pipeline import evaluate_candidates, warm_up
from ml.request import DesignRequest, Objective


def main() -> None:
    label = sys.argv[1] if len(sys.argv) > 1 else ""
    records = load_records("mp20", "test", limit=150)
    request = DesignRequest(
        method="t",
        objectives=[
            Objective(property="band_gap", goal="above", value=1.0),
            Objective(property="formation_energy", goal="below", value=-1.0),
        ],
        relax=False,
    )
    warm_up("cpu")
    candidates = [Candidate(r.crystal) for r in records]
    evaluate_candidates(candidates[:10], request, device="cpu")
    for _ in range(3):
        timings: dict[str, float] = {}
        evaluate_candidates(candidates, request, device="cpu", timings=timings)
        print(
            f"{label} oracles_s {timings.get('oracles_s', 0):.2f} "
            f"total {sum(timings.values()):.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
