"""Species swaps for the judge-in-the-loop refinement (:mod:`ml.methods.smoacs.refine`).

A design's sites are grouped by (element, oxidation number, perovskite role): the sites the
gradient stage tied together, or that chose one element under one oxidation number. A swap
puts another element on every site of one group. The new element must admit the group's
oxidation number under the request's element constraints (the same per-(role, oxidation)
tables as the gradient stage's masks), so the oxidation numbers, and with them exact charge
neutrality, are unchanged; it must not already be in the crystal (that would merge two ions
onto one element, or give one element both signs, which the neutrality check forbids). Which
elements are tried is ranked by the data-mined substitution model the ``substitution`` method
uses (Hautier et al.): swaps seen in known structure types first. The cell's volume is scaled
by ionic radii as that method does, so the judge's relaxation starts near the new minimum.

Paired swaps change two groups at once and their oxidation numbers with them, in amounts that
cancel (n1 * d1 + n2 * d2 = 0 over the groups' site counts), so neutrality stays exact: the
aliovalent pairs of known chemistry, e.g. Mg2+ O2- -> Na+ F- (a wider gap) or Sr2+ Ti4+ ->
K+ Nb5+ in a perovskite, which no single swap at fixed oxidation numbers reaches.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pymatgen.core import Element

from ml.crystal import Crystal
from ml.methods.smoacs.elements import ELEMENTS, OX_MAX, OX_MIN
from ml.methods.smoacs.templates import NO_MASK
from ml.methods.substitution import ionic_volume, likely_replacements

__all__ = ["Change", "SiteGroup", "Swap", "apply_swap", "propose_swaps", "site_groups"]


@dataclass(frozen=True)
class SiteGroup:
    """Sites (indices into the crystal) sharing one element, oxidation number and role."""

    element: str
    oxidation: int
    role: int
    sites: tuple[int, ...]


@dataclass(frozen=True)
class Change:
    """One group's sites take ``new`` with oxidation number ``oxidation``."""

    group: SiteGroup
    new: str
    oxidation: int

    @property
    def label(self) -> str:
        q = self.oxidation
        charge = "" if q == self.group.oxidation else f"{abs(q)}{'+' if q > 0 else '-'}"
        return f"{self.group.element}->{self.new}{charge}"


@dataclass(frozen=True)
class Swap:
    """One change, or two whose oxidation changes cancel; ``prior``: the substitution model's
    probability of the new ions replacing the old (the product for a pair)."""

    changes: tuple[Change, ...]
    prior: float

    @property
    def label(self) -> str:
        return "+".join(c.label for c in self.changes)


def site_groups(
    crystal: Crystal, oxidation: Sequence[int], roles: Sequence[int]
) -> list[SiteGroup]:
    """Groups of the crystal's sites; sites without an oxidation number (masks off) are left
    out: a swap there could not keep neutrality."""
    groups: dict[tuple[str, int, int], list[int]] = {}
    for i, (el, q, r) in enumerate(zip(crystal.species, oxidation, roles, strict=True)):
        if q == NO_MASK or not OX_MIN <= q <= OX_MAX:
            continue
        groups.setdefault((el, int(q), int(r)), []).append(i)
    return [SiteGroup(el, q, r, tuple(s)) for (el, q, r), s in groups.items()]


def propose_swaps(
    crystal: Crystal,
    oxidation: Sequence[int],
    roles: Sequence[int],
    allowed: np.ndarray,
    per_group: int,
    pairs: bool = True,
) -> list[Swap]:
    """Up to ``per_group`` single swaps per site group, most probable first, then (``pairs``)
    up to ``per_group`` paired swaps per design, most probable first. ``allowed`` is the
    stage's (n_roles + 1, n_ox + 1, K) bool table (``TypeTables.allowed``)."""
    present = set(crystal.species)
    groups = site_groups(crystal, oxidation, roles)
    out: list[Swap] = []
    for group in groups:
        for prob, change in _changes(group, group.oxidation, allowed, present, per_group):
            out.append(Swap((change,), prob))
    if pairs:
        out.extend(_paired(groups, allowed, present, per_group))
    return out


def _changes(
    group: SiteGroup, q: int, allowed: np.ndarray, present: set[str], k: int
) -> list[tuple[float, Change]]:
    """The ``k`` most probable new ions of oxidation number ``q`` for the group's sites."""
    if not OX_MIN <= q <= OX_MAX or q == 0 or (q > 0) != (group.oxidation > 0):
        return []
    row = allowed[group.role + 1, q - OX_MIN]
    targets = tuple((ELEMENTS[k], q) for k in np.flatnonzero(row) if ELEMENTS[k] not in present)
    if not targets:
        return []
    ranked = likely_replacements(group.element, group.oxidation, targets, k)
    return [(prob, Change(group, symbol, q)) for prob, (symbol, _) in ranked]


def _paired(groups: list[SiteGroup], allowed: np.ndarray, present: set[str], k: int) -> list[Swap]:
    """The ``k`` most probable pairs of changes on two groups whose oxidation numbers move by
    d1 and d2 (|d| <= 2) with n1 * d1 + n2 * d2 = 0, two distinct new elements."""
    found: list[Swap] = []
    for a, g1 in enumerate(groups):
        for g2 in groups[a + 1 :]:
            n1, n2 = len(g1.sites), len(g2.sites)
            for d1 in (-2, -1, 1, 2):
                d2, rest = divmod(-n1 * d1, n2)
                if rest or not 1 <= abs(d2) <= 2:
                    continue
                first = _changes(g1, g1.oxidation + d1, allowed, present, k)
                second = _changes(g2, g2.oxidation + d2, allowed, present, k)
                found.extend(
                    Swap((c1, c2), p1 * p2)
                    for p1, c1 in first
                    for p2, c2 in second
                    if c1.new != c2.new
                )
    found.sort(key=lambda s: (-s.prior, s.label))
    return found[:k]


def apply_swap(crystal: Crystal, oxidation: Sequence[int], swap: Swap) -> tuple[Crystal, list[int]]:
    """The crystal with the swap's new ions on their groups' sites, its volume scaled by ionic
    radii (kept where a radius is missing), and its sites' oxidation numbers after it."""
    numbers = crystal.numbers.copy()
    new_ox = [int(q) for q in oxidation]
    for change in swap.changes:
        numbers[list(change.group.sites)] = Element(change.new).Z
        for i in change.group.sites:
            new_ox[i] = change.oxidation
    new = Crystal(crystal.lattice.copy(), crystal.frac_coords.copy(), numbers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ref = crystal.to_structure()
            ref.add_oxidation_state_by_site([float(q) for q in oxidation])
            sub = new.to_structure()
            sub.add_oxidation_state_by_site([float(q) for q in new_ox])
        except Exception:  # an ion pymatgen cannot build
            return new, new_ox
    volume = ionic_volume(ref, sub)
    if volume is None:
        return new, new_ox
    scale = (volume / crystal.volume) ** (1.0 / 3.0)
    return Crystal(crystal.lattice * scale, crystal.frac_coords.copy(), numbers), new_ox
