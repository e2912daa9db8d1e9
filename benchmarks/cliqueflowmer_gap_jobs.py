"""Band-gap jobs for ``cliqueflowmer`` through the job runner's path: do the returned crystals
have the asked-for gap by the service's own oracles?

Two jobs (issue 15): ``maximize band_gap`` and ``band_gap target 1.5 ± 0.2``, run as
``benchmarks/lab_suite.py`` runs a job (the method's validate and run, the runner's
over-generation, :func:`ml.pipeline.evaluate_candidates`, final hits and ranking; no
database). Per returned crystal: the method's predictions, the default gap oracle's band gap
(``gap-chgnet-ft``), CHGNet-Eform, E_hull, validity and hit. Works on any checkout (run it with
``PYTHONPATH=<checkout>`` to measure another version), so before/after use the same script::

    MATDESIGN_MODELS_DIR=/work/shared/models MATDESIGN_DATA_DIR=/work/shared/data \\
        PYTHONPATH=. python benchmarks/cliqueflowmer_gap_jobs.py --n 8 --steps 100 \\
        --out /tmp/gap_jobs.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

# Appended, not prepended: PYTHONPATH picks the checkout that is measured.
sys.path.append(str(Path(__file__).resolve().parents[1]))

from benchmarks.lab_suite import run_job
from ml.request import DesignRequest

JOBS: dict[str, list[dict[str, Any]]] = {
    "maximize": [{"property": "band_gap", "goal": "maximize"}],
    "target_1.5": [{"property": "band_gap", "goal": "target", "value": 1.5, "tolerance": 0.2}],
}


def build(objectives: list[dict[str, Any]], n: int, steps: int, seed: int) -> DesignRequest:
    return DesignRequest.model_validate(
        {
            "method": "cliqueflowmer",
            "objectives": objectives,
            "constraints": {"max_atoms": 20, "charge_neutral": False},
            "num_candidates": n,
            "seed": seed,
            "relax": False,
            "params": {"steps": steps},
        }
    )


def _mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None and math.isfinite(x)]
    return round(sum(vals) / len(vals), 3) if vals else None


def run(name: str, n: int, steps: int, seed: int, device: str) -> dict[str, Any]:
    request = build(JOBS[name], n, steps, seed)
    t0 = time.time()
    ranked, _summary, _generation = run_job(request, device)
    rows = []
    for sc in ranked:
        score = {k: (v.value if v is not None else None) for k, v in sc.scores.items()}
        rows.append(
            {
                "formula": sc.formula,
                "valid": sc.flags.get("valid", False),
                "hit": sc.flags.get("hit", False),
                "predicted": {k: round(v, 3) for k, v in sc.predicted.items()},
                "gap_oracle": score.get("band_gap"),
                "eform": score.get("formation_energy"),
                "e_hull": sc.energy_above_hull,
            }
        )
    gaps = [r["gap_oracle"] for r in rows]
    return {
        "job": name,
        "objectives": JOBS[name],
        "n_returned": len(rows),
        "n_valid": sum(r["valid"] for r in rows),
        "hits": sum(r["hit"] for r in rows),
        "mean_gap": _mean(gaps),
        "max_gap": max((g for g in gaps if g is not None), default=None),
        "metals (gap < 0.1)": sum(1 for g in gaps if g is not None and g < 0.1),
        "in_band 1.5±0.2": sum(1 for g in gaps if g is not None and abs(g - 1.5) <= 0.2),
        "mean_eform": _mean([r["eform"] for r in rows]),
        "seconds": round(time.time() - t0, 1),
        "rows": rows,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--steps", type=int, default=100, help="ES steps (the method's default: 500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--jobs", default=",".join(JOBS))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    import ml

    results = {
        "checkout": str(Path(ml.__file__).resolve().parents[1]),
        "device": f"{args.device} ({platform.processor() or platform.machine()})",
        "n": args.n,
        "steps": args.steps,
        "seed": args.seed,
        "jobs": [],
    }
    for name in args.jobs.split(","):
        res = run(name, args.n, args.steps, args.seed, args.device)
        results["jobs"].append(res)
        head = {k: v for k, v in res.items() if k != "rows"}
        print(json.dumps(head), flush=True)
        for r in res["rows"]:
            print("   ", json.dumps(r), flush=True)
        if args.out:
            args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
