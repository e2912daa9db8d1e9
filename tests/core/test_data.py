"""Data loaders: documented row counts, record fields, filters, and reuse of the parse cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml.constraints import is_charge_neutral
from ml.data import (
    STATS,
    RecordFilter,
    clear_memory,
    filter_records,
    load_records,
    load_table,
    reference_crystals,
    reference_formula_index,
)
from ml.request import ElementConstraints


@pytest.mark.parametrize(
    ("dataset", "split", "rows"),
    [
        ("mp20", "train", 10_047),
        ("mp20", "val", 9_047),
        ("mp20", "test", 9_046),
        ("mp20", "train_index", 27_136),
        ("mp2018", "extra", 19_949),
        ("perov5", "val", 3_787),
        ("perov5", "test", 3_785),
    ],
)
def test_tables_have_documented_row_counts(dataset: str, split: str, rows: int) -> None:
    assert len(load_table(dataset, split)) == rows


def test_unknown_split_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown data set mp20/nope"):
        load_records("mp20", "nope", limit=1)
    with pytest.raises(ValueError, match="no structures"):
        load_records("mp20", "train_index", limit=1)


def test_records_carry_table_values(tmp_path: Path) -> None:
    recs = load_records("mp20", "test", limit=5, cache_dir=tmp_path)
    assert len(recs) == 5
    first = recs[0]
    table = load_table("mp20", "test")
    assert first.material_id == table["material_id"][0] == "mp-10009"
    assert first.formula == "GaTe"
    assert first.n_atoms == int(table["n_atoms"][0]) == first.crystal.num_atoms
    assert first.space_group == 194
    assert first.properties["band_gap"] == pytest.approx(table["band_gap"][0])
    assert first.crystal.properties == first.properties
    perov = load_records("perov5", "test", limit=3, cache_dir=tmp_path)
    assert perov[0].space_group is None and set(perov[0].properties) == {
        "heat_ref",
        "dir_gap",
        "ind_gap",
    }


def test_parse_cache_is_reused_and_extended(tmp_path: Path) -> None:
    clear_memory()
    before = STATS["cifs_parsed"]
    first = load_records("mp20", "val", limit=12, cache_dir=tmp_path)
    assert STATS["cifs_parsed"] - before == 12
    assert (tmp_path / "structures" / "mp20-val.npz").is_file()

    clear_memory()  # a new process: only the disk cache remains
    before = STATS["cifs_parsed"]
    again = load_records("mp20", "val", limit=12, cache_dir=tmp_path)
    assert STATS["cifs_parsed"] == before  # nothing parsed the second time
    for a, b in zip(first, again, strict=True):
        assert a.material_id == b.material_id
        assert (a.crystal.lattice == b.crystal.lattice).all()
        assert (a.crystal.frac_coords == b.crystal.frac_coords).all()
        assert (a.crystal.numbers == b.crystal.numbers).all()

    more = load_records("mp20", "val", limit=15, cache_dir=tmp_path)
    assert STATS["cifs_parsed"] - before == 3  # only the 3 new rows
    assert len(more) == 15


def test_filters(tmp_path: Path) -> None:
    recs = load_records("mp20", "test", limit=150, cache_dir=tmp_path)
    oxides = filter_records(recs, elements=ElementConstraints(required=["O"]))
    assert oxides and all("O" in r.elements for r in oxides)
    assert len(oxides) < len(recs)

    no_o = filter_records(recs, elements=ElementConstraints(excluded=["O"]))
    assert len(no_o) + len(oxides) == len(recs)

    palette = sorted(recs[0].elements | recs[1].elements)
    allowed = ElementConstraints(allowed=palette)
    inside = filter_records(recs, elements=allowed)
    assert {recs[0].material_id, recs[1].material_id} <= {r.material_id for r in inside}
    assert all(r.elements <= set(palette) for r in inside) and len(inside) < len(recs)

    small = filter_records(recs, max_atoms=4)
    assert small and all(r.n_atoms <= 4 for r in small) and len(small) < len(recs)

    neutral = filter_records(recs, charge_neutral=True)
    assert neutral and all(is_charge_neutral(r.formula) for r in neutral)
    assert len(neutral) < len(recs)

    cubic = filter_records(recs, RecordFilter(space_groups=[225, 221]))
    assert cubic and all(r.space_group in (225, 221) for r in cubic)


def test_perov5_space_group_filter_uses_spglib(tmp_path: Path) -> None:
    recs = load_records("perov5", "val", limit=20, cache_dir=tmp_path)
    cubic = filter_records(recs, space_groups=[221])
    assert 0 < len(cubic) < len(recs)


def test_reference_formula_index_points_at_matching_rows() -> None:
    index = reference_formula_index()
    entries = index["GaTe"]
    assert any(e.material_id == "mp-10009" for e in entries)
    for _, crystal in reference_crystals(entries):
        assert crystal.formula == "GaTe"
    assert "Xe7Li3" not in index
