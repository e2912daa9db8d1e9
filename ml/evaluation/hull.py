"""Energy above the convex hull of the reference structures, per energy model.

``ReferenceHull.load(model)`` reads ``data/hull_<model>.csv.gz`` (made by
``ml/tools/build_hull_tables.py``): every reference structure's energy per atom by that model,
RELAXED with the candidates' protocol where it was relaxed (all rows near the hull), else static,
plus the model's relaxed elemental references, so hull energies and the model's formation
energies share one zero and a relaxed candidate meets references relaxed the same way.
``model=None`` reads the older table of static CHGNet energies (``reference_energies.csv.gz``).
One pymatgen ``PhaseDiagram`` per chemical system, holding the entries of all its sub-systems,
is built on first use and cached.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition, Element

from ml.oracles.references import load_elemental_refs

__all__ = [
    "REFERENCE_TABLE_PATH",
    "ReferenceHull",
    "hull_available",
    "hull_table_path",
    "load_reference_table",
    "with_corrections",
]

REFERENCE_TABLE_PATH = Path(__file__).resolve().parent / "data" / "reference_energies.csv.gz"


def hull_table_path(model: str) -> Path:
    return REFERENCE_TABLE_PATH.with_name(f"hull_{model}.csv.gz")


def hull_available(model: str) -> bool:
    """Whether ``model`` has a reference hull here (CHGNet always: its static table)."""
    return model == "chgnet" or hull_table_path(model).is_file()


def with_corrections(table: pd.DataFrame, model: str) -> pd.DataFrame:
    """``table`` with a ``correction`` column: eV/atom added to ``model``'s energy of each row's
    formula (MP2020 for SevenNet, 0 for CHGNet). Written into the hull tables when they are
    built, because computing it for ~40k formulas takes minutes (pymatgen's compatibility
    scheme per formula) and every process that loads the hull would pay that again."""
    from ml.oracles.references import energy_correction

    corr = {f: energy_correction(model, f) for f in table["formula"].dropna().unique() if f}
    return table.assign(correction=np.round(table["formula"].map(corr).astype(float), 6))


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


_TOKEN = re.compile(r"([A-Z][a-z]?)(\d*\.?\d*)")
Key = tuple[tuple[str, float], ...]


def _fractions(amounts: dict[str, float]) -> Key:
    """Atomic fractions, sorted: the same key for every multiple of a composition."""
    total = sum(amounts.values())
    return tuple(sorted((el, round(n / total, 10)) for el, n in amounts.items() if n > 0))


def _formula_amounts(formula: str) -> dict[str, float]:
    # Plain "Na4Cl4"-style formulas (the table's) parse without pymatgen: ~50x faster.
    amounts: dict[str, float] = {}
    for el, n in _TOKEN.findall(formula):
        amounts[el] = amounts.get(el, 0.0) + (float(n) if n else 1.0)
    return amounts


class ReferenceHull:
    """Convex hulls of the reference set, one per chemical system, built lazily."""

    def __init__(self, entries: Iterable[tuple[Composition | str, float]]):
        # Only the lowest energy per composition can lie on the hull. Entries are kept as
        # (atomic fractions, eV/atom) and become pymatgen entries only when a hull needs them.
        self._by_system: dict[frozenset[str], dict[Key, float]] = {}
        for comp, e_atom in entries:
            if not math.isfinite(e_atom):
                continue
            amounts = (
                _formula_amounts(comp)
                if isinstance(comp, str)
                else {el: float(n) for el, n in comp.get_el_amt_dict().items()}
            )
            if not amounts or sum(amounts.values()) <= 0:
                continue
            key = _fractions(amounts)
            bucket = self._by_system.setdefault(frozenset(el for el, _ in key), {})
            if key not in bucket or e_atom < bucket[key]:
                bucket[key] = e_atom
        self._elements = {next(iter(s)) for s in self._by_system if len(s) == 1}
        self._entries: dict[frozenset[str], list[PDEntry]] = {}
        self._diagrams: dict[frozenset[str], PhaseDiagram] = {}
        self.version = "reference hull"

    @classmethod
    def load(
        cls,
        exclude_splits: Iterable[tuple[str, str]] = (),
        path: Path | None = None,
        include_elemental_refs: bool = True,
        model: str | None = None,
    ) -> ReferenceHull:
        """Hull of ``model``'s reference table without the (dataset, split) pairs in
        ``exclude_splits``.

        ``include_elemental_refs`` adds the relaxed elemental references (Eu and Th exist only
        there) so that E_hull of an element matches the model's formation-energy zero.
        """
        if model == "chgnet" and path is None and not hull_table_path(model).is_file():
            model = None  # CHGNet's static table (relaxed-reference table not built yet)
        if model is not None:
            table = load_reference_table(path or hull_table_path(model))
            energy = table["energy_relaxed"].where(
                table["energy_relaxed"] < table["energy_static"], table["energy_static"]
            )
            # Same corrections as the model's formation energies (MP2020 for SevenNet); tables
            # built before the column existed get it here, slowly.
            if "correction" not in table.columns:
                table = with_corrections(table, model)
            table = table.assign(chgnet_energy_per_atom=energy + table["correction"])
        else:
            table = load_reference_table(path)
        excluded = {(str(d), str(s)) for d, s in exclude_splits}
        if excluded:
            keep = [
                (d, s) not in excluded
                for d, s in zip(table["dataset"], table["split"], strict=True)
            ]
            table = table[keep]
        lowest = table.groupby("formula")["chgnet_energy_per_atom"].min()
        entries: list[tuple[Composition | str, float]] = [
            (f, float(e)) for f, e in lowest.items() if isinstance(f, str) and f
        ]
        if include_elemental_refs:
            entries += list(load_elemental_refs(model or "chgnet").items())
        hull = cls(entries)
        name = (path or hull_table_path(model)).name if model else REFERENCE_TABLE_PATH.name
        hull.version = f"reference hull {name}"
        return hull

    @property
    def elements(self) -> set[str]:
        return set(self._elements)

    def _system_entries(self, system: frozenset[str]) -> list[PDEntry]:
        if system not in self._entries:
            self._entries[system] = [
                PDEntry(Composition(dict(key)), e_atom)  # one atom's worth: energy = eV/atom
                for key, e_atom in self._by_system.get(system, {}).items()
            ]
        return self._entries[system]

    def _diagram(self, system: frozenset[str]) -> PhaseDiagram:
        if system not in self._diagrams:
            entries: list[PDEntry] = []
            symbols = sorted(system)
            for k in range(1, len(symbols) + 1):
                for sub in combinations(symbols, k):
                    entries.extend(self._system_entries(frozenset(sub)))
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
