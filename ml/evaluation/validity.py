"""Structural validity of a crystal.

A crystal is valid when all of these hold (checked in this order; the first failure is the
reason reported):

- at least one atom, at most ``MAX_ATOMS`` (the request schema's hard limit, 200);
- every lattice entry and coordinate is finite; every atomic number is in 1..94 (the
  elements the oracles know);
- cell volume >= ``MIN_VOLUME`` = 0.1 Å^3;
- lattice lengths in [``MIN_LENGTH``, ``MAX_LENGTH``] = [0.5, 100] Å and angles in
  [``MIN_ANGLE``, ``MAX_ANGLE``] = [10, 170] degrees, for the cell as given (a generator
  producing a needle- or sheet-like cell is broken even if a reduced cell exists);
- every interatomic distance >= ``MIN_DISTANCE`` = 0.5 Å, periodic images included (an atom
  and its own images too). Distances are searched in the LLL-reduced cell so a skewed cell
  cannot make the image search explode.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pymatgen.core import Lattice, Structure

from ml.crystal import Crystal
from ml.request import MAX_ATOMS

__all__ = [
    "MAX_ANGLE",
    "MAX_LENGTH",
    "MIN_ANGLE",
    "MIN_DISTANCE",
    "MIN_LENGTH",
    "MIN_VOLUME",
    "Validity",
    "check_validity",
    "is_valid",
    "min_distance",
]

MIN_DISTANCE = 0.5  # Å
MIN_VOLUME = 0.1  # Å^3
MIN_LENGTH, MAX_LENGTH = 0.5, 100.0  # Å
MIN_ANGLE, MAX_ANGLE = 10.0, 170.0  # degrees
MAX_Z = 94


@dataclass(frozen=True)
class Validity:
    valid: bool
    reason: str | None = None

    def __bool__(self) -> bool:
        return self.valid


def _reduced_structure(crystal: Crystal) -> Structure:
    lll = Lattice(crystal.lattice).get_lll_reduced_lattice()
    cart = crystal.frac_coords @ crystal.lattice
    return Structure(lll, crystal.numbers.tolist(), cart, coords_are_cartesian=True)


def min_distance(crystal: Crystal, cutoff: float = 8.0) -> float:
    """Shortest interatomic distance (Å) including periodic images; ``inf`` when none is
    within ``cutoff`` Å. Assumes a non-degenerate cell (check the volume first)."""
    structure = _reduced_structure(crystal)
    _, _, _, dists = structure.get_neighbor_list(cutoff, exclude_self=True)
    return float(dists.min()) if len(dists) else float("inf")


def check_validity(crystal: Crystal) -> Validity:
    """Validity with the first failed rule as ``reason`` (see the module docstring)."""
    n = crystal.num_atoms
    if n == 0:
        return Validity(False, "no atoms")
    if n > MAX_ATOMS:
        return Validity(False, f"{n} atoms, more than {MAX_ATOMS}")
    if not (np.isfinite(crystal.lattice).all() and np.isfinite(crystal.frac_coords).all()):
        return Validity(False, "non-finite lattice or coordinates")
    z = crystal.numbers
    if z.min() < 1 or z.max() > MAX_Z:
        return Validity(False, f"atomic numbers must be 1..{MAX_Z}")
    volume = crystal.volume
    if volume < MIN_VOLUME:
        return Validity(False, f"cell volume {volume:.3g} A^3 below {MIN_VOLUME}")
    lengths, angles = crystal.lengths, crystal.angles
    if lengths.min() < MIN_LENGTH or lengths.max() > MAX_LENGTH:
        return Validity(
            False,
            f"lattice lengths {np.round(lengths, 3).tolist()} outside "
            f"[{MIN_LENGTH}, {MAX_LENGTH}] A",
        )
    if angles.min() < MIN_ANGLE or angles.max() > MAX_ANGLE:
        return Validity(
            False,
            f"lattice angles {np.round(angles, 2).tolist()} outside "
            f"[{MIN_ANGLE}, {MAX_ANGLE}] degrees",
        )
    structure = _reduced_structure(crystal)
    # The shortest reduced-cell vector is the distance from any atom to its own image.
    if min(structure.lattice.abc) < MIN_DISTANCE:
        return Validity(False, f"periodic images closer than {MIN_DISTANCE} A")
    _, _, _, dists = structure.get_neighbor_list(MIN_DISTANCE, exclude_self=True)
    close = dists[dists < MIN_DISTANCE]
    if len(close):
        return Validity(False, f"atoms {close.min():.3f} A apart (< {MIN_DISTANCE} A)")
    return Validity(True)


def is_valid(crystal: Crystal) -> bool:
    return check_validity(crystal).valid
