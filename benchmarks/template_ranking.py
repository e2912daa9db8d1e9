"""Issue 13: how often the proposed Wyckoff assignment is the crystal's own, without the model.

For each MP-20 crystal of the evaluation split (decomposed with the project's Wyckoff code,
cached by :func:`ml.methods.conditional.wyckoff_data.load_split`), given its space group and
the atoms per element of its conventional cell, the assignments
:func:`ml.generative.assignment.enumerate_assignments` enumerates are re-ranked by each variant
below; top-k accuracy is the share of crystals whose own template (``template_key``: letters per
element, elements anonymised) is among the first k faithful assignments ("labelled": the same
with the elements, i.e. which element sits where).

Statistics are counted on ``--stats-splits`` (default: train only, so val is an honest tuning
set; the release's are train + val, so report test with ``--stats-splits train,val``).

    PYTHONPATH=.:benchmarks python benchmarks/template_ranking.py --eval val
    PYTHONPATH=.:benchmarks python benchmarks/template_ranking.py --eval test \
        --stats-splits train,val --limit 200
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Element

from ml.generative.assignment import (
    MAX_RESULTS,
    TemplateStats,
    _electronegativity,
    electronegativity_order,
    enumerate_assignments,
    faithful,
    ordered_key,
    template_key,
)
from ml.generative.wyckoff import multiplicity, wyckoff_letter
from ml.methods.conditional.wyckoff_data import WyckoffArrays, load_split

KS = (1, 2, 4, 8)


def _role(rank: int, n: int) -> str:
    if n == 1:
        return "U"
    return "A" if rank == 0 else "C" if rank == n - 1 else "M"


@dataclass
class ElementLetterStats:
    """Letter counts per (space group, element), per (space group, periodic-table group) and
    per (space group, electronegativity role), and templates with elements ordered by
    electronegativity (experimental: benchmarks/template_ranking.py)."""

    by_element: Counter[tuple[int, str, int]] = field(default_factory=Counter)
    element_orbits: Counter[tuple[int, int]] = field(default_factory=Counter)
    by_group: Counter[tuple[int, str, int]] = field(default_factory=Counter)
    group_orbits: Counter[tuple[int, int]] = field(default_factory=Counter)
    by_role: Counter[tuple[int, str, str]] = field(default_factory=Counter)
    role_orbits: Counter[tuple[int, str]] = field(default_factory=Counter)
    ordered: Counter[tuple] = field(default_factory=Counter)
    ordered_amount: Counter[tuple] = field(default_factory=Counter)
    labelled: Counter[tuple] = field(default_factory=Counter)
    group_labelled: Counter[tuple] = field(default_factory=Counter)
    beta: float = 2.0

    @classmethod
    def from_arrays(cls, arrays) -> ElementLetterStats:  # type: ignore[no-untyped-def]
        s = cls()
        o = arrays.offsets
        for i in range(len(arrays)):
            sg = int(arrays.space_group[i])
            orbits = [
                (wyckoff_letter(int(arrays.wid[k]))[1], int(arrays.number[k]))
                for k in range(o[i], o[i + 1])
            ]
            roles = s.roles([z for _, z in orbits])
            for x, z in orbits:
                g = _pgroup(z)
                s.by_element[(sg, x, z)] += 1
                s.element_orbits[(sg, z)] += 1
                s.by_group[(sg, x, g)] += 1
                s.group_orbits[(sg, g)] += 1
                s.by_role[(sg, x, roles[z])] += 1
                s.role_orbits[(sg, roles[z])] += 1
            s.ordered[s.ordered_key(sg, orbits)] += 1
            s.ordered_amount[s.amount_key(sg, orbits)] += 1
            s.labelled[s.labelled_key(sg, orbits)] += 1
            s.group_labelled[s.group_key(sg, orbits)] += 1
        return s

    @staticmethod
    def group_key(sg: int, orbits: Sequence[tuple[str, int]]) -> tuple:
        """Template with each element replaced by its periodic-table group (an element
        substitution keeps it: NaMgF3 and KMgF3)."""
        by: dict[tuple[int, int], list[str]] = {}
        for x, z in orbits:
            by.setdefault((_pgroup(z), z), []).append(x)
        return (sg, tuple(sorted((g, tuple(sorted(ls))) for (g, _), ls in by.items())))

    @staticmethod
    def amount_key(sg: int, orbits: Sequence[tuple[str, int]]) -> tuple:
        """Template with elements ordered by atoms (most first), ties by electronegativity."""
        counts: Counter[int] = Counter()
        for x, z in orbits:
            counts[z] += multiplicity(sg, x)
        order = sorted(counts, key=lambda z: (-counts[z], -_electronegativity(z), z))
        return (sg, tuple(tuple(sorted(x for x, z in orbits if z == e)) for e in order))

    @staticmethod
    def labelled_key(sg: int, orbits: Sequence[tuple[str, int]]) -> tuple:
        els = sorted({z for _, z in orbits})
        return (sg, tuple((e, tuple(sorted(x for x, z in orbits if z == e))) for e in els))

    @staticmethod
    def roles(numbers: Sequence[int]) -> dict[int, str]:
        order = electronegativity_order(numbers)
        return {z: _role(r, len(order)) for r, z in enumerate(order)}

    ordered_key = staticmethod(ordered_key)  # the service's own key

    def _backoff(self, stats: TemplateStats, sg: int, x: str, c: int, n: int) -> float:
        p = math.exp(stats.letter_logp(sg, x))
        return math.log((c + self.beta * p) / (n + self.beta))

    def logp_element(
        self, stats: TemplateStats, sg: int, orbits: Sequence[tuple[str, int]]
    ) -> float:
        return sum(
            self._backoff(stats, sg, x, self.by_element[(sg, x, z)], self.element_orbits[(sg, z)])
            for x, z in orbits
        )

    def logp_element_group(
        self, stats: TemplateStats, sg: int, orbits: Sequence[tuple[str, int]]
    ) -> float:
        """P(letter | sg, element) backed off to P(letter | sg, group) backed off to
        P(letter | sg)."""
        out = 0.0
        for x, z in orbits:
            g = _pgroup(z)
            pg = (self.by_group[(sg, x, g)] + self.beta * math.exp(stats.letter_logp(sg, x))) / (
                self.group_orbits[(sg, g)] + self.beta
            )
            out += math.log(
                (self.by_element[(sg, x, z)] + self.beta * pg)
                / (self.element_orbits[(sg, z)] + self.beta)
            )
        return out

    def logp_group(self, stats: TemplateStats, sg: int, orbits: Sequence[tuple[str, int]]) -> float:
        out = 0.0
        for x, z in orbits:
            g = _pgroup(z)
            out += self._backoff(
                stats, sg, x, self.by_group[(sg, x, g)], self.group_orbits[(sg, g)]
            )
        return out

    def logp_role(self, stats: TemplateStats, sg: int, orbits: Sequence[tuple[str, int]]) -> float:
        roles = self.roles([z for _, z in orbits])
        return sum(
            self._backoff(
                stats, sg, x, self.by_role[(sg, x, roles[z])], self.role_orbits[(sg, roles[z])]
            )
            for x, z in orbits
        )


@cache
def _pgroup(z: int) -> int:
    e = Element.from_Z(z)
    return 3 if e.is_lanthanoid or e.is_actinoid else int(e.group)


@dataclass
class Row:
    space_group: int
    orbits: list[tuple[str, int]]
    counts: dict[int, int]

    @property
    def key(self) -> tuple:
        return anon_key(self.space_group, self.orbits)

    @property
    def labelled(self) -> tuple:
        return labelled_key(self.space_group, self.orbits)


def by_element(orbits: Sequence[tuple[str, int]]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for letter, z in orbits:
        out.setdefault(z, []).append(letter)
    return out


def anon_key(sg: int, orbits: Sequence[tuple[str, int]]) -> tuple:
    return template_key(sg, list(by_element(orbits).values()))


def labelled_key(sg: int, orbits: Sequence[tuple[str, int]]) -> tuple:
    return (sg, tuple(sorted((z, tuple(sorted(ls))) for z, ls in by_element(orbits).items())))


def rows_of(arrays: WyckoffArrays) -> list[Row]:
    o = arrays.offsets
    out = []
    for i in range(len(arrays)):
        sg = int(arrays.space_group[i])
        orbits = [
            (wyckoff_letter(int(arrays.wid[k]))[1], int(arrays.number[k]))
            for k in range(o[i], o[i + 1])
        ]
        counts: Counter[int] = Counter()
        for letter, z in orbits:
            counts[z] += multiplicity(sg, letter)
        out.append(Row(sg, orbits, dict(counts)))
    return out


# --- candidate features ----------------------------------------------------------------------
FEATURES = (
    "tpl",  # log(1 + training count of the anonymised template)
    "tpl_x",  # the same, MP 2018 extra counts added
    "lp_sg",  # sum over orbits of log P(letter | sg)
    "lp_el",  # sum log P(letter | sg, element), backed off to P(letter | sg)
    "lp_grp",  # sum log P(letter | sg, periodic-table group of the element)
    "lp_role",  # sum log P(letter | sg, electronegativity rank of the element in the compound)
    "ord",  # log(1 + count of the template with elements ordered by electronegativity)
    "ord_amt",  # the same with elements ordered by atom count
    "lab",  # log(1 + count of the template with its elements: same chemical system)
    "grp",  # log(1 + count of the template with elements replaced by their groups)
    "lp_elg",  # sum log P(letter | sg, element) -> P(letter | sg, group) -> P(letter | sg)
    "orbits",  # number of orbits
    "dfs",  # 1: found by the bounded search alone (v1's candidates)
    "seeded",  # 1: among v2's candidates without the extra counts (search + known templates)
    "v2",  # the library's v2 score (TemplateStats.score_orbits), training counts only
    "v2x",  # the same with the MP 2018 extra counts (TemplateStats.with_extra)
)
F = {name: i for i, name in enumerate(FEATURES)}


def features(
    row: Row, stats: TemplateStats, stats_x: TemplateStats, el: ElementLetterStats
) -> tuple[list[list[tuple[str, int]]], np.ndarray, int]:
    """Candidates (v2 with the extra counts: the bounded search plus every known template, a
    superset of the others) and their features."""
    sg = row.space_group
    found = enumerate_assignments(sg, row.counts, stats_x)
    seeded = {tuple(sorted(a.orbits)) for a in enumerate_assignments(sg, row.counts, stats)}
    plain = enumerate_assignments(sg, row.counts, replace(stats, ranking="v1"))
    dfs = {tuple(sorted(a.orbits)) for a in plain}
    cands, feats = [], []
    for a in found:
        key = anon_key(sg, a.orbits)
        n = stats.templates[key]
        feats.append(
            [
                math.log1p(n),
                math.log1p(n + stats_x.extra_templates[key]),
                sum(stats.letter_logp(sg, x) for x, _ in a.orbits),
                el.logp_element(stats, sg, a.orbits),
                el.logp_group(stats, sg, a.orbits),
                el.logp_role(stats, sg, a.orbits),
                math.log1p(el.ordered[el.ordered_key(sg, a.orbits)]),
                math.log1p(el.ordered_amount[el.amount_key(sg, a.orbits)]),
                math.log1p(el.labelled[el.labelled_key(sg, a.orbits)]),
                math.log1p(el.group_labelled[el.group_key(sg, a.orbits)]),
                el.logp_element_group(stats, sg, a.orbits),
                float(len(a.orbits)),
                float(tuple(sorted(a.orbits)) in dfs),
                float(tuple(sorted(a.orbits)) in seeded),
                stats.score_orbits(sg, a.orbits),
                a.score,
            ]
        )
        cands.append(a.orbits)
    return cands, np.array(feats).reshape(-1, len(FEATURES)), len(plain)


# --- variants --------------------------------------------------------------------------------
def lin(pool: str = "seeded", **w: float) -> Callable[[np.ndarray], np.ndarray]:
    """Linear score of the features over a candidate pool: "dfs" (v1's bounded search),
    "seeded" (plus the known training templates) or "extra" (plus the MP 2018 ones)."""

    def score(x: np.ndarray) -> np.ndarray:
        out = sum(v * x[:, F[k]] for k, v in w.items())
        if pool == "extra":
            return out  # type: ignore[return-value]
        return np.where(x[:, F[pool]] > 0, out, -np.inf)  # type: ignore[return-value]

    return score


VARIANTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "v1 (current): 2 tpl + lp_sg, search only": lin("dfs", tpl=2, lp_sg=1),
    "2 tpl + lp_sg, known templates added": lin(tpl=2, lp_sg=1),
    "0 tpl + lp_sg": lin(lp_sg=1),
    "1 tpl + lp_sg": lin(tpl=1, lp_sg=1),
    "4 tpl + lp_sg": lin(tpl=4, lp_sg=1),
    "8 tpl + lp_sg": lin(tpl=8, lp_sg=1),
    "2 tpl_x + lp_sg": lin("extra", tpl_x=2, lp_sg=1),
    "fewest orbits, then 2 tpl + lp_sg": lin(orbits=-100, tpl=2, lp_sg=1),
    "2 tpl + lp_el": lin(tpl=2, lp_el=1),
    "2 tpl + lp_grp": lin(tpl=2, lp_grp=1),
    "2 tpl + lp_role": lin(tpl=2, lp_role=1),
    "2 tpl + lp_elg": lin(tpl=2, lp_elg=1),
    "2 tpl + 2 ord + lp_sg": lin(tpl=2, ord=2, lp_sg=1),
    "2 tpl + 2 ord_amt + lp_sg": lin(tpl=2, ord_amt=2, lp_sg=1),
    "2 tpl + 2 grp + lp_sg": lin(tpl=2, grp=2, lp_sg=1),
    "2 tpl + 2 lab + lp_sg": lin(tpl=2, lab=2, lp_sg=1),
    "2 tpl + 2 ord + lp_el": lin(tpl=2, ord=2, lp_el=1),
    "8 tpl + 4 ord + lp_el": lin(tpl=8, ord=4, lp_el=1),
    "8 tpl + 4 ord + 2 grp + lp_el": lin(tpl=8, ord=4, grp=2, lp_el=1),
    "8 tpl_x + 4 ord + lp_el": lin("extra", tpl_x=8, ord=4, lp_el=1),
    "v2 (library, = 8 tpl + 4 ord + lp_el)": lin(v2=1),
    "v2 with_extra (library)": lin("extra", v2x=1),
}


def ranked_faithful(sg: int, cands: list, score: np.ndarray, k: int) -> list[int]:
    order = sorted(range(len(cands)), key=lambda i: (-score[i], len(cands[i]), cands[i]))
    out = []
    for i in order:
        if faithful(sg, tuple(cands[i])):
            out.append(i)
            if len(out) == k:
                break
    return out


@dataclass
class Candidates:
    row: Row
    cands: list[list[tuple[str, int]]]
    x: np.ndarray
    keys: list[tuple]
    labs: list[tuple]
    truncated: bool


def collect(
    rows: list[Row], stats: TemplateStats, stats_x: TemplateStats, el: ElementLetterStats
) -> list[Candidates]:
    out = []
    for row in rows:
        cands, x, n = features(row, stats, stats_x, el)
        keys = [anon_key(row.space_group, c) for c in cands]
        labs = [labelled_key(row.space_group, c) for c in cands]
        out.append(Candidates(row, cands, x, keys, labs, n >= MAX_RESULTS))
    return out


def topk(data: list[Candidates], fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """(rows, 2, len(KS)) hits: anonymised template, labelled template."""
    hits = np.zeros((len(data), 2, len(KS)), bool)
    for r, d in enumerate(data):
        if not d.cands:
            continue
        sc = fn(d.x)
        top = [
            i for i in ranked_faithful(d.row.space_group, d.cands, sc, max(KS)) if sc[i] > -np.inf
        ]
        for j, k in enumerate(KS):
            hits[r, 0, j] = any(d.keys[i] == d.row.key for i in top[:k])
            hits[r, 1, j] = any(d.labs[i] == d.row.labelled for i in top[:k])
    return hits


def evaluate(data: list[Candidates]) -> dict[str, Any]:
    def has(d: Candidates, col: str) -> bool:
        return d.row.key in {k for k, f in zip(d.keys, d.x[:, F[col]], strict=True) if f}

    in_dfs = np.array([has(d, "dfs") for d in data])
    in_set = np.array([has(d, "seeded") for d in data])
    res: dict[str, Any] = {
        "n": len(data),
        "true_template_enumerated": float(in_dfs.mean()),
        "true_template_enumerated_or_seeded": float(in_set.mean()),
        "enumeration_truncated": int(sum(d.truncated for d in data)),
        "topk": {},
        "topk_labelled": {},
    }
    for name, fn in VARIANTS.items():
        h = topk(data, fn).mean(0).round(4)
        res["topk"][name] = dict(zip(map(str, KS), h[0].tolist(), strict=True))
        res["topk_labelled"][name] = dict(zip(map(str, KS), h[1].tolist(), strict=True))
    return res


def grid(data: list[Candidates]) -> list[tuple[float, float, dict[str, float]]]:
    """Top-1 (anonymised, labelled) over the weights of the template and ordered-template
    terms (with per-element letters), best first."""
    out = []
    for extra in (False, True):
        for tpl in (4.0, 8.0, 16.0):
            for ordw in (2.0, 4.0, 8.0):
                w = {"tpl_x" if extra else "tpl": tpl, "ord": ordw, "lp_el": 1.0}
                h = topk(data, lin("extra" if extra else "seeded", **w))[:, :, 0].mean(0)
                out.append((float(h[0]), float(h[1]), w))
    return sorted(out, key=lambda t: -t[0] - t[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--eval", default="val", choices=("val", "test"))
    p.add_argument("--stats-splits", default="train")
    p.add_argument("--limit", type=int, help="first N crystals of the split (seeded shuffle)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    p.add_argument("--pickle", type=Path, help="save the candidates and features here")
    p.add_argument("--grid", action="store_true", help="also a grid over the score's weights")
    args = p.parse_args()
    parts = [load_split(s) for s in args.stats_splits.split(",")]
    train = WyckoffArrays.concat(parts)
    stats = TemplateStats.from_arrays(train)
    if args.stats_splits == "train,val":  # the release's: its checkpoint's statistics
        from ml.methods.conditional.checkpoint import find_weights, load_wyckoff_release

        _, stats, _ = load_wyckoff_release(find_weights("wyckoff"))
    el = ElementLetterStats.from_arrays(train)
    rows = rows_of(load_split(args.eval))
    if args.limit:
        idx = np.random.default_rng(args.seed).permutation(len(rows))[: args.limit]
        rows = [rows[i] for i in sorted(idx)]
    t = time.time()
    data = collect(rows, stats, stats.with_extra(), el)
    if args.pickle:
        import pickle

        args.pickle.write_bytes(pickle.dumps(data))
    res = evaluate(data)
    res["seconds"] = round(time.time() - t, 1)
    res.update(eval=args.eval, stats=args.stats_splits, stats_structures=len(train))
    width = max(map(len, VARIANTS))
    print(f"{args.eval}: {res['n']} crystals, stats on {args.stats_splits} ({len(train)})")
    print(
        f"true template enumerated: {res['true_template_enumerated']:.4f}, with known "
        f"templates seeded: {res['true_template_enumerated_or_seeded']:.4f}, "
        f"search truncated: {res['enumeration_truncated']}"
    )
    print(f"{'variant':{width}}  " + "  ".join(f"top{k:<3}" for k in KS) + "  | labelled top1 top4")
    for v in VARIANTS:
        a, b = res["topk"][v], res["topk_labelled"][v]
        print(
            f"{v:{width}}  "
            + "  ".join(f"{a[str(k)]:.3f} " for k in KS)
            + f"  | {b['1']:.3f} {b['4']:.3f}"
        )
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))

    if args.grid:
        for a, b, w in grid(data)[:15]:
            print(f"grid top1 {a:.4f} labelled {b:.4f}  {w}")


if __name__ == "__main__":
    main()
