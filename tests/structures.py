"""Small hand-built crystals shared by tests."""

from __future__ import annotations

from pymatgen.core import Lattice, Structure


def rutile_tio2() -> Structure:
    """Rutile-like TiO2 (6 atoms, tetragonal)."""
    return Structure(
        Lattice.tetragonal(4.59, 2.96),
        ["Ti", "Ti", "O", "O", "O", "O"],
        [
            [0, 0, 0],
            [0.5, 0.5, 0.5],
            [0.3, 0.3, 0],
            [0.7, 0.7, 0],
            [0.8, 0.2, 0.5],
            [0.2, 0.8, 0.5],
        ],
    )
