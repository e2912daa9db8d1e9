"""CPU time of the planning before any sampling, for the job profile's request (issue 20).

- ``conditional``: the Wyckoff plan (new compositions by substitution, space groups,
  assignments and their faithfulness checks) for ``--n`` candidates.
- ``scan``: the substitution baseline's scan of its references for the same request
  (``substituted_compositions``), twice: cold, then with this process's caches.

The worker's warm-up has the reference formula index loaded; so does this script before it
starts the clock. Run it in a fresh process per setting: the caches it measures persist.

    PYTHONPATH=.:benchmarks python benchmarks/planning_time.py --what conditional --n 1024
"""

from __future__ import annotations

import argparse
import json
import time

from job_profile import job_request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--what", choices=["conditional", "scan"], default="conditional")
    parser.add_argument("--n", type=int, default=256)
    args = parser.parse_args()
    from ml.data.reference import known_formulas
    from ml.request import DesignRequest

    known_formulas()
    request = DesignRequest.model_validate(job_request("conditional", args.n, True, 0, {}))
    row: dict[str, object] = {"what": args.what, "n": args.n}
    if args.what == "conditional":
        from ml.methods.conditional.method import _load_wyckoff
        from ml.methods.registry import get_method
        from ml.pipeline.generation import generation_request

        method = get_method("conditional")
        params = method.validate(request)
        model, stats, _ = _load_wyckoff("cpu")
        t = time.perf_counter()
        planned = method._wyckoff_plan(generation_request(request), params, model, stats)  # type: ignore[attr-defined]
        row |= {"seconds": round(time.perf_counter() - t, 2), "conditions": len(planned)}
    else:
        from ml.methods.substitution import substituted_compositions

        for label in ("cold", "warm"):
            t = time.perf_counter()
            formulas = substituted_compositions(request, 64)
            row[f"{label}_s"] = round(time.perf_counter() - t, 2)
        row["formulas"] = len(formulas)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
