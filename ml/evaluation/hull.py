"""Energy above the convex hull against the reference table of CHGNet energies.

The hull is built from ``data/reference_energies.csv.gz`` (static CHGNet 0.3.0 energies of
every reference structure, made by ``ml/tools/build_reference_tables.py``) plus the relaxed
elemental references of CHGNet-Eform, so hull energies and CHGNet-Eform share one zero. One
pymatgen ``PhaseDiagram`` per chemical system, holding the entries of all its sub-systems, is
built on first use and cached.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from itertools import combinations
from pathlib import Path

import pandas as pd
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition, Element

from ml.oracles.references import load_elemental_refs

__all__ = ["REFERENCE_TABLE_PATH", "ReferenceHull", "load_reference_table"]

REFERENCE_TABLE_PATH = Path(__file__).resolve().parent / "data" / "reference_energies.csv.gz"
# Above this many elements the 2^n sub-systems and the hull itself get expensive; MP-20 and
# the generated candidates stay far below it.
MAX_ELEMENTS = 10


def load_reference_table(path: Path | None = None) -> pd.DataFrame:
    """The reference energy table (one row per reference structure)."""
    path = REFERENCE_TABLE_PATH if path is None else path
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; build it with ml/tools/build_reference_tables.py"
        )
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


class ReferenceHull:
    """Convex hulls of the reference set, one per chemical system, built lazily."""

    def __init__(self, entries: Iterable[tuple[Composition, float]]):
        # Only the lowest energy per reduced composition can lie on the hull.
        best: dict[str, tuple[Composition, float]] = {}
        for comp, e_atom in entries:
            if not math.isfinite(e_atom) or comp.num_atoms == 0:
                continue
            key = comp.reduced_formula
            if key not in best or e_atom < best[key][1]:
                best[key] = (comp.reduced_composition, e_atom)
        self._by_system: dict[frozenset[str], list[PDEntry]] = {}
        for comp, e_atom in best.values():
            system = frozenset(el.symbol for el in comp.elements)
            entry = PDEntry(comp, e_atom * comp.num_atoms)
            self._by_system.setdefault(system, []).append(entry)
        self._elements = {next(iter(s)) for s in self._by_system if len(s) == 1}
        self._diagrams: dict[frozenset[str], PhaseDiagram] = {}

    @classmethod
    def load(
        cls,
        exclude_splits: Iterable[tuple[str, str]] = (),
        path: Path | None = None,
        include_elemental_refs: bool = True,
    ) -> ReferenceHull:
        """Hull of the reference table without the (dataset, split) pairs in ``exclude_splits``.

        ``include_elemental_refs`` adds the relaxed elemental references (Eu and Th exist only
        there) so that E_hull of an element matches CHGNet-Eform's zero.
        """
        table = load_reference_table(path)
        excluded = {(str(d), str(s)) for d, s in exclude_splits}
        if excluded:
            keep = [
                (d, s) not in excluded
                for d, s in zip(table["dataset"], table["split"], strict=True)
            ]
            table = table[keep]
        # Lowest energy per written formula first: parsing 55k formulas is the slow part.
        lowest = table.groupby("formula")["chgnet_energy_per_atom"].min()
        entries: list[tuple[Composition, float]] = [
            (Composition(f), float(e)) for f, e in lowest.items() if isinstance(f, str) and f
        ]
        if include_elemental_refs:
            entries += [(Composition(el), e) for el, e in load_elemental_refs().items()]
        return cls(entries)

    @property
    def elements(self) -> set[str]:
        return set(self._elements)

    def _diagram(self, system: frozenset[str]) -> PhaseDiagram:
        if system not in self._diagrams:
            entries: list[PDEntry] = []
            symbols = sorted(system)
            for k in range(1, len(symbols) + 1):
                for sub in combinations(symbols, k):
                    entries.extend(self._by_system.get(frozenset(sub), []))
            self._diagrams[system] = PhaseDiagram(entries, [Element(s) for s in symbols])
        return self._diagrams[system]

    def e_above_hull(self, composition: Composition | str, energy_per_atom: float) -> float | None:
        """Energy above the hull (eV/atom; negative when below it).

        ``None`` when an element of the composition has no reference (no hull exists) or the
        energy is not finite.
        """
        comp = Composition(composition)
        if comp.num_atoms == 0 or not math.isfinite(energy_per_atom):
            return None
        system = frozenset(el.symbol for el in comp.elements)
        if not system <= self._elements or len(system) > MAX_ELEMENTS:
            return None
        entry = PDEntry(comp, energy_per_atom * comp.num_atoms)
        _, e_hull = self._diagram(system).get_decomp_and_e_above_hull(
            entry, allow_negative=True, check_stable=False
        )
        return None if e_hull is None else float(e_hull)
