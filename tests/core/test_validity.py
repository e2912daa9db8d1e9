"""Structural validity: hand-built cells that pass and fail each rule."""

from __future__ import annotations

import numpy as np
import pytest

from ml.crystal import Crystal
from ml.evaluation.validity import check_validity, is_valid, min_distance


def _pair(distance: float, cell: float = 10.0) -> Crystal:
    return Crystal(np.eye(3) * cell, [[0, 0, 0], [distance / cell, 0, 0]], [11, 17])


def test_atoms_too_close_are_invalid() -> None:
    result = check_validity(_pair(0.3))
    assert not result.valid
    assert "0.300" in (result.reason or "")


def test_atoms_two_angstrom_apart_are_valid() -> None:
    assert is_valid(_pair(2.0))
    assert min_distance(_pair(2.0)) == pytest.approx(2.0)


def test_close_periodic_images_are_invalid() -> None:
    # 0.2 and 9.9 A along a 10 A axis: 0.3 A apart only through the periodic boundary.
    across = Crystal(np.eye(3) * 10.0, [[0.02, 0, 0], [0.99, 0, 0]], [11, 17])
    assert min_distance(across) == pytest.approx(0.3)
    assert not is_valid(across)
    # One atom whose own image is 0.45 A away along a short axis.
    thin = Crystal(np.diag([0.45, 5.0, 5.0]), [[0, 0, 0]], [26])
    assert not is_valid(thin)


def test_skewed_cell_distances_use_reduced_cell() -> None:
    # b = a + small offset: the 2nd lattice vector's image sits 0.4 A from the atom.
    lattice = np.array([[5.0, 0, 0], [5.4, 0, 0.0], [0, 0, 5.0]]) + np.array(
        [[0, 0, 0], [0, 3.0, 0], [0, 0, 0]]
    )
    crystal = Crystal(lattice, [[0, 0, 0]], [26])
    assert min_distance(crystal) == pytest.approx(np.linalg.norm(lattice[1] - lattice[0]))
    assert is_valid(crystal)


@pytest.mark.parametrize(
    ("crystal", "words"),
    [
        (Crystal(np.diag([1.0, 1.0, 0.05]), [[0, 0, 0]], [1]), "volume"),
        (Crystal(np.diag([150.0, 5.0, 5.0]), [[0, 0, 0]], [1]), "lengths"),
        (Crystal.from_params([5, 5, 5], [90, 90, 5], [[0, 0, 0]], [1]), "angles"),
        (Crystal(np.eye(3) * 5, [[np.nan, 0, 0]], [1]), "non-finite"),
        (Crystal(np.eye(3) * 5, [[0, 0, 0]], [0]), "atomic numbers"),
        (Crystal(np.eye(3) * 5, np.zeros((0, 3)), []), "no atoms"),
    ],
)
def test_broken_cells_are_invalid_with_reason(crystal: Crystal, words: str) -> None:
    result = check_validity(crystal)
    assert not result.valid
    assert words in (result.reason or "")
