"""Composition proposal for requests that give no composition.

Two sources, ranked by one data-mined plausibility score:

* training-set compositions (MP-20 train index + val tables: formulas and cell sizes, no
  structures needed) that satisfy the element, size and neutrality constraints;
* charge-neutral stoichiometries enumerated over the allowed elements: every subset of 2-4
  elements (containing the required ones), one ICSD oxidation state per element (SMACT's
  icsd24 list via :mod:`ml.constraints`), every integer ratio with at most
  ``MAX_AMOUNT`` of each element whose charges sum to zero.

Plausibility (higher is better), mined from the training tables:
``log(1 + #entries with this stoichiometry prototype, e.g. ABC3)
+ mean pointwise mutual information of the element pairs
+ log(1 + #entries with this exact formula) + log P(formula units per cell)``.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
from pymatgen.core import Composition, Element

from ml.constraints import elements_ok, neutrality_ok, oxidation_states
from ml.request import Constraints

MAX_AMOUNT = 8  # most atoms of one element per formula unit when enumerating
MAX_ELEMENTS = 4
MAX_Z = 8  # most formula units per cell when enumerating
POOL_SIZE = 10  # elements considered for enumeration (required first, then most related)


@dataclass(frozen=True)
class ProposedComposition:
    numbers: tuple[int, ...]  # atomic numbers of one cell, sorted
    formula: str  # reduced formula
    score: float
    source: str  # "training" or "enumerated"

    @property
    def num_atoms(self) -> int:
        return len(self.numbers)


def prototype(comp: Composition) -> str:
    """Anonymous stoichiometry of the reduced formula, e.g. SrTiO3 -> 'ABC3' (sorted amounts)."""
    amounts = sorted(round(a) for a in comp.reduced_composition.values())
    return "".join(chr(ord("A") + i) + (str(a) if a != 1 else "") for i, a in enumerate(amounts))


@dataclass
class CompositionStats:
    formulas: Counter[str]  # reduced formula -> entries
    cell_sizes: dict[str, Counter[int]]  # reduced formula -> atoms per cell seen
    prototypes: Counter[str]
    symbols: dict[str, tuple[str, ...]]  # reduced formula -> its elements
    elements: Counter[str]  # entries containing the element
    pairs: Counter[tuple[str, str]]  # entries containing both (sorted pair)
    z_counts: Counter[int]  # formula units per cell
    total: int

    @classmethod
    def from_formulas(cls, rows: Iterable[tuple[str, int]]) -> CompositionStats:
        s = cls(Counter(), {}, Counter(), {}, Counter(), Counter(), Counter(), 0)
        for formula, n_atoms in rows:
            comp = Composition(formula)
            reduced = comp.reduced_formula
            symbols = sorted(el.symbol for el in comp.elements)
            n_fu = comp.reduced_composition.num_atoms
            s.formulas[reduced] += 1
            s.cell_sizes.setdefault(reduced, Counter())[int(n_atoms)] += 1
            s.symbols[reduced] = tuple(symbols)
            s.prototypes[prototype(comp)] += 1
            s.elements.update(symbols)
            s.pairs.update(itertools.combinations(symbols, 2))
            s.z_counts[max(1, round(n_atoms / n_fu))] += 1
            s.total += 1
        return s

    def pmi(self, a: str, b: str) -> float:
        """Smoothed pointwise mutual information of two elements: log of observed over expected
        co-occurrences, each plus one, so rare elements shrink towards 0."""
        pair = self.pairs[(a, b) if a < b else (b, a)]
        expected = self.elements[a] * self.elements[b] / max(self.total, 1)
        return math.log((pair + 1.0) / (expected + 1.0))

    def score(self, comp: Composition, z: int) -> float:
        symbols = sorted(el.symbol for el in comp.elements)
        pairs = list(itertools.combinations(symbols, 2))
        affinity = float(np.mean([self.pmi(a, b) for a, b in pairs])) if pairs else 0.0
        z_prob = (self.z_counts[z] + 1) / (self.total + len(self.z_counts) + 1)
        return (
            math.log1p(self.prototypes[prototype(comp)])
            + affinity
            + math.log1p(self.formulas[comp.reduced_formula])
            + math.log(z_prob)
        )


@cache
def training_stats() -> CompositionStats:
    """Statistics of MP-20 train (all 27,136 formulas of its index) and val."""
    from ml.data import load_table

    rows: list[tuple[str, int]] = []
    for split in ("train_index", "val"):
        table = load_table("mp20", split)
        rows += zip(table["pretty_formula"].astype(str), table["n_atoms"].astype(int), strict=True)
    return CompositionStats.from_formulas(rows)


def cell_numbers(reduced: Composition, z: int) -> tuple[int, ...]:
    out: list[int] = []
    for el, amount in reduced.items():
        out += [Element(el.symbol).Z] * (z * round(amount))
    return tuple(sorted(out))


def _neutral_ratios(symbols: Sequence[str]) -> set[tuple[int, ...]]:
    """Reduced integer amounts (each 1..MAX_AMOUNT) with zero total charge for some choice of
    one oxidation state per element."""
    k = len(symbols)
    grids = np.array(list(itertools.product(range(1, MAX_AMOUNT + 1), repeat=k)))
    grids = grids[np.gcd.reduce(grids, axis=1) == 1]
    states = [oxidation_states(s) for s in symbols]
    if any(not st for st in states):
        return set()
    found: set[tuple[int, ...]] = set()
    for combo in itertools.product(*states):
        if min(combo) > 0 or max(combo) < 0:
            continue
        hits = grids[grids @ np.array(combo) == 0]
        found.update(tuple(int(v) for v in row) for row in hits)
    return found


def _element_pool(constraints: Constraints, stats: CompositionStats) -> list[str]:
    usable = [s for s in constraints.elements.usable() if oxidation_states(s)]
    required = [s for s in constraints.elements.required if s in usable]
    others = [s for s in usable if s not in required]

    def relatedness(s: str) -> float:
        if required:
            return sum(stats.pmi(s, r) for r in required) + 0.1 * math.log1p(stats.elements[s])
        return math.log1p(stats.elements[s])

    others.sort(key=lambda s: (-relatedness(s), s))
    return required + others[: max(0, POOL_SIZE - len(required))]


def enumerate_compositions(
    constraints: Constraints, stats: CompositionStats
) -> list[ProposedComposition]:
    pool = _element_pool(constraints, stats)
    required = set(constraints.elements.required)
    out: list[ProposedComposition] = []
    for k in range(2, min(MAX_ELEMENTS, len(pool)) + 1):
        for subset in itertools.combinations(pool, k):
            if not required <= set(subset):
                continue
            for ratio in _neutral_ratios(subset):
                comp = Composition(dict(zip(subset, ratio, strict=True)))
                n_fu = int(sum(ratio))
                for z in range(1, min(MAX_Z, constraints.max_atoms // n_fu) + 1):
                    out.append(
                        ProposedComposition(
                            cell_numbers(comp.reduced_composition, z),
                            comp.reduced_formula,
                            stats.score(comp, z),
                            "enumerated",
                        )
                    )
    return out


def training_compositions(
    constraints: Constraints, stats: CompositionStats
) -> list[ProposedComposition]:
    out: list[ProposedComposition] = []
    for formula, sizes in stats.cell_sizes.items():
        if not elements_ok(stats.symbols[formula], constraints.elements):
            continue
        comp = Composition(formula)
        if not neutrality_ok(comp, requested=constraints.charge_neutral):
            continue
        n_fu = round(comp.reduced_composition.num_atoms)
        for n_atoms in sorted(sizes):
            if n_atoms > constraints.max_atoms or n_atoms % n_fu:
                continue
            z = n_atoms // n_fu
            out.append(
                ProposedComposition(
                    cell_numbers(comp.reduced_composition, z),
                    formula,
                    stats.score(comp, z),
                    "training",
                )
            )
    return out


def propose_compositions(
    constraints: Constraints,
    count: int,
    stats: CompositionStats | None = None,
    avoid: Collection[str] = (),
) -> list[ProposedComposition]:
    """Up to ``count`` distinct cell compositions satisfying ``constraints``, best first;
    reduced formulas in ``avoid`` (e.g. known materials) come after all others.

    Deterministic: ties are broken by formula and cell size."""
    stats = stats or training_stats()
    found: dict[tuple[int, ...], ProposedComposition] = {}
    candidates = training_compositions(constraints, stats) + enumerate_compositions(
        constraints, stats
    )
    for c in candidates:
        if len(c.numbers) > constraints.max_atoms:
            continue
        if not neutrality_ok(Composition(c.formula), requested=constraints.charge_neutral):
            continue
        best = found.get(c.numbers)
        if best is None or c.score > best.score:
            found[c.numbers] = c
    ranked = sorted(
        found.values(), key=lambda c: (c.formula in avoid, -c.score, c.formula, c.num_atoms)
    )
    return ranked[:count]
