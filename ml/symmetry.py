"""Which numbers of formula units a composition needs to crystallise in a space group.

A crystal in space group G places each element's atoms on whole Wyckoff orbits of G, so a
cell of Z formula units exists only when every element's count (Z times its amount in the
reduced formula) is a sum of G's site multiplicities, fixed sites used at most once. PyXtal
ships the Wyckoff tables (International Tables, standard settings) and this check
(``Group.check_compatible``); its multiplicities are those of the conventional cell. The cells
matdesign works with are primitive (as the data sets and spglib's standard primitive cells),
so counts are scaled by the centring of the lattice (A/B/C/I: 2, R in hexagonal axes: 3, F: 4)
before the check. LiFePO4 in Pnma (62) thus needs Z = 4, ZnO in P6_3mc (186) Z = 2.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import cache

__all__ = ["centring", "compatible", "formula_units_for", "space_group_symbol"]

# Lattice points per conventional cell, by the first letter of the Hermann-Mauguin symbol.
_CENTRING = {"P": 1, "A": 2, "B": 2, "C": 2, "I": 2, "R": 3, "F": 4}


@cache
def _group(number: int):  # type: ignore[no-untyped-def]
    from pyxtal.symmetry import Group

    return Group(number)


def space_group_symbol(number: int) -> str:
    return str(_group(number).symbol)


def centring(number: int) -> int:
    """Lattice points per conventional cell of the space group (1 for a primitive lattice)."""
    return _CENTRING[space_group_symbol(number)[0]]


@cache
def _compatible(number: int, counts: tuple[int, ...]) -> bool:
    factor = centring(number)
    ok, _ = _group(number).check_compatible([c * factor for c in counts])
    return bool(ok)


def compatible(number: int, counts: Iterable[int]) -> bool:
    """Whether a primitive cell with these atom counts (one per element) can have space group
    ``number`` (every count a sum of the group's Wyckoff multiplicities)."""
    return _compatible(number, tuple(sorted(int(c) for c in counts)))


def formula_units_for(
    amounts: Mapping[str, int] | Iterable[int], space_group: int, candidates: Iterable[int]
) -> list[int]:
    """The numbers of formula units among ``candidates`` for which a primitive cell of the
    reduced formula (``amounts``: whole atoms per formula unit) fits ``space_group``."""
    per_fu = list(amounts.values()) if isinstance(amounts, Mapping) else list(amounts)
    return [z for z in candidates if compatible(space_group, (z * a for a in per_fu))]
