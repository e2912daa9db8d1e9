"""Rescore crystals that ``conditional_wyckoff_paper.py --save`` generated on another machine:
match rates on the first ``--limit`` rows (to compare with a CPU run on those rows) and the
lowest-CHGNet-energy sample of the first 4, 8, ... (what a job that draws several samples per
candidate returns), without generating again.

    PYTHONPATH=.:benchmarks python benchmarks/conditional_wyckoff_rescore.py \
        --npz generated.npz --key sg --limit 200 --samples 8 --rank-energy --workers 2
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
from common import unpack
from conditional_wyckoff_paper import (
    energy_ranked,
    reduced_formula,
    sample_energies,
    score,
    seen_formulas,
    test_sample,
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--npz", type=Path, required=True)
    p.add_argument("--key", default="sg", help="the benchmark mode the crystals came from")
    p.add_argument("--n", type=int, default=1000, help="rows of the run that saved them")
    p.add_argument("--limit", type=int, help="score the first rows only")
    p.add_argument("--samples", type=int, help="use the first samples of each row only")
    p.add_argument("--rank-energy", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    z = np.load(args.npz)
    crystals = unpack(z, args.key)
    per_row = len(crystals) // len(z["test_index"])
    refs, idx, rows = test_sample(args.n, 0, args.limit)
    if not np.array_equal(idx, z["test_index"][: len(idx)]):
        raise SystemExit("the saved rows are not the benchmark's rows")
    k = min(per_row, args.samples or per_row)
    gens = [crystals[i * per_row : i * per_row + k] for i in range(len(refs))]
    seen = seen_formulas()
    keep = np.array([reduced_formula(r["formula"]) not in seen for r in rows])
    requested = np.array([r["space_group"] for r in rows])
    out: dict[str, object] = {"npz": str(args.npz), "key": args.key, "rows": len(refs), "k": k}
    ranked = None
    if args.rank_energy:
        t = time.time()
        energies = sample_energies(gens, args.device)
        out["rank_s"] = round(time.time() - t, 1)
        ranked = {r: energy_ranked(gens, energies, r) for r in sorted({4, 8, k}) if r <= k}
    out["score"] = score(refs, gens, requested, keep, args.workers, ranked)
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
