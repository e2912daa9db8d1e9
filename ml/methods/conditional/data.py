"""MP-20 crystals as compact arrays of canonical (Niggli-reduced) cells, and padded batches.

Records come from :mod:`ml.data`; Niggli-reducing ~20k cells takes a minute, so each split is
kept as an ``.npz`` under the cache directory and the GPU run loads that file.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ml.crystal import Crystal
from ml.data import CrystalRecord, load_records
from ml.methods.conditional.flow import FlowBatch
from ml.methods.conditional.geometry import LengthPrior, canonical, encode_lattice
from ml.settings import get_ml_settings

SPLITS = ("train", "val", "test")


@dataclass
class CrystalArrays:
    """Crystals concatenated: per-atom ``numbers`` and ``frac``; per-crystal the rest."""

    ids: np.ndarray  # (n,) material ids
    num_atoms: np.ndarray  # (n,) int
    numbers: np.ndarray  # (sum N,) int
    frac: np.ndarray  # (sum N, 3) canonical fractional coordinates in [0, 1)
    lengths: np.ndarray  # (n, 3) Å, canonical cell
    angles: np.ndarray  # (n, 3) degrees, canonical cell
    space_group: np.ndarray  # (n,) int
    formation_energy: np.ndarray  # (n,) eV/atom, DFT
    band_gap: np.ndarray  # (n,) eV, DFT

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.num_atoms)])

    def crystal(self, i: int) -> Crystal:
        o = self.offsets
        atoms = slice(o[i], o[i + 1])
        c = Crystal.from_params(
            self.lengths[i], self.angles[i], self.frac[atoms], self.numbers[atoms]
        )
        c.properties = {
            "formation_energy": float(self.formation_energy[i]),
            "band_gap": float(self.band_gap[i]),
            "space_group": float(self.space_group[i]),
        }
        return c

    def subset(self, idx: Sequence[int] | np.ndarray) -> CrystalArrays:
        idx = np.asarray(idx, dtype=np.int64)
        o = self.offsets
        atoms = np.concatenate([np.arange(o[i], o[i + 1]) for i in idx]) if len(idx) else []
        atoms = np.asarray(atoms, dtype=np.int64)
        return CrystalArrays(
            self.ids[idx],
            self.num_atoms[idx],
            self.numbers[atoms],
            self.frac[atoms],
            self.lengths[idx],
            self.angles[idx],
            self.space_group[idx],
            self.formation_energy[idx],
            self.band_gap[idx],
        )

    @staticmethod
    def concat(parts: Sequence[CrystalArrays]) -> CrystalArrays:
        return CrystalArrays(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in CrystalArrays._fields())
        )

    @staticmethod
    def _fields() -> tuple[str, ...]:
        return tuple(CrystalArrays.__dataclass_fields__)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **{f: getattr(self, f) for f in self._fields()})

    @classmethod
    def load(cls, path: Path) -> CrystalArrays:
        with np.load(path, allow_pickle=False) as z:
            return cls(*(z[f] for f in cls._fields()))


def _canonical_arrays(crystal: Crystal) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    c = canonical(crystal)
    return c.numbers, c.frac_coords, c.lengths, c.angles


def from_records(records: Sequence[CrystalRecord], workers: int = 1) -> CrystalArrays:
    """Canonical arrays of data-set records (Niggli reduction in ``workers`` processes)."""
    crystals = [r.crystal for r in records]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            parsed = list(pool.map(_canonical_arrays, crystals, chunksize=64))
    else:
        parsed = [_canonical_arrays(c) for c in crystals]
    nan = float("nan")
    return CrystalArrays(
        ids=np.array([r.material_id for r in records], dtype="U"),
        num_atoms=np.array([len(p[0]) for p in parsed], dtype=np.int64),
        numbers=np.concatenate([p[0] for p in parsed]).astype(np.int64),
        frac=np.concatenate([p[1] for p in parsed]).astype(np.float32),
        lengths=np.stack([p[2] for p in parsed]).astype(np.float64),
        angles=np.stack([p[3] for p in parsed]).astype(np.float64),
        space_group=np.array([r.space_group or 0 for r in records], dtype=np.int64),
        formation_energy=np.array(
            [r.properties.get("formation_energy_per_atom", nan) for r in records]
        ),
        band_gap=np.array([r.properties.get("band_gap", nan) for r in records]),
    )


def cache_path(split: str) -> Path:
    return get_ml_settings().cache_dir / "conditional" / f"mp20_{split}.npz"


def load_split(split: str, workers: int = 1, limit: int | None = None) -> CrystalArrays:
    """One MP-20 split (records from :mod:`ml.data`) as canonical arrays, cached as ``.npz``.
    ``limit`` takes only the first rows (not cached), for tests."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; one of {SPLITS}")
    path = cache_path(split)
    if limit is None and path.exists():
        return CrystalArrays.load(path)
    arrays = from_records(load_records("mp20", split, limit=limit), workers)
    if limit is None:
        arrays.save(path)
    return arrays


def property_matrix(arrays: CrystalArrays, properties: Sequence[str]) -> np.ndarray:
    cols = {"formation_energy": arrays.formation_energy, "band_gap": arrays.band_gap}
    return np.stack([cols[p] for p in properties], axis=1)


def fit_normalisation(
    arrays: CrystalArrays, properties: Sequence[str]
) -> tuple[LengthPrior, tuple[float, ...], tuple[float, ...]]:
    """Length prior and property (mean, std) from training arrays (NaN labels ignored)."""
    prior = LengthPrior.fit(arrays.lengths, arrays.num_atoms)
    props = property_matrix(arrays, properties)
    mean = tuple(float(v) for v in np.nanmean(props, axis=0))
    std = tuple(float(max(v, 1e-3)) for v in np.nanstd(props, axis=0))
    return prior, mean, std


class PaddedDataset:
    """The whole data set as padded tensors on one device; batches are index selections."""

    def __init__(
        self,
        arrays: CrystalArrays,
        prior: LengthPrior,
        properties: Sequence[str],
        device: str | torch.device = "cpu",
    ) -> None:
        n = len(arrays)
        nmax = int(arrays.num_atoms.max())
        types = np.zeros((n, nmax), dtype=np.int64)
        coords = np.zeros((n, nmax, 3), dtype=np.float32)
        o = arrays.offsets
        for i in range(n):
            k = arrays.num_atoms[i]
            types[i, :k] = arrays.numbers[o[i] : o[i + 1]]
            coords[i, :k] = arrays.frac[o[i] : o[i + 1]]
        self.types = torch.tensor(types, device=device)
        self.mask = self.types > 0
        self.coords = torch.tensor(coords, device=device)
        num_atoms = torch.tensor(arrays.num_atoms, device=device)
        self.lattice = encode_lattice(
            torch.tensor(arrays.lengths, dtype=torch.float32, device=device),
            torch.tensor(arrays.angles, dtype=torch.float32, device=device),
            num_atoms,
            prior,
        )
        self.space_group = torch.tensor(arrays.space_group, device=device)
        props = torch.tensor(property_matrix(arrays, properties), dtype=torch.float32)
        self.props_given = (~torch.isnan(props)).to(device)
        self.props = torch.nan_to_num(props).to(device)

    def __len__(self) -> int:
        return int(self.types.shape[0])

    def batch(self, idx: torch.Tensor, trim: bool = True) -> FlowBatch:
        """Rows ``idx``; ``trim`` cuts padding to the batch's largest crystal (one device sync,
        varying shapes), ``trim=False`` keeps the full width (static shapes for compiling)."""
        idx = idx.to(self.types.device)
        n = int(self.mask[idx].sum(1).max()) if trim else self.types.shape[1]
        return FlowBatch(
            types=self.types[idx, :n],
            mask=self.mask[idx, :n],
            coords=self.coords[idx, :n],
            lattice=self.lattice[idx],
            space_group=self.space_group[idx],
            props=self.props[idx],
            props_given=self.props_given[idx],
        )

    def epoch_batches(self, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
        perm = torch.randperm(len(self), generator=generator)
        count = max(1, len(self) // batch_size)
        return [perm[i * batch_size : (i + 1) * batch_size] for i in range(count)]
