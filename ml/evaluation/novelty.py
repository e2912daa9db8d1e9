"""Novelty against the reference set: every structure under the data directory.

A crystal is novel when no reference structure with the same reduced formula matches it
(:mod:`ml.evaluation.uniqueness` matcher). The formula index comes from the CSV formula columns
(:func:`ml.data.reference_formula_index`); only references sharing a candidate's formula are
parsed, and their primitive cells are kept for the rest of the process. A reference whose cell
size is not a multiple of the candidate's primitive size cannot match (its primitive cell, a
divisor of its size, would differ), so it is skipped unparsed: SiO2, with 169 references, is
thus compared against a handful.

MP-20 train materials without coordinates (:func:`ml.data.reference.formula_only_index`) cannot
be compared. A crystal that matches no structure but shares its reduced formula with such a
material of a cell size a match would need (a multiple of the crystal's primitive size) may be
that material, so it is not called novel: :meth:`ReferenceSet.judge` gives the basis of every
verdict (:data:`NOVELTY_BASES`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pymatgen.core import Structure

from ml.crystal import Crystal
from ml.data.reference import (
    ReferenceEntry,
    formula_only_index,
    reference_crystals,
    reference_formula_index,
)
from ml.evaluation.uniqueness import PreparedStructure, prepare
from ml.settings import get_ml_settings

__all__ = [
    "NOVELTY_BASES",
    "Novelty",
    "ReferenceSet",
    "find_reference_match",
    "get_reference_set",
    "novel_flags",
]

# Why a crystal is (not) novel, as stored in a candidate's ``meta["novelty_basis"]``.
STRUCTURE_MATCH = "structure match"  # not novel: a reference structure matches
FORMULA_KNOWN = "formula known"  # not novel: may be an MP-20 train material without coordinates
NO_STRUCTURE_MATCH = "no structure match"  # novel: same-formula references exist, none matches
NEW_FORMULA = "new formula"  # novel: no reference of any kind has the reduced formula
NOVELTY_BASES = (STRUCTURE_MATCH, FORMULA_KNOWN, NO_STRUCTURE_MATCH, NEW_FORMULA)


@dataclass(frozen=True)
class Novelty:
    """A novelty verdict: ``reference`` is the matching structure's row (structure match) or
    the first coordinate-less material of the formula (formula known), else None."""

    novel: bool
    basis: str
    reference: ReferenceEntry | None = None


class ReferenceSet:
    """Reference structures by formula, parsed and reduced to primitive cells on first use."""

    def __init__(
        self,
        *,
        data_dir: Path | None = None,
        cache_dir: Path | None = None,
        exclude_splits: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.data_dir = data_dir
        self.cache_dir = cache_dir
        self.index = reference_formula_index(data_dir=data_dir, exclude_splits=exclude_splits)
        self.formula_only = formula_only_index(data_dir=data_dir, exclude_splits=exclude_splits)
        self._prepared: dict[ReferenceEntry, PreparedStructure] = {}
        self._lock = threading.Lock()

    def _references(
        self, formula: str, primitive_size: int
    ) -> list[tuple[ReferenceEntry, PreparedStructure]]:
        entries = [e for e in self.index.get(formula, []) if e.n_atoms % primitive_size == 0]
        with self._lock:
            todo = [e for e in entries if e not in self._prepared]
            for entry, crystal in reference_crystals(
                todo, data_dir=self.data_dir, cache_dir=self.cache_dir
            ):
                self._prepared[entry] = PreparedStructure(crystal)
            return [(e, self._prepared[e]) for e in entries if e in self._prepared]

    def match(self, item: Crystal | Structure | PreparedStructure) -> ReferenceEntry | None:
        """The first reference row matching the crystal, or None (novel)."""
        p = prepare(item)
        for entry, ref in self._references(p.formula, len(p.primitive)):
            if p.matches(ref):
                return entry
        return None

    def judge(self, item: Crystal | Structure | PreparedStructure) -> Novelty:
        """Novel or not, and why (see the module docstring)."""
        p = prepare(item)
        entry = self.match(p)
        if entry is not None:
            return Novelty(False, STRUCTURE_MATCH, entry)
        size = len(p.primitive)
        unchecked = [e for e in self.formula_only.get(p.formula, []) if e.n_atoms % size == 0]
        if unchecked:
            return Novelty(False, FORMULA_KNOWN, unchecked[0])
        if p.formula in self.index or p.formula in self.formula_only:
            return Novelty(True, NO_STRUCTURE_MATCH)
        return Novelty(True, NEW_FORMULA)

    def is_novel(self, item: Crystal | Structure | PreparedStructure) -> bool:
        return self.judge(item).novel


_SETS: dict[tuple[str, str, tuple[tuple[str, str], ...]], ReferenceSet] = {}
_SETS_LOCK = threading.Lock()


def get_reference_set(
    *,
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
    exclude_splits: Sequence[tuple[str, str]] = (),
) -> ReferenceSet:
    """The process-wide reference set (one per directories and excluded splits)."""
    settings = get_ml_settings()
    data_dir = Path(data_dir) if data_dir is not None else settings.data_dir
    cache_dir = Path(cache_dir) if cache_dir is not None else settings.cache_dir
    key = (str(data_dir), str(cache_dir), tuple(sorted(exclude_splits)))
    with _SETS_LOCK:
        if key not in _SETS:
            _SETS[key] = ReferenceSet(
                data_dir=data_dir, cache_dir=cache_dir, exclude_splits=exclude_splits
            )
        return _SETS[key]


def find_reference_match(item: Crystal | Structure) -> ReferenceEntry | None:
    return get_reference_set().match(item)


def novel_flags(
    crystals: Sequence[Crystal | Structure | PreparedStructure],
    *,
    exclude_splits: Sequence[tuple[str, str]] = (),
) -> list[bool]:
    """For each crystal: True when it is novel (:meth:`ReferenceSet.judge`)."""
    refs = get_reference_set(exclude_splits=exclude_splits)
    return [refs.is_novel(c) for c in crystals]
