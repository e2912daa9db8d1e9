"""Initial structures for SMOACS with their oxidation-number patterns.

A :class:`Template` is a starting geometry plus, for every site, the oxidation number it holds
under each allowed pattern. Sites are split into neutrality groups: every pattern is charge
neutral on each group on its own, so each group may pick its pattern independently (one group
for a data-set template; one per unit cell for a perovskite supercell). Sources: data-set
structures (charge-neutral, few sites), user CIFs, and ideal perovskite cells and supercells.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ml.crystal import Crystal, lattice_from_params
from ml.methods.smoacs.elements import OX_MIN, oxidation_states

__all__ = [
    "NO_MASK",
    "PEROVSKITE_PATTERNS",
    "ROLE_A",
    "ROLE_B",
    "ROLE_NONE",
    "ROLE_X",
    "Template",
    "neutral_patterns",
    "perovskite_template",
    "template_from_crystal",
    "tied",
    "unmasked",
]

# Oxidation "number" meaning: no oxidation mask on this site (the no-mask ablation).
NO_MASK = 99
ROLE_NONE, ROLE_A, ROLE_B, ROLE_X = -1, 0, 1, 2
# (A, B, X) oxidation numbers of neutral ABX3 cells with A in +1..+3, B in +2..+5, X in -1/-2.
PEROVSKITE_PATTERNS: tuple[tuple[int, int, int], ...] = tuple(
    (a, b, x) for x in (-1, -2) for a in (1, 2, 3) for b in (2, 3, 4, 5) if a + b + 3 * x == 0
)


@dataclass
class Template:
    """A starting structure: geometry, per-site oxidation patterns and structural bounds.

    ``ox`` (N, P): oxidation number of each site under each pattern (``NO_MASK``: any element).
    ``site_group`` (N,): neutrality group of each site; ``pattern_valid`` (G, P).
    ``frac_bound`` (N,): how far (fractional) a coordinate may leave ``crystal.frac_coords``
    (inf: free). ``length_bounds``: (lo, hi) Å for the three lengths; ``angles_fixed`` keeps
    the template angles (perovskite mode). ``tie`` (N,): index of the site whose element
    logits each site uses (itself unless tied by :func:`tied`).
    """

    crystal: Crystal
    ox: np.ndarray
    site_group: np.ndarray
    pattern_valid: np.ndarray
    role: np.ndarray
    frac_bound: np.ndarray
    length_bounds: tuple[float, float]
    angles_fixed: bool = False
    source: str = ""
    meta: dict[str, object] = field(default_factory=dict)
    tie: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.tie is None:
            self.tie = np.arange(self.crystal.num_atoms, dtype=np.int64)

    @property
    def num_sites(self) -> int:
        return self.crystal.num_atoms

    @property
    def num_patterns(self) -> int:
        return int(self.ox.shape[1])

    @property
    def num_groups(self) -> int:
        return int(self.pattern_valid.shape[0])


def neutral_patterns(
    symbols: Sequence[str], ox_ok: np.ndarray, max_patterns: int
) -> list[tuple[int, ...]]:
    """Per-site oxidation numbers of the template's charge-neutral element-wise assignments.

    All sites of one template element share a state (as in the paper's RuN example), taken
    from :func:`oxidation_states`. A pattern is kept only if every site's oxidation number is
    realisable by some permitted element (``ox_ok`` (n_ox,) bool). At most ``max_patterns``
    patterns, in a deterministic order.
    """
    elements = list(dict.fromkeys(symbols))
    counts = [sum(1 for s in symbols if s == e) for e in elements]
    choices = [[o for o in oxidation_states(e) if ox_ok[o - OX_MIN]] for e in elements]
    if any(not c for c in choices):
        return []
    out: list[tuple[int, ...]] = []
    for combo in itertools.product(*choices):
        if sum(c * o for c, o in zip(counts, combo, strict=True)) != 0:
            continue
        by_element = dict(zip(elements, combo, strict=True))
        out.append(tuple(by_element[s] for s in symbols))
        if len(out) >= max_patterns:
            break
    return out


def template_from_crystal(
    crystal: Crystal,
    ox_ok: np.ndarray,
    max_patterns: int,
    length_bounds: tuple[float, float],
    source: str,
) -> Template | None:
    """A template with the crystal's neutral patterns; None if it has none."""
    patterns = neutral_patterns(crystal.species, ox_ok, max_patterns)
    if not patterns:
        return None
    n = crystal.num_atoms
    ox = np.array(patterns, dtype=np.int64).T  # (N, P)
    lo, hi = length_bounds
    lengths = crystal.lengths
    # Keep the template itself inside the box (some data-set cells exceed 10 Å).
    bounds = (min(lo, float(lengths.min())), max(hi, float(lengths.max())))
    return Template(
        crystal=crystal.wrapped(),
        ox=ox,
        site_group=np.zeros(n, dtype=np.int64),
        pattern_valid=np.ones((1, ox.shape[1]), dtype=bool),
        role=np.full(n, ROLE_NONE, dtype=np.int64),
        frac_bound=np.full(n, np.inf),
        length_bounds=bounds,
        source=source,
        meta={"template_formula": crystal.formula},
    )


def unmasked(template: Template) -> Template:
    """The same template without oxidation masks (one pattern: any permitted element)."""
    n = template.num_sites
    return Template(
        crystal=template.crystal,
        ox=np.full((n, 1), NO_MASK, dtype=np.int64),
        site_group=np.zeros(n, dtype=np.int64),
        pattern_valid=np.ones((1, 1), dtype=bool),
        role=template.role.copy(),
        frac_bound=template.frac_bound.copy(),
        length_bounds=template.length_bounds,
        angles_fixed=template.angles_fixed,
        source=template.source,
        meta=dict(template.meta),
    )


def tied(template: Template) -> Template:
    """The template with sites of one "species group" sharing their element logits.

    Sites are tied when they carry the same template element, the same role and the same
    oxidation number under every pattern: they then have identical masks and logits, so they
    always end with the same element and oxidation number, and the design keeps the template's
    stoichiometry pattern (few distinct elements). Neutrality groups joined by a tie are merged
    (a pattern stays valid where it was valid for all of them); each group was neutral under
    every valid pattern on its own, so the union is too. In a perovskite supercell the
    placeholder species is one per role, so this ties all A, all B and all X sites (one ABX3
    composition and one pattern for the whole supercell).
    """
    n = template.num_sites
    keys: dict[tuple[int, ...], int] = {}
    tie = np.empty(n, dtype=np.int64)
    numbers = template.crystal.numbers
    for i in range(n):
        key = (int(numbers[i]), int(template.role[i]), *template.ox[i].tolist())
        tie[i] = keys.setdefault(key, i)
    # Merge the neutrality groups that a tie joins (union-find over groups).
    parent = list(range(template.num_groups))

    def root(g: int) -> int:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    for i in range(n):
        a, b = root(int(template.site_group[i])), root(int(template.site_group[tie[i]]))
        if a != b:
            parent[max(a, b)] = min(a, b)
    roots = sorted({root(g) for g in range(template.num_groups)})
    new_index = {r: k for k, r in enumerate(roots)}
    group_of = np.array([new_index[root(g)] for g in range(template.num_groups)], dtype=np.int64)
    valid = np.ones((len(roots), template.num_patterns), dtype=bool)
    for g in range(template.num_groups):
        valid[group_of[g]] &= template.pattern_valid[g]
    if not valid.any(axis=1).all():
        return template  # no pattern valid for a merged group: leave the sites untied
    return Template(
        crystal=template.crystal,
        ox=template.ox,
        site_group=group_of[template.site_group],
        pattern_valid=valid,
        role=template.role,
        frac_bound=template.frac_bound,
        length_bounds=template.length_bounds,
        angles_fixed=template.angles_fixed,
        source=template.source,
        meta={**template.meta, "tied": True},
        tie=tie,
    )


_PEROVSKITE_SITES = np.array(
    [[0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]]
)
_PEROVSKITE_ROLES = np.array([ROLE_A, ROLE_B, ROLE_X, ROLE_X, ROLE_X])


def perovskite_template(
    lengths: Sequence[float],
    supercell: int,
    coord_bound: float,
    length_bounds: tuple[float, float],
    per_cell_patterns: bool,
    patterns: Sequence[tuple[int, int, int]] = PEROVSKITE_PATTERNS,
) -> Template:
    """Ideal ABX3 cell (A 0,0,0; B 1/2,1/2,1/2; X face centres) repeated ``supercell``^3 times.

    ``lengths`` are the unit-cell lengths; ``coord_bound`` is in unit-cell fractions (divided
    by ``supercell`` in the supercell's coordinates); ``length_bounds`` are unit-cell bounds,
    scaled by ``supercell``. With ``per_cell_patterns`` every unit cell is its own neutrality
    group (it picks its own (A, B, X) pattern), else all cells share one.
    """
    n = supercell
    shifts = np.array(list(itertools.product(range(n), repeat=3)), dtype=float)
    frac = ((shifts[:, None, :] + _PEROVSKITE_SITES[None]) / n).reshape(-1, 3)
    roles = np.tile(_PEROVSKITE_ROLES, len(shifts))
    cell_of_site = np.repeat(np.arange(len(shifts)), len(_PEROVSKITE_SITES))
    ox = np.array([[p[r] for p in patterns] for r in roles], dtype=np.int64)  # (N, P)
    groups = cell_of_site if per_cell_patterns else np.zeros_like(cell_of_site)
    n_groups = int(groups.max()) + 1
    lattice = lattice_from_params([float(x) * n for x in lengths], [90.0, 90.0, 90.0])
    # Placeholder species (first pattern's archetype); SMOACS re-draws every element anyway.
    numbers = np.where(roles == ROLE_A, 20, np.where(roles == ROLE_B, 22, 8))
    return Template(
        crystal=Crystal(lattice, frac, numbers),
        ox=ox,
        site_group=groups.astype(np.int64),
        pattern_valid=np.ones((n_groups, len(patterns)), dtype=bool),
        role=roles.astype(np.int64),
        frac_bound=np.full(len(frac), coord_bound / n),
        length_bounds=(length_bounds[0] * n, length_bounds[1] * n),
        angles_fixed=True,
        source=f"perovskite-{n}x{n}x{n}",
        meta={"supercell": n},
    )
