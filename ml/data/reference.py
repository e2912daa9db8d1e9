"""The reference set for novelty: every structure under the data directory, plus the MP-20
train materials known here only by formula.

The index maps a reduced formula to the rows that carry it, built from the CSV formula columns
alone (no CIF parsing). Only the rows a candidate's formula points at are ever parsed
(:func:`reference_crystals`), through the split stores (cached prefix or single-row parse).

MP-20 train has 27,136 materials, of which 17,089 have no coordinates here
(``mp20/train_index.csv.gz`` rows whose ``cif`` is not ``present``): 15,159 reduced formulas,
12,468 of them held by no structure with coordinates. :func:`formula_only_index` lists them,
so novelty can say when a candidate may be one of these materials.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from ml.crystal import Crystal
from ml.data.cache import get_store, read_table
from ml.data.records import reduced_formula
from ml.data.sources import structure_splits
from ml.settings import get_ml_settings

__all__ = [
    "FORMULA_ONLY_SPLIT",
    "ReferenceEntry",
    "formula_only_index",
    "known_formulas",
    "reference_crystals",
    "reference_formula_index",
]

# The table of every MP-20 train material; rows without coordinates are known by formula only.
FORMULA_ONLY_SPLIT = ("mp20", "train_index")


@dataclass(frozen=True)
class ReferenceEntry:
    dataset: str
    split: str
    row: int
    material_id: str
    n_atoms: int


_LOCK = threading.Lock()
_INDEX: dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, list[ReferenceEntry]]] = {}


def reference_formula_index(
    *,
    data_dir: Path | None = None,
    exclude_splits: tuple[tuple[str, str], ...] | list[tuple[str, str]] = (),
) -> dict[str, list[ReferenceEntry]]:
    """Reduced formula -> reference rows, over every split holding structures (mp20
    train/val/test, mp2018 extra, perov5 val/test) minus ``exclude_splits``. Built once per
    process from the formula columns; shared: do not modify."""
    root = Path(data_dir) if data_dir is not None else get_ml_settings().data_dir
    excluded = tuple(sorted((str(d), str(s)) for d, s in exclude_splits))
    key = (str(root), excluded)
    with _LOCK:
        if key in _INDEX:
            return _INDEX[key]
        index: dict[str, list[ReferenceEntry]] = {}
        for dataset, split in structure_splits():
            if (dataset, split) in excluded:
                continue
            table = read_table(dataset, split, root)
            ids = table["material_id"].astype(str).to_numpy()
            sizes = table["n_atoms"].to_numpy()
            for row, formula in enumerate(table["pretty_formula"].astype(str).to_numpy()):
                entry = ReferenceEntry(dataset, split, row, str(ids[row]), int(sizes[row]))
                index.setdefault(reduced_formula(formula), []).append(entry)
        _INDEX[key] = index
        return index


def formula_only_index(
    *,
    data_dir: Path | None = None,
    exclude_splits: tuple[tuple[str, str], ...] | list[tuple[str, str]] = (),
) -> dict[str, list[ReferenceEntry]]:
    """Reduced formula -> the MP-20 train materials that have no coordinates here (``row`` is
    the row of ``mp20/train_index``). Empty when ``exclude_splits`` names ``mp20/train`` (they
    are train materials) or ``mp20/train_index``. Built once per process; shared: do not
    modify."""
    root = Path(data_dir) if data_dir is not None else get_ml_settings().data_dir
    excluded = tuple(sorted((str(d), str(s)) for d, s in exclude_splits))
    dataset, split = FORMULA_ONLY_SPLIT
    key = (str(root), (("formula-only", ""), *excluded))
    with _LOCK:
        if key in _INDEX:
            return _INDEX[key]
        index: dict[str, list[ReferenceEntry]] = {}
        if not {(dataset, "train"), FORMULA_ONLY_SPLIT} & set(excluded):
            table = read_table(dataset, split, root)
            ids = table["material_id"].astype(str).to_numpy()
            sizes = table["n_atoms"].to_numpy()
            has_cif = (table["cif"].astype(str) == "present").to_numpy()
            for row, formula in enumerate(table["pretty_formula"].astype(str).to_numpy()):
                if has_cif[row]:
                    continue  # in mp20/train.csv.gz with coordinates
                entry = ReferenceEntry(dataset, split, row, str(ids[row]), int(sizes[row]))
                index.setdefault(reduced_formula(formula), []).append(entry)
        _INDEX[key] = index
        return index


def reference_crystals(
    entries: list[ReferenceEntry],
    *,
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
) -> list[tuple[ReferenceEntry, Crystal]]:
    """Parsed crystals of the given reference rows (unparseable rows are left out)."""
    out: list[tuple[ReferenceEntry, Crystal]] = []
    for e in entries:
        store = get_store(e.dataset, e.split, data_dir=data_dir, cache_dir=cache_dir)
        crystal = store.crystal_at(e.row)
        if crystal is not None:
            out.append((e, crystal))
    return out


def known_formulas() -> frozenset[str]:
    """Reduced formulas of every known material: the reference index's and MP-20 train's
    rows without coordinates (what a method skips to propose only new formulas)."""
    return frozenset(reference_formula_index()) | frozenset(formula_only_index())
