"""Space-group facts the Crystal-GFN environment is built on.

* crystal-lattice system (the paper's eight categories: the seven crystal systems with the
  trigonal one split by its lattice, rhombohedral R or hexagonal P);
* point symmetry of the point group (centrosymmetric, non-centrosymmetric, enantiomorphic,
  polar, enantiomorphic-polar): with the crystal system it fixes the crystal class;
* Wyckoff counts: which atom counts of one element, and which joint counts of several, the
  group's Wyckoff positions can hold. Semantics of pyxtal's ``Group.check_compatible``
  (positions without free parameters used at most once, multiplicities of the conventional
  cell) with the counts of the *primitive* cell scaled by the centring, as
  :func:`ml.symmetry.compatible`; a small dynamic programme instead of pyxtal's product over
  all combinations, because the environment asks it for every visited state.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache, lru_cache

from ml.generative.wyckoff import _group
from ml.symmetry import centring

__all__ = [
    "CRYSTAL_LATTICE_SYSTEMS",
    "POINT_SYMMETRIES",
    "crystal_lattice_system",
    "element_counts",
    "point_symmetry",
    "wyckoff_fit",
]

CRYSTAL_LATTICE_SYSTEMS = (
    "triclinic",
    "monoclinic",
    "orthorhombic",
    "tetragonal",
    "trigonal-rhombohedral",
    "trigonal-hexagonal",
    "hexagonal-hexagonal",
    "cubic",
)
POINT_SYMMETRIES = (
    "centrosymmetric",
    "non-centrosymmetric",
    "enantiomorphic",
    "polar",
    "enantiomorphic-polar",
)
# The 32 crystal classes (pyxtal's point-group symbols) by point symmetry: centrosymmetric
# classes contain -1; enantiomorphic ones only proper rotations; polar ones keep a direction
# fixed; the non-centrosymmetric category holds the remaining classes (neither).
_POINT_SYMMETRY = {
    **dict.fromkeys(
        ("-1", "2/m", "mmm", "4/m", "4/mmm", "-3", "-3m", "6/m", "6/mmm", "m-3", "m-3m"), 0
    ),
    **dict.fromkeys(("-4", "-42m", "-6", "-62m", "-43m"), 1),
    **dict.fromkeys(("222", "422", "622", "32", "23", "432"), 2),
    **dict.fromkeys(("m", "mm2", "4mm", "3m", "6mm"), 3),
    **dict.fromkeys(("1", "2", "3", "4", "6"), 4),
}
_RHOMBOHEDRAL = frozenset({146, 148, 155, 160, 161, 166, 167})


def _check(space_group: int) -> int:
    if not 1 <= space_group <= 230:
        raise ValueError(f"space group must be 1-230, got {space_group}")
    return space_group


def crystal_lattice_system(space_group: int) -> int:
    """Index into :data:`CRYSTAL_LATTICE_SYSTEMS`."""
    g = _check(space_group)
    if g <= 2:
        return 0
    if g <= 15:
        return 1
    if g <= 74:
        return 2
    if g <= 142:
        return 3
    if g <= 167:
        return 4 if g in _RHOMBOHEDRAL else 5
    if g <= 194:
        return 6
    return 7


@cache
def point_symmetry(space_group: int) -> int:
    """Index into :data:`POINT_SYMMETRIES`."""
    return _POINT_SYMMETRY[str(_group(_check(space_group)).point_group)]


@cache
def _sites(space_group: int) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    """(multiplicities with a free position, (multiplicity, count) of positions that are all
    fixed), conventional cell, as pyxtal groups them."""
    free: set[int] = set()
    fixed: dict[int, int] = {}
    for wp in _group(space_group):
        m = int(wp.multiplicity)
        if wp.get_dof() > 0:
            free.add(m)
        else:
            fixed[m] = fixed.get(m, 0) + 1
    bounded = tuple(sorted((m, n) for m, n in fixed.items() if m not in free))
    return tuple(sorted(free)), bounded


@lru_cache(maxsize=4096)
def _free_reach(space_group: int, limit: int) -> tuple[bool, ...]:
    """Which conventional counts 0..limit are sums of free-position multiplicities."""
    free, _ = _sites(space_group)
    reach = [False] * (limit + 1)
    reach[0] = True
    for n in range(1, limit + 1):
        reach[n] = any(m <= n and reach[n - m] for m in free)
    return tuple(reach)


@lru_cache(maxsize=1 << 18)
def wyckoff_fit(space_group: int, counts: tuple[int, ...]) -> bool:
    """Whether a primitive cell with these atoms per element (sorted, positive) can have the
    space group: every element's conventional count a sum of Wyckoff multiplicities, the
    fixed positions shared out without reuse."""
    if not counts or min(counts) <= 0:
        return False
    conv = sorted((c * centring(space_group) for c in counts), reverse=True)
    reach = _free_reach(space_group, max(conv))
    _, bounded = _sites(space_group)
    mults = [m for m, _ in bounded]

    @cache
    def fits(i: int, avail: tuple[int, ...]) -> bool:
        if i == len(conv):
            return True
        return any(fits(i + 1, left) for left in _fixed_uses(conv[i], mults, avail, reach))

    return fits(0, tuple(n for _, n in bounded))


def _fixed_uses(
    count: int, mults: Sequence[int], avail: tuple[int, ...], reach: tuple[bool, ...]
) -> list[tuple[int, ...]]:
    """Remaining fixed positions after every way one element of ``count`` atoms can use
    some of them (the rest of its atoms on free positions)."""
    out: list[tuple[int, ...]] = []

    def rec(j: int, used: int, left: list[int]) -> None:
        if j == len(mults):
            if reach[count - used]:
                out.append(tuple(left))
            return
        for k in range(avail[j] + 1):
            if used + k * mults[j] > count:
                break
            left.append(avail[j] - k)
            rec(j + 1, used + k * mults[j], left)
            left.pop()

    rec(0, 0, [])
    return out


@lru_cache(maxsize=4096)
def element_counts(space_group: int, limit: int) -> tuple[int, ...]:
    """Atoms of one element (1..limit, primitive cell) the group's positions can hold."""
    return tuple(n for n in range(1, limit + 1) if wyckoff_fit(space_group, (n,)))
