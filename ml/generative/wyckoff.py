"""Crystals as space group + Wyckoff orbits + free parameters, and back.

A crystal in space group G is fixed by its conventional lattice (only the parameters free in
G's crystal system) and, per orbit of symmetry-equivalent atoms, the orbit's Wyckoff letter,
its element and the free parameters of the Wyckoff position (e.g. x of ``x, x, x``). This is
the representation symmetry-aware generators (issue 13's flow model, MatInvent, Crystal-GFN)
sample in: expanding it gives G exactly.

Tables and settings come from pyxtal (International Tables, its standard settings: hexagonal
axes for R groups, unique axis b, origin choice 2); spglib finds the symmetry and the
standardised conventional cell in *the same* setting (pyxtal's Hall number). Wyckoff position
``ops[0]`` of pyxtal is the orbit's representative form (``x, 2x, 1/4``); ``ops[k]`` maps the
generic (x, y, z) to the k-th atom of the orbit in the conventional cell, centring included.
The free parameters of an orbit are the (x, y, z) values whose columns in ``ops[0]`` are
non-zero; the others are stored as 0.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import spglib

from ml.crystal import Crystal, lattice_from_params, lattice_params

__all__ = [
    "CRYSTAL_SYSTEMS",
    "Orbit",
    "WyckoffCrystal",
    "WyckoffError",
    "constrain_lattice",
    "crystal_system",
    "lattice_free_mask",
    "num_wyckoff_positions",
    "orbit_ops",
    "positions",
    "wyckoff_index",
    "wyckoff_letter",
]

CRYSTAL_SYSTEMS = ("triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal",
                   "hexagonal", "cubic")  # fmt: skip
# Last space-group number of each crystal system (ITA numbering).
_SYSTEM_END = (2, 15, 74, 142, 167, 194, 230)


class WyckoffError(ValueError):
    """A structure whose Wyckoff decomposition failed (e.g. a setting spglib cannot match)."""


@cache
def _group(number: int):  # type: ignore[no-untyped-def]
    from pyxtal.symmetry import Group

    return Group(number)


def crystal_system(space_group: int) -> str:
    if not 1 <= space_group <= 230:
        raise ValueError(f"space group must be 1-230, got {space_group}")
    return CRYSTAL_SYSTEMS[next(i for i, e in enumerate(_SYSTEM_END) if space_group <= e)]


def lattice_free_mask(space_group: int) -> np.ndarray:
    """Which of (a, b, c, alpha, beta, gamma) are free in the crystal system (bool, 6). Tied
    lengths (b = a, c = a) and fixed angles (90, 120) are not free."""
    return {
        "triclinic": np.array([1, 1, 1, 1, 1, 1], bool),
        "monoclinic": np.array([1, 1, 1, 0, 1, 0], bool),  # unique axis b
        "orthorhombic": np.array([1, 1, 1, 0, 0, 0], bool),
        "tetragonal": np.array([1, 0, 1, 0, 0, 0], bool),
        "trigonal": np.array([1, 0, 1, 0, 0, 0], bool),  # hexagonal axes
        "hexagonal": np.array([1, 0, 1, 0, 0, 0], bool),
        "cubic": np.array([1, 0, 0, 0, 0, 0], bool),
    }[crystal_system(space_group)]


def constrain_lattice(space_group: int, params: np.ndarray) -> np.ndarray:
    """(a, b, c, alpha, beta, gamma) with the crystal system's ties and fixed angles imposed
    (the free values are kept)."""
    p = np.array(params, dtype=np.float64)
    system = crystal_system(space_group)
    if system in ("tetragonal", "trigonal", "hexagonal", "cubic"):
        p[1] = p[0]
    if system == "cubic":
        p[2] = p[0]
    if system != "triclinic":
        p[3] = p[5] = 90.0
    if system != "triclinic" and system != "monoclinic":
        p[4] = 90.0
    if system in ("trigonal", "hexagonal"):
        p[5] = 120.0
    return p


@cache
def _wyckoff_table() -> tuple[tuple[int, str], ...]:
    """(space group, letter) of every Wyckoff position of the 230 groups (1,731 entries)."""
    return tuple((g, wp.letter) for g in range(1, 231) for wp in _group(g))


@cache
def _wyckoff_ids() -> dict[tuple[int, str], int]:
    return {key: i for i, key in enumerate(_wyckoff_table())}


def num_wyckoff_positions() -> int:
    return len(_wyckoff_table())


def wyckoff_index(space_group: int, letter: str) -> int:
    """Global index (0..1730) of a Wyckoff position, for embeddings."""
    try:
        return _wyckoff_ids()[(space_group, letter)]
    except KeyError:
        raise ValueError(f"space group {space_group} has no Wyckoff position {letter!r}") from None


def wyckoff_letter(index: int) -> tuple[int, str]:
    return _wyckoff_table()[index]


@cache
def _position(space_group: int, letter: str):  # type: ignore[no-untyped-def]
    wp = _group(space_group).get_wp_by_letter(letter)
    if wp is None:
        raise ValueError(f"space group {space_group} has no Wyckoff position {letter!r}")
    return wp


@cache
def orbit_ops(space_group: int, letter: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(A, b, free)``: atom k of the orbit sits at ``A[k] @ xyz + b[k]`` (mod 1) in the
    conventional cell, for the generic parameters ``xyz`` (only ``free`` ones matter).
    Shapes (M, 3, 3), (M, 3), (3,) bool; M is the conventional multiplicity."""
    wp = _position(space_group, letter)
    affine = np.array([op.affine_matrix for op in wp.ops], dtype=np.float64)
    rot, trans = affine[:, :3, :3], affine[:, :3, 3]
    free = np.abs(rot[0]).sum(axis=0) > 0
    return rot, trans, free


def multiplicity(space_group: int, letter: str) -> int:
    return int(_position(space_group, letter).multiplicity)


def positions(space_group: int, letter: str, xyz: np.ndarray) -> np.ndarray:
    """Fractional positions (M, 3) in [0, 1) of the orbit generated from ``xyz``."""
    rot, trans, free = orbit_ops(space_group, letter)
    u = np.where(free, np.asarray(xyz, dtype=np.float64), 0.0)
    return np.mod(rot @ u + trans, 1.0)


@dataclass(frozen=True)
class Orbit:
    letter: str
    number: int  # atomic number
    xyz: tuple[float, float, float]  # generic parameters; non-free ones are 0


@dataclass
class WyckoffCrystal:
    """A crystal in its space group's Wyckoff representation (pyxtal's standard setting).

    ``lattice``: conventional (a, b, c, alpha, beta, gamma), Å and degrees."""

    space_group: int
    lattice: np.ndarray
    orbits: list[Orbit]
    properties: dict[str, float] = field(default_factory=dict)

    @property
    def letters(self) -> list[str]:
        return [o.letter for o in self.orbits]

    def counts(self) -> dict[int, int]:
        """Atoms per element in the conventional cell."""
        out: dict[int, int] = {}
        for o in self.orbits:
            out[o.number] = out.get(o.number, 0) + multiplicity(self.space_group, o.letter)
        return out

    def conventional(self) -> Crystal:
        frac, numbers = [], []
        for o in self.orbits:
            pos = positions(self.space_group, o.letter, np.array(o.xyz))
            frac.append(pos)
            numbers += [o.number] * len(pos)
        lat = constrain_lattice(self.space_group, self.lattice)
        return Crystal(lattice_from_params(lat[:3], lat[3:]), np.concatenate(frac), numbers)

    def to_crystal(self, primitive: bool = True) -> Crystal:
        """The expanded crystal: conventional cell, or (default) its primitive cell, found by
        spglib without idealising (the space group is unchanged either way)."""
        conv = self.conventional()
        if not primitive:
            return conv
        cell = spglib.standardize_cell(
            (conv.lattice, conv.frac_coords, conv.numbers),
            to_primitive=True,
            no_idealize=True,
            symprec=1e-3,
        )
        if cell is None:  # e.g. overlapping atoms: keep the conventional cell
            return conv
        lat, frac, nums = cell
        return Crystal(lat, frac, nums, dict(self.properties))

    @classmethod
    def from_crystal(cls, crystal: Crystal, symprec: float = 0.1) -> WyckoffCrystal:
        """Decompose a crystal: spglib's space group (``symprec``), standardised to pyxtal's
        setting; one representative per orbit in the Wyckoff position's ``ops[0]`` form."""
        cell = (crystal.lattice, np.mod(crystal.frac_coords, 1.0), crystal.numbers)
        first = spglib.get_symmetry_dataset(cell, symprec=symprec)
        if first is None:
            raise WyckoffError("spglib found no symmetry")
        sg = int(first.number)
        hall = int(_group(sg).hall_number)
        ds = spglib.get_symmetry_dataset(cell, symprec=symprec, hall_number=hall)
        if ds is None or int(ds.number) != sg:
            raise WyckoffError(f"spglib could not use Hall setting {hall} of group {sg}")
        std = (ds.std_lattice, ds.std_positions, ds.std_types)
        # Again on the idealised standard cell: its atoms are the conventional cell's, and
        # Wyckoff letters and orbits refer to them directly.
        ds2 = spglib.get_symmetry_dataset(std, symprec=1e-3, hall_number=hall)
        if ds2 is None or int(ds2.number) != sg:
            raise WyckoffError("standardised cell lost its symmetry")
        if not np.allclose(ds2.transformation_matrix, np.eye(3), atol=1e-6):
            raise WyckoffError("standardised cell is not in the standard setting")
        shift = np.asarray(ds2.origin_shift)
        frac = np.mod(np.asarray(ds.std_positions) + shift, 1.0)  # origin at pyxtal's
        orbits = []
        equiv = np.asarray(ds2.equivalent_atoms)
        for rep in np.unique(equiv):
            letter = str(ds2.wyckoffs[rep])
            members = frac[equiv == rep]
            if len(members) != multiplicity(sg, letter):
                raise WyckoffError(f"orbit {letter} has {len(members)} atoms")
            orbits.append(Orbit(letter, int(ds.std_types[rep]), _generator(sg, letter, members)))
        lengths, angles = lattice_params(np.asarray(ds.std_lattice))
        return cls(sg, np.concatenate([lengths, angles]), orbits, dict(crystal.properties))


_SHIFTS = np.array(list(itertools.product((-1, 0, 1), repeat=3)), dtype=np.float64)


def _generator(sg: int, letter: str, members: np.ndarray, tol: float = 2e-3) -> tuple:
    """Free parameters of the orbit member that has the representative form ``ops[0]``."""
    rot, trans, free = orbit_ops(sg, letter)
    r0, t0 = rot[0], trans[0]
    pinv = np.linalg.pinv(r0)
    for p in members:
        cand = p[None] + _SHIFTS - t0  # (27, 3): lift to the representative's image
        u = cand @ pinv.T
        resid = cand - u @ r0.T
        ok = np.abs(resid).max(axis=1) < tol
        if ok.any():
            xyz = np.where(free, np.mod(u[np.argmax(ok)], 1.0), 0.0)
            # Check the whole orbit is reproduced (guards against a setting mismatch).
            gen = positions(sg, letter, xyz)
            d = members[:, None] - gen[None]
            d -= np.round(d)
            if np.abs(d).max(-1).min(1).max() < 10 * tol:
                return tuple(float(v) for v in xyz)
    raise WyckoffError(f"no orbit member of {sg}{letter} has the representative form")
