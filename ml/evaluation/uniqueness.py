"""Structure identity and uniqueness within a set.

Two crystals are the same when pymatgen's StructureMatcher (ltol 0.2, stol 0.3, angle_tol 5,
primitive cells, volumes scaled) fits them. Crystals are grouped by reduced formula first:
only same-formula pairs are compared. Primitive cells are computed once per crystal and the
matcher then runs with ``primitive_cell=False``, which is the same test, only cheaper
(pymatgen would otherwise reduce both structures on every comparison).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from ml.crystal import Crystal, as_structure

__all__ = [
    "MATCHER_SETTINGS",
    "PreparedStructure",
    "prepare",
    "same_structure",
    "structure_matcher",
    "unique_flags",
    "unique_indices",
]

MATCHER_SETTINGS = {"ltol": 0.2, "stol": 0.3, "angle_tol": 5.0}


@lru_cache(maxsize=1)
def structure_matcher() -> StructureMatcher:
    """The matcher for already-primitive structures (see the module docstring)."""
    return StructureMatcher(**MATCHER_SETTINGS, primitive_cell=False)  # type: ignore[arg-type]


class PreparedStructure:
    """A crystal's reduced formula and primitive cell, ready for repeated comparisons."""

    __slots__ = ("formula", "primitive")

    def __init__(self, item: Crystal | Structure) -> None:
        structure = as_structure(item)
        self.formula = structure.composition.reduced_formula
        try:
            self.primitive = structure.get_primitive_structure()
        except Exception:  # spglib/pymatgen failure on odd cells: compare the cell as given
            self.primitive = structure

    def matches(self, other: PreparedStructure) -> bool:
        if self.formula != other.formula or len(self.primitive) != len(other.primitive):
            return False  # with attempt_supercell off the matcher needs equal primitive sizes
        try:
            return bool(structure_matcher().fit(self.primitive, other.primitive))
        except Exception:  # a matcher crash on a degenerate cell counts as "different"
            return False


def prepare(item: Crystal | Structure | PreparedStructure) -> PreparedStructure:
    return item if isinstance(item, PreparedStructure) else PreparedStructure(item)


def same_structure(a: Crystal | Structure, b: Crystal | Structure) -> bool:
    return prepare(a).matches(prepare(b))


def unique_flags(
    crystals: Sequence[Crystal | Structure | PreparedStructure],
    previous: Sequence[Crystal | Structure | PreparedStructure] = (),
) -> list[bool]:
    """For each crystal in order: True when it matches nothing in ``previous`` and no earlier
    unique crystal of ``crystals`` (a duplicate is compared against the kept ones only)."""
    kept: dict[str, list[PreparedStructure]] = {}
    for item in previous:
        p = prepare(item)
        kept.setdefault(p.formula, []).append(p)
    flags: list[bool] = []
    for item in crystals:
        p = prepare(item)
        group = kept.setdefault(p.formula, [])
        is_new = not any(p.matches(q) for q in group)
        if is_new:
            group.append(p)
        flags.append(is_new)
    return flags


def unique_indices(crystals: Sequence[Crystal | Structure]) -> list[int]:
    """Indices of the first occurrence of each distinct structure."""
    return [i for i, ok in enumerate(unique_flags(crystals)) if ok]
