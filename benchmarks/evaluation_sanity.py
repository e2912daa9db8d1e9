"""Sanity figures for the evaluation checks on real data (no models needed).

On the first ``--n`` MP-20 test structures (real, DFT-relaxed materials) prints: validity rate,
strict charge-neutrality rate, neutrality with the all-metal exemption, uniqueness within the
set, novelty against the full reference set (must be 0: they are in it) and against the
reference set without mp20/test (how many reappear in another split, and how many share a
formula with an MP-20 train material known only by formula), with the basis of each verdict
and per-structure timings. Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/evaluation_sanity.py --n 1000
"""

from __future__ import annotations

import argparse
import platform
import time
from collections import Counter

from ml.constraints import is_charge_neutral, neutrality_ok
from ml.data import load_records, reference_formula_index
from ml.evaluation.novelty import get_reference_set
from ml.evaluation.uniqueness import PreparedStructure, unique_flags
from ml.evaluation.validity import check_validity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()

    t0 = time.perf_counter()
    records = load_records("mp20", "test", limit=args.n)
    t_load = time.perf_counter() - t0
    crystals = [r.crystal for r in records]
    n = len(crystals)
    print(f"machine: {platform.processor() or platform.machine()}, {n} MP-20 test structures")
    print(f"load (parse or cache): {t_load:.2f} s")

    t0 = time.perf_counter()
    valid = [check_validity(c).valid for c in crystals]
    t_valid = time.perf_counter() - t0
    print(f"valid: {sum(valid)}/{n} ({t_valid / n * 1e3:.2f} ms/structure)")

    t0 = time.perf_counter()
    strict = [is_charge_neutral(r.formula) for r in records]
    t_neutral = time.perf_counter() - t0
    relaxed = [neutrality_ok(r.formula, requested=False) for r in records]
    print(
        f"charge neutral (strict): {sum(strict)}/{n} = {sum(strict) / n:.3f}; "
        f"with all-metal exemption: {sum(relaxed)}/{n} = {sum(relaxed) / n:.3f} "
        f"({t_neutral / n * 1e3:.3f} ms/structure, cold cache)"
    )

    t0 = time.perf_counter()
    prepared = [PreparedStructure(c) for c in crystals]
    t_prep = time.perf_counter() - t0
    t0 = time.perf_counter()
    unique = unique_flags(prepared)
    t_unique = time.perf_counter() - t0
    print(
        f"unique within the set: {sum(unique)}/{n} (primitive cells {t_prep / n * 1e3:.2f} "
        f"ms/structure, matching {t_unique:.2f} s total)"
    )

    t0 = time.perf_counter()
    reference_formula_index()
    t_index = time.perf_counter() - t0
    variants: list[tuple[str, tuple[tuple[str, str], ...]]] = [
        ("full reference", ()),
        ("reference without mp20/test", (("mp20", "test"),)),
    ]
    for label, exclude in variants:
        refs = get_reference_set(exclude_splits=exclude)
        t0 = time.perf_counter()
        verdicts = [refs.judge(p) for p in prepared]
        t_novel = time.perf_counter() - t0
        novel = sum(v.novel for v in verdicts)
        bases = Counter(v.basis for v in verdicts)
        print(
            f"novel vs {label}: {novel}/{n} = {novel / n:.3f} "
            f"({t_novel / n * 1e3:.1f} ms/structure incl. lazy reference parsing); "
            f"basis: {dict(sorted(bases.items()))}"
        )
    print(f"formula index build: {t_index:.2f} s")


if __name__ == "__main__":
    main()
