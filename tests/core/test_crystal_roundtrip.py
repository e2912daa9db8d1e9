"""Lossless conversions: pymatgen Structure, CIF text, CrystalBatch tensors and ASE Atoms."""

from __future__ import annotations

import numpy as np
import torch
from pymatgen.core import Lattice, Structure

from ml.crystal import Crystal, CrystalBatch
from ml.data import load_records

TOL = 1e-6


def triclinic() -> Structure:
    lattice = Lattice.from_parameters(4.1234567, 5.2345678, 6.3456789, 81.2345, 97.6543, 112.3456)
    return Structure(
        lattice,
        ["Ba", "Ti", "O", "O", "O"],
        [
            [0.1234567, 0.2345678, 0.3456789],
            [0.6123457, 0.7234568, 0.8345679],
            [0.0000001, 0.5, 0.9999999],
            [0.3333333, 0.6666667, 0.25],
            [0.9876543, 0.1234567, 0.5555555],
        ],
    )


def _same(a: Structure, b: Structure) -> None:
    np.testing.assert_allclose(a.lattice.matrix, b.lattice.matrix, atol=TOL, rtol=0)
    np.testing.assert_allclose(a.frac_coords, b.frac_coords, atol=TOL, rtol=0)
    assert [s.specie.symbol for s in a] == [s.specie.symbol for s in b]


def test_structure_crystal_cif_structure_keeps_lattice_and_sites() -> None:
    original = triclinic()
    crystal = Crystal.from_structure(original)
    np.testing.assert_array_equal(crystal.lattice, original.lattice.matrix)
    back = Crystal.from_cif(crystal.to_cif()).to_structure()
    _same(original, back)
    _same(original, crystal.to_structure())


def test_mp20_structures_round_trip_through_cif() -> None:
    for record in load_records("mp20", "test", limit=5):
        structure = record.crystal.to_structure()
        back = Crystal.from_cif(record.crystal.to_cif()).to_structure()
        _same(structure, back)


def test_crystal_batch_round_trip() -> None:
    crystals = [r.crystal for r in load_records("mp20", "test", limit=4)]
    crystals.append(Crystal.from_structure(triclinic()))
    batch = CrystalBatch.from_crystals(crystals, dtype=torch.float64)
    assert batch.num_crystals == 5
    assert batch.frac_coords.shape[0] == sum(c.num_atoms for c in crystals)
    assert batch.batch.tolist() == [i for i, c in enumerate(crystals) for _ in range(c.num_atoms)]
    for a, b in zip(crystals, batch.to_crystals(), strict=True):
        np.testing.assert_allclose(a.lattice, b.lattice, atol=TOL, rtol=0)
        np.testing.assert_allclose(a.frac_coords, b.frac_coords, atol=TOL, rtol=0)
        np.testing.assert_array_equal(a.numbers, b.numbers)
    np.testing.assert_allclose(
        batch.cart_coords().numpy(), np.concatenate([c.cart_coords for c in crystals]), atol=TOL
    )


def test_ase_round_trip() -> None:
    crystal = Crystal.from_structure(triclinic())
    back = Crystal.from_ase(crystal.to_ase())
    np.testing.assert_allclose(back.lattice, crystal.lattice, atol=TOL, rtol=0)
    np.testing.assert_allclose(back.frac_coords, crystal.frac_coords, atol=TOL, rtol=0)
    np.testing.assert_array_equal(back.numbers, crystal.numbers)
