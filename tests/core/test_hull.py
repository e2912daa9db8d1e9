"""Energy above hull: hand-built hulls, split exclusion, and a real MP-20 ground state."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Composition

from ml.crystal import Crystal
from ml.evaluation.hull import ReferenceHull, load_reference_table
from ml.oracles.references import ELEMENTAL_REFS_PATH
from ml.settings import get_ml_settings


def toy_hull() -> ReferenceHull:
    # Na and Cl at 0, NaCl at -2 eV/atom: the hull is the two lines through (x_Cl=0.5, -2).
    return ReferenceHull(
        [(Composition("Na"), 0.0), (Composition("Cl"), 0.0), (Composition("NaCl"), -2.0)]
    )


def test_hand_built_binary_hull() -> None:
    hull = toy_hull()
    assert hull.e_above_hull("NaCl", -2.0) == pytest.approx(0.0, abs=1e-9)
    assert hull.e_above_hull("Na4Cl4", -1.9) == pytest.approx(0.1, abs=1e-9)
    # Na2Cl: the hull at x_Cl = 1/3 is 2/3 of the way to NaCl, i.e. -4/3 eV/atom
    assert hull.e_above_hull("Na2Cl", -1.0) == pytest.approx(1 / 3, abs=1e-9)
    # below the hull: negative (a new stable phase)
    assert hull.e_above_hull("NaCl", -2.5) == pytest.approx(-0.5, abs=1e-9)
    assert hull.e_above_hull("Na", 0.3) == pytest.approx(0.3, abs=1e-9)


def test_missing_element_or_energy_gives_none() -> None:
    hull = toy_hull()
    assert hull.e_above_hull("KCl", -2.0) is None
    assert hull.e_above_hull("NaCl", math.nan) is None


def test_ternary_query_uses_sub_system_entries() -> None:
    hull = ReferenceHull([*((Composition(e), 0.0) for e in ("Na", "Cl", "O"))])
    hull_with_nacl = ReferenceHull(
        [*((Composition(e), 0.0) for e in ("Na", "Cl", "O")), (Composition("NaCl"), -2.0)]
    )
    # NaClO = 2/3 NaCl + 1/3 O: the binary entry lowers the ternary hull from 0 to -4/3
    assert hull.e_above_hull("NaClO", -1.0) == pytest.approx(-1.0, abs=1e-9)
    assert hull_with_nacl.e_above_hull("NaClO", -1.0) == pytest.approx(1 / 3, abs=1e-9)


def test_excluded_split_leaves_the_hull(tmp_path: Path) -> None:
    rows = [
        ("mp20", "train", "a", "Na1", 0.0),
        ("mp20", "train", "b", "Cl1", 0.0),
        ("mp20", "train", "c", "Na1Cl1", -2.0),
        ("mp20", "test", "d", "Na4Cl4", -2.5),
    ]
    table = pd.DataFrame(
        rows, columns=["dataset", "split", "material_id", "formula", "chgnet_energy_per_atom"]
    )
    path = tmp_path / "table.csv.gz"
    table.to_csv(path, index=False)
    full = ReferenceHull.load(path=path, include_elemental_refs=False)
    without_test = ReferenceHull.load(
        exclude_splits=[("mp20", "test")], path=path, include_elemental_refs=False
    )
    assert full.e_above_hull("NaCl", -2.5) == pytest.approx(0.0, abs=1e-9)
    assert without_test.e_above_hull("NaCl", -2.5) == pytest.approx(-0.5, abs=1e-9)


# --- the committed tables ---------------------------------------------------------------------
def test_reference_table_is_complete_and_consistent() -> None:
    table = load_reference_table()
    counts = table.groupby(["dataset", "split"]).size().to_dict()
    assert counts[("mp20", "test")] == 9046 and counts[("mp20", "val")] == 9047
    assert counts[("mp20", "train")] == 10047 and counts[("mp2018", "extra")] == 19949
    refs = json.loads(ELEMENTAL_REFS_PATH.read_text())
    assert {"Eu", "Th", "O", "Si"} <= set(refs)
    rows = table.sample(50, random_state=0)
    for row in rows.itertuples():
        comp = Composition(row.formula)
        ref = sum(n * refs[el] for el, n in comp.get_el_amt_dict().items()) / comp.num_atoms
        assert row.chgnet_eform == pytest.approx(row.chgnet_energy_per_atom - ref, abs=2e-6)


@pytest.fixture(scope="module")
def reference_hull() -> ReferenceHull:
    return ReferenceHull.load()


def test_every_element_lies_on_its_own_reference(reference_hull: ReferenceHull) -> None:
    hull = reference_hull
    refs = json.loads(ELEMENTAL_REFS_PATH.read_text())
    for el in ("O", "Eu", "Th", "Si"):
        assert hull.e_above_hull(el, refs[el]) == pytest.approx(0.0, abs=1e-6)
    assert hull.e_above_hull("Rn", -1.0) is None  # no reference for radon


@pytest.mark.slow
def test_known_ground_state_on_hull_and_strained_copy_above(
    reference_hull: ReferenceHull,
) -> None:
    from ml.oracles.registry import get_oracle

    # mp-22862, rock-salt NaCl (MP-20 val): on the DFT hull.
    path = Path(get_ml_settings().data_dir) / "mp20" / "val.csv.gz"
    df = pd.read_csv(path)
    crystal = Crystal.from_cif(df.loc[df["material_id"] == "mp-22862", "cif"].iloc[0])
    strained = crystal.copy()
    strained.lattice = crystal.lattice * 1.1
    energy = get_oracle("chgnet-energy", "cpu").predict([crystal, strained])
    assert np.isfinite(energy).all()
    hull = reference_hull
    on_hull = hull.e_above_hull(crystal.to_structure().composition, float(energy[0]))
    above = hull.e_above_hull(strained.to_structure().composition, float(energy[1]))
    assert on_hull is not None and abs(on_hull) < 0.02
    assert above is not None and above > 0.05


@pytest.mark.parametrize("model", ["sevennet-l3i5", "chgnet"])
def test_hull_tables_carry_their_models_energy_corrections(model: str) -> None:
    """The stored per-formula correction (what spares every worker minutes of MP2020 at
    warm-up) equals what the model's formation energies use; a stale column would shift every
    SevenNet E_hull."""
    from ml.evaluation.hull import hull_table_path
    from ml.oracles.references import energy_correction

    table = load_reference_table(hull_table_path(model))
    assert "correction" in table.columns
    sample = table.dropna(subset=["formula"]).sample(200, random_state=0)
    expected = [energy_correction(model, f) for f in sample["formula"]]
    np.testing.assert_allclose(sample["correction"], expected, atol=1e-6)
    if model == "sevennet-l3i5":  # oxides get MP2020's anion correction
        assert (sample["correction"] < -0.1).any()
