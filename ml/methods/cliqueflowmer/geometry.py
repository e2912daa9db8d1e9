"""Material <-> tensors: canonical (Niggli) cells, padded batches and the flow's coordinates.

The model sees a crystal as (lengths, angles, fractional positions, atom types) of its
Niggli-reduced cell, atoms sorted by atomic number (then position), so the atom-type decoder
has one canonical sequence to learn. The flow works in normalised coordinates:

- lengths: standardised canonical log-lengths ``(log(l / N^(1/3)) - mu) / sigma``; the prior
  N(0, 1) there is exactly the atom-count-scaled log-normal prior with mu, sigma fitted on the
  training set's Niggli lengths;
- angles: ``(angle - 90 deg) / 30 deg``; the prior U(-1, 1) is the uniform (60, 120) deg prior;
- positions: fractional coordinates; prior U[0, 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pymatgen.core import Lattice

from ml.crystal import Crystal

ANGLE_CENTER = 90.0
ANGLE_SCALE = 30.0
# Decoded angles are clamped here; a cell outside is not a sensible crystal.
ANGLE_MIN, ANGLE_MAX = 30.0, 150.0


def canonical_cell(crystal: Crystal) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lengths (Å), angles (deg), wrapped fractional coordinates and atomic numbers of the
    Niggli-reduced cell, atoms sorted by (atomic number, x, y, z)."""
    lattice = Lattice(crystal.lattice)
    niggli = lattice.get_niggli_reduced_lattice()
    frac = np.mod(niggli.get_fractional_coords(crystal.cart_coords), 1.0)
    frac[np.isclose(frac, 1.0, atol=1e-8)] = 0.0
    numbers = crystal.numbers
    order = np.lexsort((frac[:, 2], frac[:, 1], frac[:, 0], numbers))
    return (
        np.array(niggli.abc, dtype=np.float64),
        np.array(niggli.angles, dtype=np.float64),
        frac[order],
        numbers[order],
    )


@dataclass
class PackedMaterials:
    """Many canonical cells as padded arrays (M materials, up to ``max_atoms`` each)."""

    lengths: np.ndarray  # (M, 3) Å
    angles: np.ndarray  # (M, 3) degrees
    frac: np.ndarray  # (M, A, 3)
    numbers: np.ndarray  # (M, A) atomic numbers, 0 = padding
    num_atoms: np.ndarray  # (M,)
    ids: np.ndarray  # (M,) material ids (str)

    def __len__(self) -> int:
        return len(self.num_atoms)

    @classmethod
    def from_crystals(
        cls, crystals: Sequence[Crystal], ids: Sequence[str] | None = None, max_atoms: int = 20
    ) -> PackedMaterials:
        m = len(crystals)
        out = cls(
            lengths=np.zeros((m, 3)),
            angles=np.zeros((m, 3)),
            frac=np.zeros((m, max_atoms, 3)),
            numbers=np.zeros((m, max_atoms), dtype=np.int64),
            num_atoms=np.zeros(m, dtype=np.int64),
            ids=np.array(list(ids) if ids is not None else [str(i) for i in range(m)]),
        )
        for i, crystal in enumerate(crystals):
            if crystal.num_atoms > max_atoms:
                raise ValueError(f"crystal {i} has {crystal.num_atoms} atoms > {max_atoms}")
            lengths, angles, frac, numbers = canonical_cell(crystal)
            n = len(numbers)
            out.lengths[i], out.angles[i] = lengths, angles
            out.frac[i, :n], out.numbers[i, :n], out.num_atoms[i] = frac, numbers, n
        return out

    def subset(self, index: np.ndarray | Sequence[int]) -> PackedMaterials:
        idx = np.asarray(index)
        return PackedMaterials(
            self.lengths[idx],
            self.angles[idx],
            self.frac[idx],
            self.numbers[idx],
            self.num_atoms[idx],
            self.ids[idx],
        )

    @classmethod
    def concat(cls, parts: Sequence[PackedMaterials]) -> PackedMaterials:
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in _FIELDS))

    def save(self, path: str) -> None:
        np.savez_compressed(path, **{f: getattr(self, f) for f in _FIELDS})

    @classmethod
    def load(cls, path: str) -> PackedMaterials:
        with np.load(path, allow_pickle=False) as z:
            return cls(*(z[f] for f in _FIELDS))

    def crystal(self, i: int) -> Crystal:
        n = int(self.num_atoms[i])
        return Crystal.from_params(
            self.lengths[i], self.angles[i], self.frac[i, :n], self.numbers[i, :n]
        )


_FIELDS = ("lengths", "angles", "frac", "numbers", "num_atoms", "ids")


@dataclass
class MaterialBatch:
    """A padded batch on a device. ``y`` is the (standardised) label, NaN when unknown."""

    lengths: torch.Tensor  # (B, 3)
    angles: torch.Tensor  # (B, 3)
    frac: torch.Tensor  # (B, A, 3)
    numbers: torch.Tensor  # (B, A) long
    num_atoms: torch.Tensor  # (B,) long
    y: torch.Tensor | None = None

    @property
    def mask(self) -> torch.Tensor:
        return self.numbers > 0

    @classmethod
    def from_packed(
        cls,
        packed: PackedMaterials,
        index: np.ndarray | Sequence[int] | None = None,
        y: np.ndarray | None = None,
        device: str | torch.device = "cpu",
    ) -> MaterialBatch:
        idx = np.arange(len(packed)) if index is None else np.asarray(index)
        width = max(int(packed.num_atoms[idx].max()), 1)

        def t(a: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.as_tensor(a, dtype=dtype, device=device)

        return cls(
            lengths=t(packed.lengths[idx]),
            angles=t(packed.angles[idx]),
            frac=t(packed.frac[idx, :width]),
            numbers=t(packed.numbers[idx, :width], torch.long),
            num_atoms=t(packed.num_atoms[idx], torch.long),
            y=None if y is None else t(y[idx]),
        )

    def index(self, idx: torch.Tensor) -> MaterialBatch:
        return MaterialBatch(
            self.lengths[idx],
            self.angles[idx],
            self.frac[idx],
            self.numbers[idx],
            self.num_atoms[idx],
            None if self.y is None else self.y[idx],
        )


@dataclass
class LengthPrior:
    """Log-normal prior of canonical lengths l / N^(1/3), one (mu, sigma) per Niggli axis."""

    mu: np.ndarray
    sigma: np.ndarray

    @classmethod
    def fit(cls, lengths: np.ndarray, num_atoms: np.ndarray) -> LengthPrior:
        canon = np.log(lengths / np.cbrt(num_atoms.astype(np.float64))[:, None])
        return cls(mu=canon.mean(0), sigma=np.maximum(canon.std(0), 1e-3))

    @classmethod
    def default(cls) -> LengthPrior:
        return cls(mu=np.zeros(3), sigma=np.ones(3))


def lengths_to_flow(
    lengths: torch.Tensor, num_atoms: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    canon = torch.log(lengths) - torch.log(num_atoms.to(lengths.dtype))[:, None] / 3.0
    return (canon - mu) / sigma


def lengths_from_flow(
    x: torch.Tensor, num_atoms: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    return torch.exp(x * sigma + mu + torch.log(num_atoms.to(x.dtype))[:, None] / 3.0)


def angles_to_flow(angles_deg: torch.Tensor) -> torch.Tensor:
    return (angles_deg - ANGLE_CENTER) / ANGLE_SCALE


def angles_from_flow(x: torch.Tensor) -> torch.Tensor:
    return x * ANGLE_SCALE + ANGLE_CENTER


def valid_angles(angles_deg: np.ndarray) -> np.ndarray:
    """Repair a set of cell angles that admits no parallelepiped: shrink towards 90 degrees.

    Three angles make a cell only when 1 - cos^2 a - cos^2 b - cos^2 g + 2 cos a cos b cos g > 0
    (and each is less than the sum of the others); decoded angles occasionally break this.
    """
    ang = np.clip(np.asarray(angles_deg, dtype=np.float64), ANGLE_MIN, ANGLE_MAX)
    for _ in range(50):
        c = np.cos(np.deg2rad(ang))
        det = 1 - (c**2).sum() + 2 * c.prod()
        s = ang.sum()
        if det > 1e-3 and all(2 * a < s for a in ang) and s < 360.0:
            return ang
        ang = ANGLE_CENTER + 0.9 * (ang - ANGLE_CENTER)
    return np.full(3, ANGLE_CENTER)


def crystal_from_params(
    lengths: np.ndarray, angles_deg: np.ndarray, frac: np.ndarray, numbers: np.ndarray
) -> Crystal:
    """A crystal from decoded parameters: angles repaired, positions wrapped into [0, 1)."""
    lengths = np.clip(np.nan_to_num(lengths, nan=3.0, posinf=30.0), 0.5, 100.0)
    angles = valid_angles(np.nan_to_num(angles_deg, nan=ANGLE_CENTER))
    frac = np.mod(np.nan_to_num(frac, nan=0.0), 1.0)
    return Crystal.from_params(lengths, angles, frac, numbers)
