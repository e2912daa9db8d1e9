"""Charge neutrality of compositions given as atom counts, and per-element tables.

:func:`is_neutral` is :func:`ml.constraints.is_charge_neutral` (the pipeline's check: ICSD
oxidation states from SMACT, one sign per element, on the reduced formula) without building a
pymatgen Composition, memoised on the counts: the environment asks it for every state it
visits. A test keeps the two equal.
"""

from __future__ import annotations

import math
import warnings
from functools import cache, lru_cache

import numpy as np

from ml.constraints import oxidation_states

__all__ = ["element_features", "hhi_table", "is_neutral", "mass_table", "symbol"]

MAX_Z = 94


@cache
def symbol(z: int) -> str:
    from pymatgen.core import Element

    return Element.from_Z(z).symbol


@cache
def _signed_states(z: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    states = oxidation_states(symbol(z))
    return tuple(s for s in states if s > 0), tuple(s for s in states if s < 0)


@lru_cache(maxsize=1 << 16)
def _reach(z: int, n: int) -> frozenset[int]:
    """Total charges n atoms of element z reach, all of one sign (mixed valence allowed)."""
    out: set[int] = set()
    for states in _signed_states(z):
        sums = {0}
        for _ in range(n):
            sums = {a + s for a in sums for s in states}
        if states:
            out |= sums
    return frozenset(out)


@lru_cache(maxsize=1 << 20)
def is_neutral(composition: tuple[tuple[int, int], ...]) -> bool:
    """Strict charge neutrality of ((Z, atoms), ...) (atoms > 0), on the reduced formula."""
    if len(composition) < 2:
        return False
    g = math.gcd(*(n for _, n in composition))
    totals = {0}
    for z, n in composition:
        reach = _reach(z, n // g)
        if not reach:
            return False
        totals = {t + r for t in totals for r in reach}
    return 0 in totals


@cache
def mass_table() -> np.ndarray:
    """Atomic mass (amu) by atomic number, index 0 unused."""
    from pymatgen.core import Element

    out = np.zeros(MAX_Z + 1)
    for z in range(1, MAX_Z + 1):
        out[z] = float(Element.from_Z(z).atomic_mass)
    return out


@cache
def hhi_table() -> np.ndarray:
    """Production HHI by atomic number (NaN where pymatgen has no value): the HHI of a
    composition is the mass-fraction-weighted sum, as pymatgen's HHIModel."""
    from ml.oracles.exact import _hhi_model

    model = _hhi_model()
    out = np.full(MAX_Z + 1, np.nan)
    for z in range(1, MAX_Z + 1):
        values = model.symbol_hhip_hhir.get(symbol(z))
        if values is not None and values[0] is not None:
            out[z] = float(values[0])
    return out


ELEMENT_FEATURES = (
    "electronegativity",
    "atomic_radius",
    "row",
    "group",
    "atomic_mass",
    "mendeleev_no",
    "max_oxidation",
    "min_oxidation",
    "is_metal",
)


@cache
def element_features() -> np.ndarray:
    """(MAX_Z + 1, F) static physical properties (pymatgen; missing values are the column
    mean), standardised per column: the proxy's physical element embedding (PhAST-like)."""
    from pymatgen.core import Element

    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns about missing data
        for z in range(1, MAX_Z + 1):
            el = Element.from_Z(z)
            pos, neg = _signed_states(z)
            rows.append(
                [
                    float(el.X) if el.X == el.X else np.nan,
                    float(el.atomic_radius) if el.atomic_radius is not None else np.nan,
                    float(el.row),
                    float(el.group),
                    float(el.atomic_mass),
                    float(el.mendeleev_no) if el.mendeleev_no is not None else np.nan,
                    float(max(pos, default=0)),
                    float(min(neg, default=0)),
                    float(el.is_metal),
                ]
            )
    x = np.array(rows, dtype=np.float64)
    mean = np.nanmean(x, axis=0)
    x = np.where(np.isnan(x), mean, x)
    x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-6)
    return np.concatenate([np.zeros((1, x.shape[1])), x]).astype(np.float32)
