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

__all__ = ["SiteGroup", "Swap", "apply_swap", "propose_swaps", "site_groups"]


@dataclass(frozen=True)
class SiteGroup:
    """Sites (indices into the crystal) sharing one element, oxidation number and role."""

    element: str
    oxidation: int
    role: int
    sites: tuple[int, ...]


@dataclass(frozen=True)
class Swap:
    group: SiteGroup
    new: str
    prior: float  # the substitution model's probability of new replacing the group's ion

    @property
    def label(self) -> str:
        return f"{self.group.element}->{self.new}"


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
) -> list[Swap]:
    """Up to ``per_group`` swaps per site group, most probable first. ``allowed`` is the
    stage's (n_roles + 1, n_ox + 1, K) bool table (``TypeTables.allowed``)."""
    present = set(crystal.species)
    out: list[Swap] = []
    for group in site_groups(crystal, oxidation, roles):
        row = allowed[group.role + 1, group.oxidation - OX_MIN]
        targets = tuple(
            (ELEMENTS[k], group.oxidation)
            for k in np.flatnonzero(row)
            if ELEMENTS[k] not in present
        )
        if not targets:
            continue
        ranked = likely_replacements(group.element, group.oxidation, targets, per_group)
        out.extend(Swap(group, symbol, prob) for prob, (symbol, _) in ranked)
    return out


def apply_swap(crystal: Crystal, oxidation: Sequence[int], swap: Swap) -> Crystal:
    """The crystal with ``swap.new`` on the group's sites, its volume scaled by ionic radii
    (kept where a radius is missing)."""
    numbers = crystal.numbers.copy()
    numbers[list(swap.group.sites)] = Element(swap.new).Z
    new = Crystal(crystal.lattice.copy(), crystal.frac_coords.copy(), numbers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ref = crystal.to_structure()
            ref.add_oxidation_state_by_site([float(q) for q in oxidation])
            sub = new.to_structure()
            sub.add_oxidation_state_by_site([float(q) for q in oxidation])
        except Exception:  # an ion pymatgen cannot build
            return new
    volume = ionic_volume(ref, sub)
    if volume is None:
        return new
    scale = (volume / crystal.volume) ** (1.0 / 3.0)
    return Crystal(crystal.lattice * scale, crystal.frac_coords.copy(), numbers)
