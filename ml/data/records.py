"""Data-set rows as typed records, and filters over them."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from pymatgen.core import Composition

from ml.crystal import Crystal
from ml.data.cache import get_store, read_table
from ml.data.sources import get_source
from ml.request import ElementConstraints

__all__ = [
    "CrystalRecord",
    "RecordFilter",
    "filter_records",
    "load_records",
    "load_table",
    "reduced_formula",
]

_FORMULAS: dict[str, str] = {}


def reduced_formula(formula: str) -> str:
    """pymatgen's reduced formula of a formula string (memoized: ~60k data-set formulas)."""
    out = _FORMULAS.get(formula)
    if out is None:
        with warnings.catch_warnings():
            # pymatgen warns when sorting noble gases (no electronegativity): harmless here.
            warnings.simplefilter("ignore", UserWarning)
            out = Composition(formula).reduced_formula
        _FORMULAS[formula] = out
    return out


@dataclass
class CrystalRecord:
    """One data-set material.

    ``formula`` is pymatgen's reduced formula; ``space_group`` the table's spglib number
    (symprec 0.1), None where the table has none (perov5). ``properties`` holds the DFT columns
    under their CSV names: ``formation_energy_per_atom`` (eV/atom) and ``band_gap`` (eV) for
    mp20/mp2018; ``heat_ref`` (eV/atom), ``dir_gap`` and ``ind_gap`` (eV, GLLB-SC) for perov5.
    The same values are in ``crystal.properties``.
    """

    material_id: str
    formula: str
    n_atoms: int
    space_group: int | None
    properties: dict[str, float]
    crystal: Crystal
    dataset: str
    split: str
    row: int

    @property
    def elements(self) -> set[str]:
        return set(self.crystal.species)


def load_records(
    dataset: str,
    split: str,
    *,
    limit: int | None = None,
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
) -> list[CrystalRecord]:
    """Records of the first ``limit`` rows (all when None) of a split, in file order.

    Rows whose CIF cannot be parsed are skipped (none in the shipped data).
    """
    source = get_source(dataset, split)
    if not source.has_structures:
        raise ValueError(f"{dataset}/{split} holds no structures; use load_table")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    store = get_store(dataset, split, data_dir=data_dir, cache_dir=cache_dir)
    crystals = store.crystals(limit)
    table = store.table
    ids = table["material_id"].astype(str).to_numpy()
    formulas = table["pretty_formula"].astype(str).to_numpy()
    sgs = table["spacegroup_number"].to_numpy() if source.has_space_group else None
    props = {c: table[c].to_numpy(dtype=float) for c in source.property_columns}
    records: list[CrystalRecord] = []
    for i, crystal in enumerate(crystals):
        if crystal is None:
            continue
        values = {c: float(v[i]) for c, v in props.items() if not math.isnan(v[i])}
        crystal.properties = dict(values)
        sg = sgs[i] if sgs is not None else None
        records.append(
            CrystalRecord(
                material_id=str(ids[i]),
                formula=reduced_formula(formulas[i]),
                n_atoms=crystal.num_atoms,
                space_group=int(sg) if sg is not None and sg == sg else None,
                properties=values,
                crystal=crystal,
                dataset=dataset,
                split=split,
                row=i,
            )
        )
    return records


def load_table(dataset: str, split: str, *, data_dir: Path | None = None) -> pd.DataFrame:
    """The raw table of a split as a pandas DataFrame (no CIF parsing); a shared object:
    copy it before changing it."""
    return read_table(dataset, split, data_dir)


@dataclass
class RecordFilter:
    """What a record must satisfy. ``charge_neutral``: strict oxidation-state neutrality
    (:func:`ml.constraints.is_charge_neutral`); ``space_groups`` compare against the table's
    number or, where missing, spglib at symprec 0.1."""

    elements: ElementConstraints = field(default_factory=ElementConstraints)
    max_atoms: int | None = None
    min_atoms: int | None = None
    charge_neutral: bool = False
    space_groups: Sequence[int] | None = None

    def accepts(self, record: CrystalRecord) -> bool:
        from ml.constraints import elements_ok, is_charge_neutral, space_group_number

        if self.max_atoms is not None and record.n_atoms > self.max_atoms:
            return False
        if self.min_atoms is not None and record.n_atoms < self.min_atoms:
            return False
        if not elements_ok(record.elements, self.elements):
            return False
        if self.charge_neutral and not is_charge_neutral(record.formula):
            return False
        if self.space_groups is not None:
            sg = record.space_group
            if sg is None:
                sg = space_group_number(record.crystal)
            if sg not in set(self.space_groups):
                return False
        return True


def filter_records(
    records: Iterable[CrystalRecord],
    constraints: RecordFilter | None = None,
    *,
    elements: ElementConstraints | None = None,
    max_atoms: int | None = None,
    charge_neutral: bool | None = None,
    space_groups: Sequence[int] | None = None,
) -> list[CrystalRecord]:
    """Records that pass ``constraints`` (a :class:`RecordFilter`), or the same fields given
    as keywords (keywords override the filter's fields)."""
    f = constraints or RecordFilter()
    f = RecordFilter(
        elements=elements if elements is not None else f.elements,
        max_atoms=max_atoms if max_atoms is not None else f.max_atoms,
        min_atoms=f.min_atoms,
        charge_neutral=charge_neutral if charge_neutral is not None else f.charge_neutral,
        space_groups=space_groups if space_groups is not None else f.space_groups,
    )
    return [r for r in records if f.accepts(r)]
