"""Structure identity (permutation, supercell), uniqueness within a set, novelty vs the data."""

from __future__ import annotations

import numpy as np

from ml.crystal import Crystal
from ml.data import load_records
from ml.evaluation.novelty import Novelty, find_reference_match, get_reference_set, novel_flags
from ml.evaluation.uniqueness import same_structure, unique_flags, unique_indices


def rocksalt(a: float = 5.64, z: tuple[int, int] = (11, 17)) -> Crystal:
    lattice = np.array([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])
    return Crystal(lattice, [[0, 0, 0], [0.5, 0.5, 0.5]], list(z))


def cesium_chloride(a: float = 3.4, z: tuple[int, int] = (11, 17)) -> Crystal:
    return Crystal(np.eye(3) * a, [[0, 0, 0], [0.5, 0.5, 0.5]], list(z))


def wurtzite_like() -> Crystal:
    return Crystal.from_params(
        [3.25, 3.25, 5.2],
        [90, 90, 120],
        [[1 / 3, 2 / 3, 0], [2 / 3, 1 / 3, 0.5], [1 / 3, 2 / 3, 0.38], [2 / 3, 1 / 3, 0.88]],
        [30, 30, 8, 8],
    )


def permuted(c: Crystal) -> Crystal:
    order = np.arange(c.num_atoms)[::-1]
    return Crystal(c.lattice, c.frac_coords[order], c.numbers[order])


def supercell_2x1x1(c: Crystal) -> Crystal:
    frac = np.concatenate([c.frac_coords * [0.5, 1, 1], c.frac_coords * [0.5, 1, 1] + [0.5, 0, 0]])
    lattice = c.lattice * np.array([[2.0], [1.0], [1.0]])
    return Crystal(lattice, frac, np.concatenate([c.numbers, c.numbers]))


def test_permuted_and_supercell_copies_are_the_same_structure() -> None:
    for base in (rocksalt(), wurtzite_like()):
        copies = [base, permuted(base), supercell_2x1x1(base)]
        assert supercell_2x1x1(base).num_atoms == 2 * base.num_atoms
        assert unique_indices(copies) == [0]
        assert same_structure(base, supercell_2x1x1(base))


def test_different_structures_stay_unique() -> None:
    nacl = rocksalt()
    crystals = [nacl, cesium_chloride(), permuted(nacl), rocksalt(z=(19, 35))]
    assert unique_flags(crystals) == [True, True, False, True]


def test_previous_crystals_count_for_uniqueness() -> None:
    assert unique_flags([rocksalt(5.5), cesium_chloride()], previous=[rocksalt()]) == [
        False,
        True,
    ]


def test_mp20_structure_is_not_novel_and_made_up_ones_are() -> None:
    record = load_records("mp20", "test", limit=1)[0]
    match = find_reference_match(record.crystal)
    assert match is not None and match.material_id == record.material_id
    # A permuted, slightly strained copy is still the known material.
    strained = permuted(record.crystal)
    strained.lattice = strained.lattice * 1.02
    # Odd composition: no reference has it. NaBr in the CsCl structure: the formula is in the
    # reference set (rock salt) but the structure is not. (NaCl would not do: MP-20 train
    # holds a 4-atom NaCl without coordinates, so a CsCl-type NaCl is "formula known".)
    odd = Crystal(np.eye(3) * 4.0, [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0]], [54, 3, 3])
    nabr_cscl = cesium_chloride(3.5, (11, 35))
    assert novel_flags([record.crystal, strained, odd, nabr_cscl]) == [False, False, True, True]
    refs = get_reference_set()
    assert refs.judge(record.crystal).basis == "structure match"
    assert refs.judge(odd) == Novelty(True, "new formula")
    assert refs.judge(nabr_cscl) == Novelty(True, "no structure match")


def test_formula_known_only_without_coordinates_is_not_novel() -> None:
    """CoIr is in MP-20 train (mp-1226007, mp-1226027: 2 atoms each) without coordinates and
    in no structure file: a 2-atom CoIr may be one of them, so it is not novel. A CoIr whose
    primitive cell has 4 atoms cannot match a 2-atom material, so it is."""
    refs = get_reference_set()
    assert "CoIr" not in refs.index
    assert sorted(e.material_id for e in refs.formula_only["CoIr"]) == ["mp-1226007", "mp-1226027"]
    coir = cesium_chloride(3.0, (27, 77))
    verdict = refs.judge(coir)
    assert not verdict.novel and verdict.basis == "formula known"
    assert verdict.reference is not None and verdict.reference.material_id.startswith("mp-12260")
    assert novel_flags([coir]) == [False]
    # Four atoms off any symmetric site: the primitive cell keeps all four.
    four = Crystal(
        np.diag([3.0, 3.1, 6.3]),
        [[0, 0, 0], [0.5, 0.5, 0.23], [0.1, 0.5, 0.52], [0.5, 0.05, 0.77]],
        [27, 77, 27, 77],
    )
    assert refs.judge(four) == Novelty(True, "no structure match")
    # Without MP-20 train (e.g. novelty against val/test only) the formula is unknown.
    no_train = get_reference_set(exclude_splits=[("mp20", "train")])
    assert no_train.judge(coir) == Novelty(True, "new formula")
