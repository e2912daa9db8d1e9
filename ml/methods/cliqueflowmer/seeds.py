"""Seed materials for a design job: MP-20 rows that satisfy the request where possible.

Filtering reads only the tables (formula, atom count); CIFs are parsed for the chosen rows
alone, so a job does not parse the whole data set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ml.crystal import Crystal
from ml.request import Constraints

SEED_SPLITS = ("train", "val", "test")
_ELEMENT = re.compile(r"[A-Z][a-z]?")


@dataclass
class SeedPool:
    split: np.ndarray  # (M,) split name per row
    row: np.ndarray  # (M,) row in that split's table
    ids: np.ndarray
    formulas: np.ndarray
    n_atoms: np.ndarray

    def __len__(self) -> int:
        return len(self.row)


_POOL: SeedPool | None = None


def seed_pool() -> SeedPool:
    """All MP-20 rows with coordinates (loaded once per process)."""
    global _POOL
    if _POOL is None:
        from ml.data import load_table

        parts = []
        for split in SEED_SPLITS:
            t = load_table("mp20", split)
            parts.append(
                (
                    np.full(len(t), split),
                    np.arange(len(t)),
                    t["material_id"].astype(str).to_numpy(),
                    t["pretty_formula"].astype(str).to_numpy(),
                    t["n_atoms"].to_numpy(dtype=np.int64),
                )
            )
        _POOL = SeedPool(*(np.concatenate([p[i] for p in parts]) for i in range(5)))
    return _POOL


def _elements(formula: str) -> set[str]:
    return set(_ELEMENT.findall(formula))


def eligible_rows(pool: SeedPool, constraints: Constraints, max_atoms: int) -> np.ndarray:
    """Rows satisfying, in order of preference: all element constraints; allowed/excluded
    only; any row (decoding still masks disallowed elements). Atom count always applies."""
    small = pool.n_atoms <= max_atoms
    el = constraints.elements
    sets = [_elements(f) for f in pool.formulas]
    permitted = np.array([all(el.permits(e) for e in s) for s in sets])
    required = np.array([all(r in s for r in el.required) for s in sets])
    for mask in (small & permitted & required, small & permitted):
        if mask.any():
            return np.flatnonzero(mask)
    return np.flatnonzero(small)


def choose_seeds(
    constraints: Constraints, n: int, max_atoms: int, rng: np.random.Generator
) -> tuple[list[Crystal], list[str]]:
    """``n`` seed crystals (repeats only when fewer eligible rows exist) and their ids."""
    from ml.data.cache import get_store

    pool = seed_pool()
    rows = eligible_rows(pool, constraints, max_atoms)
    if len(rows) == 0:
        raise ValueError(f"no MP-20 material has at most {max_atoms} atoms")
    order = rng.permutation(rows)
    if constraints.charge_neutral:
        from ml.constraints import is_charge_neutral

        # Prefer neutral seeds; check only as many rows as needed (checks cost ~ms each).
        head = order[: max(20 * n, 200)]
        neutral = [i for i in head if is_charge_neutral(str(pool.formulas[i]))]
        taken = set(neutral)
        rest = [i for i in order if i not in taken]
        order = np.array(neutral + rest, dtype=np.int64)
    picked = order[:n] if len(order) >= n else rng.choice(order, size=n, replace=True)
    crystals, ids = [], []
    for i in picked:
        crystal = get_store("mp20", str(pool.split[i])).crystal_at(int(pool.row[i]))
        if crystal is None:
            continue
        crystals.append(crystal)
        ids.append(str(pool.ids[i]))
    return crystals, ids
