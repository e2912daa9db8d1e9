"""Novelty against the reference set: every structure under the data directory.

A crystal is novel when no reference structure with the same reduced formula matches it
(:mod:`ml.evaluation.uniqueness` matcher). The formula index comes from the CSV formula columns
(:func:`ml.data.reference_formula_index`); only references sharing a candidate's formula are
parsed, and their primitive cells are kept for the rest of the process. A reference whose cell
size is not a multiple of the candidate's primitive size cannot match (its primitive cell, a
divisor of its size, would differ), so it is skipped unparsed: SiO2, with 169 references, is
thus compared against a handful.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from pymatgen.core import Structure

from ml.crystal import Crystal
from ml.data.reference import ReferenceEntry, reference_crystals, reference_formula_index
from ml.evaluation.uniqueness import PreparedStructure, prepare
from ml.settings import get_ml_settings

__all__ = ["ReferenceSet", "find_reference_match", "get_reference_set", "novel_flags"]


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

    def is_novel(self, item: Crystal | Structure | PreparedStructure) -> bool:
        return self.match(item) is None


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
    """For each crystal: True when no reference structure matches it."""
    refs = get_reference_set(exclude_splits=exclude_splits)
    return [refs.is_novel(c) for c in crystals]
