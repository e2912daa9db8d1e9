"""Data sets under ``MATDESIGN_DATA_DIR`` as typed records, with a parsed-structure cache.

Splits (``dataset``/``split``, rows):

- ``mp20``: ``train`` (10,047 with coordinates), ``val`` (9,047), ``test`` (9,046);
  ``train_index`` (27,136, table only: no coordinates, use :func:`load_table`)
- ``mp2018``: ``extra`` (19,949; MP 2018 structures not in MP-20, 1-200 atoms)
- ``perov5``: ``val`` (3,787), ``test`` (3,785); ABX3, 5 atoms, no space-group column

API::

    from ml.data import load_records, filter_records, RecordFilter, reference_formula_index

    recs = load_records("mp20", "test", limit=100)      # list[CrystalRecord], file order
    r = recs[0]; r.material_id, r.formula, r.n_atoms, r.space_group, r.properties, r.crystal
    small_oxides = filter_records(
        recs,
        elements=ElementConstraints(required=["O"], excluded=["Pb"]),
        max_atoms=10,
        charge_neutral=True,
        space_groups=[221, 225],
    )
    index = reference_formula_index()                  # reduced formula -> [ReferenceEntry]
    crystals = reference_crystals(index.get("NaCl", []))  # parses only these rows
    df = load_table("mp20", "train_index")              # raw pandas table, no parsing

``CrystalRecord.properties`` keys are the CSV columns: ``formation_energy_per_atom`` (eV/atom)
and ``band_gap`` (eV) for mp20/mp2018; ``heat_ref``, ``dir_gap``, ``ind_gap`` for perov5.

Caching: CIFs are parsed with pymatgen (through :meth:`ml.crystal.Crystal.from_cif`) once; a
split's parsed rows are kept in ``<cache_dir>/structures/<dataset>-<split>.npz`` (cache_dir
from ``MATDESIGN_CACHE_DIR``, default ``<repo>/.cache``), keyed by the source file's SHA-256.
``load_records(..., limit=n)`` parses only rows not yet cached, so a small ``limit`` is cheap.
Within a process, tables and parsed rows are kept in memory (:func:`clear_memory` drops them).
"""

from ml.data.cache import STATS, clear_memory, get_store, read_table
from ml.data.records import (
    CrystalRecord,
    RecordFilter,
    filter_records,
    load_records,
    load_table,
    reduced_formula,
)
from ml.data.reference import ReferenceEntry, reference_crystals, reference_formula_index
from ml.data.sources import SOURCES, get_source, structure_splits

__all__ = [
    "SOURCES",
    "STATS",
    "CrystalRecord",
    "RecordFilter",
    "ReferenceEntry",
    "clear_memory",
    "filter_records",
    "get_source",
    "get_store",
    "load_records",
    "load_table",
    "read_table",
    "reduced_formula",
    "reference_crystals",
    "reference_formula_index",
    "structure_splits",
]
