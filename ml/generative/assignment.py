"""Which space groups and Wyckoff assignments to generate a composition in.

Statistical prior, counted on MP-20 train + val in the Wyckoff representation (template counts
also on the MP 2018 structures outside MP-20, up to 200 atoms, when loaded ``with_extra``):

* space group given a composition: P(sg | reduced formula) backed off to P(sg | stoichiometry
  prototype, e.g. AB2C4) backed off to P(sg | number of elements) (additive smoothing at each
  level), restricted to groups whose Wyckoff positions fit the atom counts;
* Wyckoff assignment given (space group, atoms per element in the conventional cell): every
  assignment whose multiplicities sum to the counts (positions without free parameters used at
  most once) is enumerated depth-first with a bound, plus every known template that fits the
  counts (the bound misses some in large cells), and ranked (``ranking="v2"``) by
  ``8 log(1 + #training crystals with the same template)
  + 4 log(1 + #those with the same letters on the elements ordered by electronegativity)
  + sum log P(letter | sg, element)`` (backed off to P(letter | sg)), where a template is the
  multiset, over elements, of each element's multiset of letters; ``ranking="v1"`` (before
  2026-12-05, 6 points lower top-1 on MP-20 val, benchmarks/template_ranking.py) is
  ``2 log(1 + #template) + sum log P(letter | sg)``. Assignments that cannot have the group
  (generic parameters give a supergroup) are dropped.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache, cached_property
from pathlib import Path

import numpy as np
import spglib
from pymatgen.core import Composition, Element

from ml.generative.wyckoff import _group, multiplicity, orbit_ops, wyckoff_letter
from ml.symmetry import centring, compatible

__all__ = [
    "Assignment",
    "TemplateStats",
    "enumerate_assignments",
    "template_key",
]

MAX_RESULTS = 500  # assignments enumerated per (composition, space group) at most
MAX_ORBITS_PER_ELEMENT = 8


# Template counts of MP 2018 structures outside MP-20, up to 200 atoms
# (ml.tools.build_template_counts).
EXTRA_TEMPLATES_PATH = Path(__file__).parent / "data" / "mp2018_extra_templates.json.gz"
# Letters per element and electronegativity-ordered templates of MP-20 train + val, for
# checkpoints saved before TemplateStats counted them (ml.tools.build_template_counts
# --elements).
ELEMENT_STATS_PATH = Path(__file__).parent / "data" / "mp20_element_letters.json.gz"
RANKINGS = ("v1", "v2")
BACKOFF = 2.0  # pseudo-orbits of P(letter | sg) in P(letter | sg, element)


def template_key(space_group: int, letters_by_element: Sequence[Sequence[str]]) -> tuple:
    return (space_group, tuple(sorted(tuple(sorted(ls)) for ls in letters_by_element)))


@cache
def _electronegativity(z: int) -> float:
    import warnings

    with warnings.catch_warnings():  # pymatgen warns for the noble gases
        warnings.simplefilter("ignore")
        x = Element.from_Z(z).X
    return 0.0 if x is None or math.isnan(x) else float(x)  # noble gases: no value


def electronegativity_order(numbers: Iterable[int]) -> list[int]:
    """Distinct elements, most electronegative (the anion, usually) first."""
    return sorted(set(numbers), key=lambda z: (-_electronegativity(z), z))


def ordered_key(space_group: int, orbits: Sequence[tuple[str, int]]) -> tuple:
    """A template whose elements keep their role: letters per element, elements ordered by
    electronegativity (NaCl and KBr share one, and so do MgAl2O4 and ZnCr2S4)."""
    return (
        space_group,
        tuple(
            tuple(sorted(x for x, z in orbits if z == e))
            for e in electronegativity_order(z for _, z in orbits)
        ),
    )


def prototype(amounts: Sequence[int]) -> tuple[int, ...]:
    """Sorted reduced amounts, e.g. MgAl2O4 -> (1, 2, 4)."""
    g = math.gcd(*amounts) if amounts else 1
    return tuple(sorted(a // g for a in amounts))


def chemistry_key(amounts: Mapping[str, int], level: str) -> tuple:
    """The composition with its elements replaced by a chemical class, as sorted (reduced
    amount, class) pairs. ``level`` "class": the element's block and whether it is anion-like
    (Pauling electronegativity above 2.5), so SrTiO3 and BaZrO3 share (1, (s, 0)), (1, (d, 0)),
    (3, (p, 1)); "group": its periodic-table group. Formulas unseen in training are common
    (MP-20's test formulas are mostly new), and their chemistry tells the likely group far
    better than the bare prototype: on MP-20 val (counts from train) the top-1 group of
    P(sg | composition) is the crystal's own for 0.213 of 3,000 crystals without these levels,
    0.341 with them (benchmarks/RESULTS.md, thirteenth session)."""
    g = math.gcd(*amounts.values()) if amounts else 1
    return tuple(sorted((v // g, _element_class(s, level)) for s, v in amounts.items()))


@cache
def _element_class(symbol: str, level: str) -> tuple[str, int] | int:
    el = Element(symbol)
    if level == "group":
        return el.group
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # noble gases: "No Pauling electronegativity"
        x = el.X
    return (el.block, int(x > 2.5))  # NaN compares False: not anion-like


@dataclass
class Assignment:
    space_group: int
    orbits: list[tuple[str, int]]  # (letter, atomic number)
    score: float


@dataclass
class TemplateStats:
    by_formula: dict[str, Counter[int]] = field(default_factory=dict)
    by_prototype: dict[tuple[int, ...], Counter[int]] = field(default_factory=dict)
    by_nelements: dict[int, Counter[int]] = field(default_factory=dict)
    letters: Counter[tuple[int, str]] = field(default_factory=Counter)
    groups: Counter[int] = field(default_factory=Counter)
    templates: Counter[tuple] = field(default_factory=Counter)
    # Counts from outside the training data (EXTRA_TEMPLATES_PATH), added when ranking
    # assignments only; not part of a checkpoint.
    extra_templates: Counter[tuple] = field(default_factory=Counter)
    extra_ordered: Counter[tuple] = field(default_factory=Counter)
    # (sg, letter, atomic number) orbits and ordered_key counts (empty in checkpoints saved
    # before 2026-12-05: with_elements() loads MP-20's).
    element_letters: Counter[tuple[int, str, int]] = field(default_factory=Counter)
    ordered_templates: Counter[tuple] = field(default_factory=Counter)
    ranking: str = "v2"
    # P(sg | composition): "chemistry" (2026-12-05) backs off through the composition's
    # chemistry (chemistry_key) between the prototype and the formula; "v1" does not.
    space_group_prior: str = "chemistry"

    @classmethod
    def from_arrays(cls, arrays) -> TemplateStats:  # type: ignore[no-untyped-def]
        """Counts from :class:`ml.methods.conditional.wyckoff_data.WyckoffArrays`."""
        s = cls()
        o = arrays.offsets
        for i in range(len(arrays)):
            sg = int(arrays.space_group[i])
            by_el: dict[int, list[str]] = {}
            counts: Counter[int] = Counter()
            orbits = []
            for k in range(o[i], o[i + 1]):
                letter = wyckoff_letter(int(arrays.wid[k]))[1]
                z = int(arrays.number[k])
                by_el.setdefault(z, []).append(letter)
                counts[z] += multiplicity(sg, letter)
                s.letters[(sg, letter)] += 1
                s.element_letters[(sg, letter, z)] += 1
                orbits.append((letter, z))
            s.groups[sg] += 1
            s.templates[template_key(sg, list(by_el.values()))] += 1
            s.ordered_templates[ordered_key(sg, orbits)] += 1
            comp = Composition({Element.from_Z(z).symbol: c for z, c in counts.items()})
            s.by_formula.setdefault(comp.reduced_formula, Counter())[sg] += 1
            s.by_prototype.setdefault(prototype(list(counts.values())), Counter())[sg] += 1
            s.by_nelements.setdefault(len(counts), Counter())[sg] += 1
        return s

    def to_dict(self) -> dict:
        """Plain lists (for a checkpoint: the method needs no data set at run time)."""
        return {
            "by_formula": [[f, list(c.items())] for f, c in self.by_formula.items()],
            "by_prototype": [[list(p), list(c.items())] for p, c in self.by_prototype.items()],
            "by_nelements": [[n, list(c.items())] for n, c in self.by_nelements.items()],
            "letters": [[g, x, v] for (g, x), v in self.letters.items()],
            "groups": list(self.groups.items()),
            "templates": [[g, [list(ls) for ls in t], v] for (g, t), v in self.templates.items()],
            **self.element_dict(),
        }

    def element_dict(self) -> dict:
        return {
            "element_letters": [[g, x, z, v] for (g, x, z), v in self.element_letters.items()],
            "ordered_templates": [
                [g, [list(ls) for ls in t], v] for (g, t), v in self.ordered_templates.items()
            ],
        }

    @staticmethod
    def _element_counts(d: dict) -> dict:
        return {
            "element_letters": Counter(
                {(int(g), x, int(z)): v for g, x, z, v in d.get("element_letters", [])}
            ),
            "ordered_templates": Counter(
                {
                    (int(g), tuple(tuple(ls) for ls in t)): v
                    for g, t, v in d.get("ordered_templates", [])
                }
            ),
        }

    @classmethod
    def from_dict(cls, d: dict) -> TemplateStats:
        return cls(
            by_formula={f: Counter(dict(map(tuple, c))) for f, c in d["by_formula"]},
            by_prototype={tuple(p): Counter(dict(map(tuple, c))) for p, c in d["by_prototype"]},
            by_nelements={int(n): Counter(dict(map(tuple, c))) for n, c in d["by_nelements"]},
            letters=Counter({(int(g), x): v for g, x, v in d["letters"]}),
            groups=Counter(dict(map(tuple, d["groups"]))),
            templates=Counter(
                {(int(g), tuple(tuple(ls) for ls in t)): v for g, t, v in d["templates"]}
            ),
            **cls._element_counts(d),
        )

    # --- space groups ---------------------------------------------------------------------
    def space_group_probs(self, amounts: Mapping[str, int]) -> dict[int, float]:
        """P(sg | composition) over all 230 groups (hierarchical additive smoothing: all
        groups, then the number of elements, the prototype, with the "chemistry" prior the
        composition's chemistry at two resolutions, and the formula)."""
        total = sum(self.groups.values()) or 1
        p = {g: (self.groups[g] + 0.1) / (total + 23.0) for g in range(1, 231)}
        formula = Composition(dict(amounts)).reduced_formula
        levels = [
            (self.by_nelements.get(len(amounts), Counter()), 5.0),
            (self.by_prototype.get(prototype(list(amounts.values())), Counter()), 2.0),
        ]
        if self.space_group_prior == "chemistry":
            for level, alpha in (("class", 2.0), ("group", 1.0)):
                counts = self._by_chemistry[level].get(chemistry_key(amounts, level), Counter())
                levels.append((counts, alpha))
        levels.append((self.by_formula.get(formula, Counter()), 1.0))
        for counts, alpha in levels:
            n = sum(counts.values())
            p = {g: (counts[g] + alpha * p[g]) / (n + alpha) for g in p}
        return p

    @cached_property
    def _by_chemistry(self) -> dict[str, dict[tuple, Counter[int]]]:
        """Space-group counts per chemistry_key, summed over the training formulas."""
        out: dict[str, dict[tuple, Counter[int]]] = {"class": {}, "group": {}}
        for formula, counts in self.by_formula.items():
            amounts = {el.symbol: int(v) for el, v in Composition(formula).items()}
            for level, table in out.items():
                table.setdefault(chemistry_key(amounts, level), Counter()).update(counts)
        return out

    def propose_space_groups(
        self, amounts: Mapping[str, int], count: int, formula_units: Sequence[int] = range(1, 9)
    ) -> list[tuple[int, float]]:
        """The ``count`` likeliest groups (with probability) in which a primitive cell of
        some number of formula units in ``formula_units`` fits the Wyckoff positions."""
        probs = self.space_group_probs(amounts)
        out = []
        for g, pr in sorted(probs.items(), key=lambda kv: (-kv[1], kv[0])):
            if any(compatible(g, [z * a for a in amounts.values()]) for z in formula_units):
                out.append((g, pr))
                if len(out) == count:
                    break
        return out

    # --- Wyckoff assignments --------------------------------------------------------------
    @cached_property
    def _orbits_per_group(self) -> Counter[int]:
        out: Counter[int] = Counter()
        for (g, _), v in self.letters.items():
            out[g] += v
        return out

    @cached_property
    def _logp(self) -> dict[tuple[int, str], float]:
        return {}

    def letter_logp(self, space_group: int, letter: str) -> float:
        key = (space_group, letter)
        if key not in self._logp:
            n = self._orbits_per_group[space_group]
            k = len(_group(space_group))
            self._logp[key] = math.log((self.letters[key] + 0.5) / (n + 0.5 * k))
        return self._logp[key]

    def score(self, space_group: int, by_element: Sequence[Sequence[str]]) -> float:
        """The v1 score (elements anonymised)."""
        key = template_key(space_group, by_element)
        lp = sum(self.letter_logp(space_group, x) for ls in by_element for x in ls)
        return 2.0 * math.log1p(self.templates[key] + self.extra_templates[key]) + lp

    @cached_property
    def _element_orbits(self) -> Counter[tuple[int, int]]:
        out: Counter[tuple[int, int]] = Counter()
        for (g, _, z), v in self.element_letters.items():
            out[(g, z)] += v
        return out

    def element_letter_logp(self, space_group: int, letter: str, number: int) -> float:
        """log P(letter | sg, element), backed off to P(letter | sg): which sites an element
        takes (O on the general position, a large cation on the inversion centre)."""
        prior = math.exp(self.letter_logp(space_group, letter))
        c = self.element_letters[(space_group, letter, number)]
        return math.log(
            (c + BACKOFF * prior) / (self._element_orbits[(space_group, number)] + BACKOFF)
        )

    def score_orbits(self, space_group: int, orbits: Sequence[tuple[str, int]]) -> float:
        """Score of an assignment ((letter, atomic number) per orbit) under ``ranking``."""
        by_el: dict[int, list[str]] = {}
        for x, z in orbits:
            by_el.setdefault(z, []).append(x)
        if self.ranking == "v1":
            return self.score(space_group, list(by_el.values()))
        key = template_key(space_group, list(by_el.values()))
        n = self.templates[key] + self.extra_templates[key]
        okey = ordered_key(space_group, orbits)
        n_ordered = self.ordered_templates[okey] + self.extra_ordered[okey]
        lp = sum(self.element_letter_logp(space_group, x, z) for x, z in orbits)
        return 8.0 * math.log1p(n) + 4.0 * math.log1p(n_ordered) + lp

    def with_elements(self, path: Path = ELEMENT_STATS_PATH) -> TemplateStats:
        """These statistics with MP-20 train + val's letters per element and ordered templates
        (from ``path``) where they have none (a checkpoint saved before they were counted)."""
        import gzip
        import json

        if self.element_letters or not path.exists():
            return self
        with gzip.open(path, "rt") as fh:
            return replace(self, **self._element_counts(json.load(fh)))

    @cached_property
    def _known(self) -> dict[tuple[int, tuple[int, ...]], list[tuple[tuple[str, ...], ...]]]:
        """Known templates (training + extra counts) by (space group, sorted atoms per
        element): the bounded search can miss them in large cells."""
        out: dict[tuple[int, tuple[int, ...]], list[tuple[tuple[str, ...], ...]]] = {}
        for g, letters in set(self.templates) | set(self.extra_templates):
            sums = tuple(sorted(sum(multiplicity(g, x) for x in ls) for ls in letters))
            out.setdefault((g, sums), []).append(letters)
        return out

    def known_templates(
        self, space_group: int, counts: Mapping[int, int]
    ) -> list[tuple[tuple[str, ...], ...]]:
        return self._known.get((space_group, tuple(sorted(counts.values()))), [])

    def with_extra(self, path: Path = EXTRA_TEMPLATES_PATH) -> TemplateStats:
        """These statistics with the template counts at ``path`` (when present) added to the
        assignment ranking: larger cells than MP-20's, whose templates it never saw."""
        import gzip
        import json

        if not path.exists():
            return self
        with gzip.open(path, "rt") as fh:
            d = json.load(fh)
        extra = Counter(
            {(int(g), tuple(tuple(ls) for ls in t)): int(v) for g, t, v in d["templates"]}
        )
        ordered = self._element_counts(d)["ordered_templates"]  # absent in older files
        return replace(self, extra_templates=extra, extra_ordered=ordered)


def _element_options(
    positions: Sequence[tuple[str, int, bool]], count: int, limit: int
) -> list[list[int]]:
    """Multisets (as index lists into ``positions``, non-decreasing) whose multiplicities sum to
    ``count``; fixed positions (no free parameter) at most once."""
    out: list[list[int]] = []

    def rec(start: int, left: int, chosen: list[int]) -> None:
        if len(out) >= limit:
            return
        if left == 0:
            out.append(list(chosen))
            return
        if len(chosen) >= MAX_ORBITS_PER_ELEMENT:
            return
        for i in range(start, len(positions)):
            _, m, has_free = positions[i]
            if m > left:
                continue
            chosen.append(i)
            rec(i if has_free else i + 1, left - m, chosen)
            chosen.pop()

    rec(0, count, [])
    return out


def faithful(space_group: int, orbits: tuple[tuple[str, int], ...]) -> bool:
    """Whether an assignment, with generic free parameters and lattice, has exactly this space
    group. Some do not: e.g. Zn and O both on 2a of P6_3mc put every atom on the c axis with
    a c/2 translation, which is P6mm with half the cell, whatever the parameters."""
    # Symmetry sees only which orbits hold the same element, not which element: relabelled
    # elements share one cached answer (ZnO and MgO on the same letters).
    labels: dict[int, int] = {}
    pattern = tuple((x, labels.setdefault(z, len(labels) + 1)) for x, z in orbits)
    return _faithful_pattern(space_group, pattern)


@cache
def _faithful_pattern(space_group: int, orbits: tuple[tuple[str, int], ...]) -> bool:
    from ml.generative.wyckoff import Orbit, WyckoffCrystal

    rng = np.random.default_rng(len(orbits))  # fixed: the answer must not vary between calls
    ws = WyckoffCrystal(
        space_group,
        np.array([4.1, 5.3, 6.7, 81.0, 97.0, 109.0]),
        [Orbit(x, z, tuple(rng.uniform(0.05, 0.95, 3))) for x, z in orbits],
    )
    c = ws.conventional()
    ds = spglib.get_symmetry_dataset((c.lattice, c.frac_coords, c.numbers), symprec=1e-3)
    return ds is not None and int(ds.number) == space_group


def enumerate_assignments(
    space_group: int,
    counts: Mapping[int, int],
    stats: TemplateStats | None = None,
    limit: int = MAX_RESULTS,
    keep: int | None = None,
) -> list[Assignment]:
    """Wyckoff assignments of a conventional cell with ``counts`` (atomic number -> atoms),
    best first (by ``stats``; without stats, fewest orbits first). ``keep``: return only the
    best ``keep`` that are :func:`faithful` (checked lazily, in rank order)."""
    positions = []
    for wp in _group(space_group):
        _, _, free = orbit_ops(space_group, wp.letter)
        positions.append((wp.letter, int(wp.multiplicity), bool(free.any())))
    # Frequent letters first, so the bounded search meets the likely assignments early.
    if stats is not None:
        positions.sort(key=lambda p: -stats.letter_logp(space_group, p[0]))
    elements = sorted(counts, key=lambda z: -counts[z])
    per_element = [_element_options(positions, counts[z], limit) for z in elements]
    if any(not opts for opts in per_element):
        return []
    results: list[Assignment] = []

    def rec(k: int, used_fixed: set[int], chosen: list[list[int]]) -> None:
        if len(results) >= limit:
            return
        if k == len(elements):
            orbits = [(positions[i][0], elements[e]) for e, c in enumerate(chosen) for i in c]
            score = (
                stats.score_orbits(space_group, orbits)
                if stats is not None
                else -float(len(orbits))
            )
            results.append(Assignment(space_group, orbits, score))
            return
        for opt in per_element[k]:
            fixed = {i for i in opt if not positions[i][2]}
            if fixed & used_fixed:
                continue
            chosen.append(opt)
            rec(k + 1, used_fixed | fixed, chosen)
            chosen.pop()

    rec(0, set(), [])
    if stats is not None and stats.ranking != "v1":
        seen = {tuple(sorted(a.orbits)) for a in results}
        for orbits in _known_assignments(space_group, counts, stats):
            if tuple(sorted(orbits)) not in seen:
                seen.add(tuple(sorted(orbits)))
                results.append(
                    Assignment(space_group, orbits, stats.score_orbits(space_group, orbits))
                )
    results.sort(key=lambda a: (-a.score, len(a.orbits), a.orbits))
    if keep is None:
        return results
    out = []
    for a in results:
        if faithful(space_group, tuple(a.orbits)):
            out.append(a)
            if len(out) == keep:
                break
    return out


def _known_assignments(
    space_group: int, counts: Mapping[int, int], stats: TemplateStats
) -> list[list[tuple[str, int]]]:
    """Assignments of the known templates that fit ``counts``: each element takes a letter
    group of its own atom count (every permutation among elements of equal count)."""
    out = []
    elements = sorted(counts, key=lambda z: (-counts[z], z))
    for letters in stats.known_templates(space_group, counts):
        groups = sorted(letters, key=lambda ls: -sum(multiplicity(space_group, x) for x in ls))
        by_count: dict[int, list[tuple[str, ...]]] = {}
        for ls in groups:
            by_count.setdefault(sum(multiplicity(space_group, x) for x in ls), []).append(ls)
        per_count = []
        for c in sorted(by_count, reverse=True):
            zs = [z for z in elements if counts[z] == c]
            per_count.append(
                [
                    list(zip(zs, perm, strict=True))
                    for perm in set(itertools.permutations(by_count[c]))
                ]
            )
        for combo in itertools.product(*per_count):
            out.append([(x, z) for part in combo for z, ls in part for x in ls])
    return out


def conventional_counts(numbers: Sequence[int], space_group: int) -> dict[int, int]:
    """Atoms per element of the conventional cell for a primitive cell's atoms."""
    c = centring(space_group)
    return {int(z): n * c for z, n in Counter(int(x) for x in numbers).items()}


def allocate(n: int, options: int, per_option: int = 4) -> list[int]:
    """Which option rank each of ``n`` samples uses: round-robin over the top
    ``ceil(n / per_option)`` options (one sample: the best)."""
    k = max(1, min(options, math.ceil(n / per_option)))
    return [i % k for i in range(n)]
