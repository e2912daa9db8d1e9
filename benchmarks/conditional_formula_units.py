"""The ``conditional`` method on a fixed composition in a space group that needs several
formula units: what comes out (cell size, formula units, the space group spglib finds).

    PYTHONPATH=. python benchmarks/conditional_formula_units.py            # LiFePO4/62, ZnO/186
    PYTHONPATH=. python benchmarks/conditional_formula_units.py --n 8 --case ZnO:186:20
    PYTHONPATH=. python benchmarks/conditional_formula_units.py --model wyckoff  # v2 checkpoint
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

from ml.constraints import constraint_violations, space_group_number
from ml.evaluation.validity import check_validity
from ml.methods.base import Candidate, MethodContext
from ml.methods.conditional.method import ConditionalMethod
from ml.request import DesignRequest


def run(
    formula: str,
    space_group: int,
    max_atoms: int,
    n: int,
    seed: int,
    params: dict[str, float | str],
) -> None:
    request = DesignRequest(
        method="conditional",
        constraints={"composition": formula, "space_groups": [space_group], "max_atoms": max_atoms},
        num_candidates=n,
        relax=False,
        seed=seed,
        params=params,
    )
    method = ConditionalMethod()
    params = method.validate(request)
    t0 = time.perf_counter()
    cands: list[Candidate] = [
        c
        for e in method.run(request, params, MethodContext(device="cpu"))
        if isinstance(e, list)
        for c in e
    ]
    took = time.perf_counter() - t0
    print(f"== {formula} in {space_group}, max_atoms {max_atoms}, params {params}:")
    print(f"   {len(cands)} candidates in {took:.1f} s (CPU)")
    groups: Counter[int | None] = Counter()
    hits = 0
    for c in cands:
        sg = space_group_number(c.crystal)
        groups[sg] += 1
        valid = bool(check_validity(c.crystal))
        bad = constraint_violations(c.crystal, request.constraints, space_group=sg)
        hits += valid and not bad
        print(
            f"  {c.crystal.formula:>14} atoms {c.crystal.num_atoms:3d} Z {c.meta['formula_units']}"
            f"  spglib(0.1) {sg}  spglib(0.5) {space_group_number(c.crystal, 0.5)}"
            f"  symmetrized {c.meta.get('symmetrized', 'n/a (wyckoff)')}  valid {valid}"
            f"  violations {bad}"
        )
    print(f"  space groups found: {dict(groups)}; valid and meeting all constraints: {hits}/{n}")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--case", action="append", help="FORMULA:SPACEGROUP:MAX_ATOMS")
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument(
        "--model", choices=["wyckoff", "free-cell"], default=None, help="default: the method's"
    )
    args = p.parse_args()
    params = {k: v for k in ("guidance", "steps", "model") if (v := getattr(args, k)) is not None}
    for case in args.case or ["LiFePO4:62:30", "ZnO:186:20"]:
        formula, sg, max_atoms = case.split(":")
        run(formula, int(sg), int(max_atoms), args.n, args.seed, params)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
