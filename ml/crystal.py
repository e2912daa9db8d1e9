"""The one crystal representation shared by every method, oracle and the service.

A :class:`Crystal` is a periodic cell: a 3x3 lattice matrix (rows are lattice vectors, Å),
fractional coordinates (N x 3) and atomic numbers (N). Many crystals of different sizes are
batched by concatenation plus a per-atom crystal index (:class:`CrystalBatch`), the layout
torch_geometric and matgl use, so the same tensors feed models without re-packing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from pymatgen.core import Element, Lattice, Structure

__all__ = [
    "Crystal",
    "CrystalBatch",
    "lattice_from_params",
    "lattice_from_params_torch",
    "lattice_params",
    "lattice_params_torch",
]


def lattice_params(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lengths (Å) and angles (degrees, alpha beta gamma) of a 3x3 lattice matrix."""
    lat = Lattice(matrix)
    return np.array(lat.abc, dtype=np.float64), np.array(lat.angles, dtype=np.float64)


def lattice_from_params(lengths: Sequence[float], angles: Sequence[float]) -> np.ndarray:
    """Lattice matrix in pymatgen's standard orientation from lengths and angles (degrees)."""
    a, b, c = lengths
    alpha, beta, gamma = angles
    return np.array(Lattice.from_parameters(a, b, c, alpha, beta, gamma).matrix)


def lattice_params_torch(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable lengths and angles (degrees) of a batch of lattices (B, 3, 3)."""
    lengths = matrix.norm(dim=-1)
    a, b, c = matrix[:, 0], matrix[:, 1], matrix[:, 2]

    def angle(u: torch.Tensor, v: torch.Tensor, nu: torch.Tensor, nv: torch.Tensor) -> torch.Tensor:
        cos = (u * v).sum(-1) / (nu * nv)
        return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))

    alpha = angle(b, c, lengths[:, 1], lengths[:, 2])
    beta = angle(a, c, lengths[:, 0], lengths[:, 2])
    gamma = angle(a, b, lengths[:, 0], lengths[:, 1])
    return lengths, torch.stack([alpha, beta, gamma], dim=-1)


def lattice_from_params_torch(lengths: torch.Tensor, angles_deg: torch.Tensor) -> torch.Tensor:
    """Differentiable lattice matrices (B, 3, 3) from lengths (B, 3) and angles (B, 3, degrees).

    Same orientation convention as pymatgen's ``Lattice.from_parameters``: c along z,
    a in the xz plane.
    """
    ang = torch.deg2rad(angles_deg)
    cos_a, cos_b, cos_g = torch.cos(ang).unbind(-1)
    sin_a, sin_b = torch.sin(ang[..., 0]), torch.sin(ang[..., 1])
    val = (cos_a * cos_b - cos_g) / (sin_a * sin_b)
    # Clamp so nearly degenerate cells stay differentiable instead of producing NaN.
    val = val.clamp(-1.0 + 1e-7, 1.0 - 1e-7)
    gamma_star = torch.arccos(val)
    a, b, c = lengths.unbind(-1)
    zero = torch.zeros_like(a)
    va = torch.stack([a * sin_b, zero, a * cos_b], dim=-1)
    vb = torch.stack(
        [-b * sin_a * torch.cos(gamma_star), b * sin_a * torch.sin(gamma_star), b * cos_a], dim=-1
    )
    vc = torch.stack([zero, zero, c], dim=-1)
    return torch.stack([va, vb, vc], dim=-2)


@dataclass
class Crystal:
    """One periodic crystal.

    ``lattice``: (3, 3) float64, rows are the lattice vectors in Å.
    ``frac_coords``: (N, 3) float64 fractional coordinates (not necessarily wrapped).
    ``numbers``: (N,) int64 atomic numbers.
    ``properties``: free-form scalar labels (e.g. DFT formation energy) carried along.
    """

    lattice: np.ndarray
    frac_coords: np.ndarray
    numbers: np.ndarray
    properties: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.lattice = np.asarray(self.lattice, dtype=np.float64).reshape(3, 3)
        self.frac_coords = np.asarray(self.frac_coords, dtype=np.float64).reshape(-1, 3)
        self.numbers = np.asarray(self.numbers, dtype=np.int64).reshape(-1)
        if len(self.frac_coords) != len(self.numbers):
            raise ValueError(
                f"{len(self.frac_coords)} coordinates but {len(self.numbers)} atomic numbers"
            )

    # --- derived quantities -------------------------------------------------------------
    @property
    def num_atoms(self) -> int:
        return len(self.numbers)

    @property
    def lengths(self) -> np.ndarray:
        return lattice_params(self.lattice)[0]

    @property
    def angles(self) -> np.ndarray:
        return lattice_params(self.lattice)[1]

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.lattice)))

    @property
    def cart_coords(self) -> np.ndarray:
        return self.frac_coords @ self.lattice

    @property
    def species(self) -> list[str]:
        return [Element.from_Z(int(z)).symbol for z in self.numbers]

    @property
    def formula(self) -> str:
        return self.to_structure().composition.reduced_formula

    def wrapped(self) -> Crystal:
        """Copy with fractional coordinates wrapped into [0, 1)."""
        frac = np.mod(self.frac_coords, 1.0)
        frac[np.isclose(frac, 1.0, atol=1e-12)] = 0.0
        return Crystal(self.lattice.copy(), frac, self.numbers.copy(), dict(self.properties))

    # --- conversions --------------------------------------------------------------------
    @classmethod
    def from_params(
        cls,
        lengths: Sequence[float],
        angles: Sequence[float],
        frac_coords: np.ndarray,
        numbers: Sequence[int],
    ) -> Crystal:
        return cls(lattice_from_params(lengths, angles), frac_coords, np.asarray(numbers))

    @classmethod
    def from_structure(cls, structure: Structure, **properties: float) -> Crystal:
        if not structure.is_ordered:
            raise ValueError("disordered structures are not supported; order them first")
        return cls(
            lattice=np.array(structure.lattice.matrix),
            frac_coords=np.array(structure.frac_coords),
            numbers=np.array([site.specie.Z for site in structure]),
            properties=dict(properties),
        )

    def to_structure(self) -> Structure:
        return Structure(
            Lattice(self.lattice),
            [Element.from_Z(int(z)) for z in self.numbers],
            self.frac_coords,
            coords_are_cartesian=False,
        )

    @classmethod
    def from_cif(cls, cif: str) -> Crystal:
        """Parse CIF text (first block). Raises ``ValueError`` for text that holds no crystal."""
        from pymatgen.io.cif import CifParser

        try:
            structures = CifParser.from_str(cif).parse_structures(primitive=False)
        except Exception as exc:  # pymatgen raises many types for malformed CIF
            raise ValueError(f"malformed CIF: {exc}") from exc
        if not structures:
            raise ValueError("CIF holds no structure")
        return cls.from_structure(structures[0])

    def to_cif(self, symprec: float | None = None) -> str:
        """CIF text in P1. Coordinates are written with enough digits for 1e-6 round trips."""
        from pymatgen.io.cif import CifWriter

        return str(CifWriter(self.to_structure(), symprec=symprec, significant_figures=10))

    @classmethod
    def from_ase(cls, atoms: object) -> Crystal:
        return cls(
            lattice=np.array(atoms.cell[:]),  # type: ignore[attr-defined]
            frac_coords=np.array(atoms.get_scaled_positions(wrap=False)),  # type: ignore[attr-defined]
            numbers=np.array(atoms.numbers),  # type: ignore[attr-defined]
        )

    def to_ase(self) -> object:
        from ase import Atoms

        return Atoms(
            numbers=self.numbers, scaled_positions=self.frac_coords, cell=self.lattice, pbc=True
        )

    def copy(self) -> Crystal:
        return Crystal(
            self.lattice.copy(), self.frac_coords.copy(), self.numbers.copy(), dict(self.properties)
        )

    def __repr__(self) -> str:
        a, b, c = self.lengths
        return f"Crystal({self.formula}, n={self.num_atoms}, abc=({a:.3f}, {b:.3f}, {c:.3f}))"


def as_structure(item: Crystal | Structure) -> Structure:
    return item.to_structure() if isinstance(item, Crystal) else item


def as_crystal(item: Crystal | Structure) -> Crystal:
    return item if isinstance(item, Crystal) else Crystal.from_structure(item)


@dataclass
class CrystalBatch:
    """Many crystals as concatenated torch tensors with a per-atom crystal index.

    ``lattice``: (B, 3, 3); ``frac_coords``: (sum N, 3); ``numbers``: (sum N,);
    ``batch``: (sum N,) index of the crystal each atom belongs to; ``num_atoms``: (B,).
    """

    lattice: torch.Tensor
    frac_coords: torch.Tensor
    numbers: torch.Tensor
    batch: torch.Tensor
    num_atoms: torch.Tensor

    @classmethod
    def from_crystals(
        cls,
        crystals: Sequence[Crystal | Structure],
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> CrystalBatch:
        xs = [as_crystal(c) for c in crystals]
        if not xs:
            raise ValueError("cannot batch zero crystals")
        counts = torch.tensor([x.num_atoms for x in xs], dtype=torch.long)
        return cls(
            lattice=torch.tensor(np.stack([x.lattice for x in xs]), dtype=dtype, device=device),
            frac_coords=torch.tensor(
                np.concatenate([x.frac_coords for x in xs]), dtype=dtype, device=device
            ),
            numbers=torch.tensor(np.concatenate([x.numbers for x in xs]), device=device),
            batch=torch.repeat_interleave(torch.arange(len(xs)), counts).to(device),
            num_atoms=counts.to(device),
        )

    @property
    def num_crystals(self) -> int:
        return int(self.lattice.shape[0])

    @property
    def device(self) -> torch.device:
        return self.lattice.device

    def to(self, device: str | torch.device) -> CrystalBatch:
        return CrystalBatch(
            self.lattice.to(device),
            self.frac_coords.to(device),
            self.numbers.to(device),
            self.batch.to(device),
            self.num_atoms.to(device),
        )

    def cart_coords(self) -> torch.Tensor:
        """Cartesian coordinates (sum N, 3), differentiable in lattice and coordinates."""
        return torch.einsum("ni,nij->nj", self.frac_coords, self.lattice[self.batch])

    def lengths_angles(self) -> tuple[torch.Tensor, torch.Tensor]:
        return lattice_params_torch(self.lattice)

    def to_crystals(self) -> list[Crystal]:
        lat = self.lattice.detach().double().cpu().numpy()
        frac = self.frac_coords.detach().double().cpu().numpy()
        nums = self.numbers.detach().cpu().numpy()
        offsets = np.concatenate([[0], np.cumsum(self.num_atoms.cpu().numpy())])
        return [
            Crystal(lat[i], frac[offsets[i] : offsets[i + 1]], nums[offsets[i] : offsets[i + 1]])
            for i in range(self.num_crystals)
        ]


def niggli_lengths_angles(crystal: Crystal) -> tuple[np.ndarray, np.ndarray]:
    """Lengths and angles of the Niggli-reduced cell: the canonical cell models learn from."""
    lat = Lattice(crystal.lattice).get_niggli_reduced_lattice()
    return np.array(lat.abc), np.array(lat.angles)


def cell_volume_per_atom(crystal: Crystal) -> float:
    return crystal.volume / max(crystal.num_atoms, 1)
