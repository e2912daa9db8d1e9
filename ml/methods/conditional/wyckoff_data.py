"""MP-20 crystals in the Wyckoff representation, as arrays, and padded batches for the flow.

Decomposing a crystal (spglib + pyxtal, :mod:`ml.generative.wyckoff`) takes ~25 ms, so each
split is decomposed in a process pool once and kept as an ``.npz`` under the cache directory.
A batch holds, per crystal, its orbits (Wyckoff id, element, free parameters) and the atoms
of its conventional cell, each with the affine map from its orbit's parameters to its
position and the pseudo-inverse that maps a velocity of the atom back to the parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ml.crystal import Crystal
from ml.generative.wyckoff import (
    Orbit,
    WyckoffCrystal,
    lattice_free_mask,
    multiplicity,
    orbit_ops,
    wyckoff_index,
    wyckoff_letter,
)
from ml.settings import get_ml_settings

SPLITS = ("train", "val", "test")
ANGLE_SCALE = 30.0  # degrees per unit of the lattice state


@dataclass
class WyckoffArrays:
    """Crystals concatenated: per-orbit ``wid``, ``number``, ``xyz``; per-crystal the rest."""

    ids: np.ndarray  # (n,)
    space_group: np.ndarray  # (n,)
    lattice: np.ndarray  # (n, 6) conventional a, b, c (Å), alpha, beta, gamma (deg)
    num_orbits: np.ndarray  # (n,)
    wid: np.ndarray  # (sum O,) global Wyckoff index
    number: np.ndarray  # (sum O,) atomic number
    xyz: np.ndarray  # (sum O, 3) free parameters (0 where not free)
    formation_energy: np.ndarray  # (n,) eV/atom
    band_gap: np.ndarray  # (n,) eV

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.num_orbits)]).astype(np.int64)

    def wyckoff(self, i: int) -> WyckoffCrystal:
        o = self.offsets
        orbits = [
            Orbit(wyckoff_letter(int(self.wid[k]))[1], int(self.number[k]), tuple(self.xyz[k]))
            for k in range(o[i], o[i + 1])
        ]
        return WyckoffCrystal(int(self.space_group[i]), self.lattice[i].copy(), orbits)

    def conventional_atoms(self) -> np.ndarray:
        """(n,) atoms of each conventional cell."""
        o = self.offsets
        mult = np.array([multiplicity(*wyckoff_letter(int(w))) for w in self.wid])
        return np.add.reduceat(mult, o[:-1]) if len(self) else np.zeros(0, int)

    def subset(self, idx: Sequence[int] | np.ndarray) -> WyckoffArrays:
        idx = np.asarray(idx, dtype=np.int64)
        o = self.offsets
        orb = np.concatenate([np.arange(o[i], o[i + 1]) for i in idx]) if len(idx) else []
        orb = np.asarray(orb, dtype=np.int64)
        return WyckoffArrays(
            self.ids[idx],
            self.space_group[idx],
            self.lattice[idx],
            self.num_orbits[idx],
            self.wid[orb],
            self.number[orb],
            self.xyz[orb],
            self.formation_energy[idx],
            self.band_gap[idx],
        )

    @staticmethod
    def concat(parts: Sequence[WyckoffArrays]) -> WyckoffArrays:
        fields = tuple(WyckoffArrays.__dataclass_fields__)
        return WyckoffArrays(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **{f: getattr(self, f) for f in self.__dataclass_fields__})

    @classmethod
    def load(cls, path: Path) -> WyckoffArrays:
        with np.load(path, allow_pickle=False) as z:
            return cls(*(z[f] for f in cls.__dataclass_fields__))


def _decompose(crystal: Crystal) -> WyckoffCrystal | None:
    try:
        return WyckoffCrystal.from_crystal(crystal)
    except Exception:  # spglib/pyxtal corner cases: the crystal is left out and counted
        return None


def from_crystals(
    crystals: Sequence[Crystal], ids: Sequence[str], workers: int = 1
) -> WyckoffArrays:
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            parsed = list(pool.map(_decompose, crystals, chunksize=32))
    else:
        parsed = [_decompose(c) for c in crystals]
    keep = [i for i, w in enumerate(parsed) if w is not None]
    ws = [parsed[i] for i in keep]
    assert all(w is not None for w in ws)
    nan = float("nan")
    props = [crystals[i].properties for i in keep]
    return WyckoffArrays(
        ids=np.array([ids[i] for i in keep], dtype="U"),
        space_group=np.array([w.space_group for w in ws], dtype=np.int64),  # type: ignore[union-attr]
        lattice=np.array([w.lattice for w in ws], dtype=np.float64).reshape(-1, 6),  # type: ignore[union-attr]
        num_orbits=np.array([len(w.orbits) for w in ws], dtype=np.int64),  # type: ignore[union-attr]
        wid=np.array(
            [wyckoff_index(w.space_group, o.letter) for w in ws for o in w.orbits],  # type: ignore[union-attr]
            dtype=np.int64,
        ),
        number=np.array([o.number for w in ws for o in w.orbits], dtype=np.int64),  # type: ignore[union-attr]
        xyz=np.array([o.xyz for w in ws for o in w.orbits], dtype=np.float64).reshape(-1, 3),  # type: ignore[union-attr]
        formation_energy=np.array([p.get("formation_energy_per_atom", nan) for p in props]),
        band_gap=np.array([p.get("band_gap", nan) for p in props]),
    )


def cache_path(split: str) -> Path:
    return get_ml_settings().cache_dir / "conditional" / f"mp20_wyckoff_{split}.npz"


def load_split(split: str, workers: int = 1, limit: int | None = None) -> WyckoffArrays:
    """One MP-20 split in the Wyckoff representation, cached as ``.npz`` (not with ``limit``).
    Crystals whose decomposition fails are left out (their count is printed)."""
    from ml.data import load_records

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; one of {SPLITS}")
    path = cache_path(split)
    if limit is None and path.exists():
        return WyckoffArrays.load(path)
    records = load_records("mp20", split, limit=limit)
    arrays = from_crystals([r.crystal for r in records], [r.material_id for r in records], workers)
    if len(arrays) < len(records):
        print(f"wyckoff {split}: {len(records) - len(arrays)} of {len(records)} not decomposed")
    if limit is None:
        arrays.save(path)
    return arrays


def load_extra(max_atoms: int, workers: int = 1, limit: int | None = None) -> WyckoffArrays:
    """MP 2018 structures outside MP-20 (``mp2018/extra``) of at most ``max_atoms`` atoms, in the
    Wyckoff representation (cached as ``.npz``, not with ``limit``): larger cells than MP-20's
    for a generator that must reach them (LiFePO4's olivine has 28 atoms)."""
    from ml.data import load_records

    path = get_ml_settings().cache_dir / "conditional" / f"mp2018_extra_wyckoff_{max_atoms}.npz"
    if limit is None and path.exists():
        return WyckoffArrays.load(path)
    records = load_records("mp2018", "extra", limit=limit)
    records = [r for r in records if r.crystal.num_atoms <= max_atoms]
    arrays = from_crystals([r.crystal for r in records], [r.material_id for r in records], workers)
    if limit is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays.save(path)
    return arrays


# --- lattice state ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LatticeNorm:
    """State: ``(log L - log(N)/3 - mu) / sigma`` per length (one mu, sigma for all three, so
    tied lengths stay tied) and ``(angle - 90) / ANGLE_SCALE``."""

    mu: float = 0.0
    sigma: float = 1.0

    @classmethod
    def fit(cls, lattice: np.ndarray, atoms: np.ndarray) -> LatticeNorm:
        x = np.log(lattice[:, :3]) - np.log(atoms)[:, None] / 3.0
        return cls(float(x.mean()), float(max(x.std(), 1e-3)))

    def encode(self, lattice: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
        logs = torch.log(lattice[:, :3]) - torch.log(atoms.float())[:, None] / 3.0 - self.mu
        return torch.cat([logs / self.sigma, (lattice[:, 3:] - 90.0) / ANGLE_SCALE], dim=1)

    def decode(self, state: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
        """(B, 6) lengths (Å) and angles (deg); angles clamped to a sane range."""
        logs = state[:, :3] * self.sigma + self.mu + torch.log(atoms.float())[:, None] / 3.0
        angles = (state[:, 3:] * ANGLE_SCALE + 90.0).clamp(30.0, 150.0)
        return torch.cat([torch.exp(logs.clamp(max=6.0)), angles], dim=1)


def lattice_ties(space_groups: Sequence[int]) -> dict[str, np.ndarray]:
    """Per crystal: ``lat_free`` (n, 6) free state dims; ``tie_b``/``tie_c`` (n,) lengths tied
    to a; ``lat_fixed`` (n, 3) state values of the angles where they are not free."""
    sg = np.asarray(space_groups, dtype=np.int64)
    free = np.stack([lattice_free_mask(int(g)) for g in sg]) if len(sg) else np.zeros((0, 6), bool)
    fixed = np.zeros((len(sg), 3), dtype=np.float32)
    fixed[(sg >= 143) & (sg <= 194), 2] = 30.0 / ANGLE_SCALE  # gamma = 120
    return {"lat_free": free, "tie_b": sg >= 75, "tie_c": sg >= 195, "lat_fixed": fixed}


def apply_ties(state: torch.Tensor, batch: OrbitBatch) -> torch.Tensor:
    """Impose the crystal system on a lattice state: tied lengths copy a, fixed angles."""
    a = state[:, 0]
    b = torch.where(batch.tie_b, a, state[:, 1])
    c = torch.where(batch.tie_c, a, state[:, 2])
    angles = torch.where(batch.lat_free[:, 3:], state[:, 3:], batch.lat_fixed)
    return torch.cat([a[:, None], b[:, None], c[:, None], angles], dim=1)


# --- padded batches --------------------------------------------------------------------------
@dataclass
class OrbitBatch:
    """Padded tensors of B crystals, O orbits and N conventional atoms each.

    Orbits: ``wid``, ``number`` (B, O), ``xyz`` (B, O, 3), ``free`` (B, O, 3), ``omask``.
    Atoms: ``orbit`` (B, N) index of its orbit, ``amask``, ``rot`` (B, N, 3, 3) and ``trans``
    (B, N, 3): position = rot @ xyz + trans; ``back`` (B, N, 3, 3) pseudo-inverse of ``rot``.
    Crystal: ``space_group``, ``atoms`` (B,) conventional atom count, ``lattice`` (B, 6) state,
    ``props`` / ``props_given`` (B, P), crystal-system ties (:func:`lattice_ties`)."""

    wid: torch.Tensor
    number: torch.Tensor
    xyz: torch.Tensor
    free: torch.Tensor
    omask: torch.Tensor
    orbit: torch.Tensor
    amask: torch.Tensor
    rot: torch.Tensor
    trans: torch.Tensor
    back: torch.Tensor
    space_group: torch.Tensor
    atoms: torch.Tensor
    lattice: torch.Tensor
    props: torch.Tensor
    props_given: torch.Tensor
    lat_free: torch.Tensor
    tie_b: torch.Tensor
    tie_c: torch.Tensor
    lat_fixed: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.wid.shape[0])

    def index(self, idx: torch.Tensor) -> OrbitBatch:
        return OrbitBatch(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))

    def to(self, device: str | torch.device) -> OrbitBatch:
        return OrbitBatch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))

    def trim(self) -> OrbitBatch:
        """Cut padding to the largest crystal of the batch."""
        o = max(int(self.omask.sum(1).max()), 1)
        n = max(int(self.amask.sum(1).max()), 1)
        out = {}
        for f in self.__dataclass_fields__:
            v = getattr(self, f)
            if f in ("wid", "number", "xyz", "free", "omask"):
                v = v[:, :o]
            elif f in ("orbit", "amask", "rot", "trans", "back"):
                v = v[:, :n]
            out[f] = v
        return OrbitBatch(**out)


def pad_templates(
    space_groups: Sequence[int],
    templates: Sequence[Sequence[tuple[str, int]]],
    xyz: Sequence[np.ndarray] | None = None,
    lattice: np.ndarray | None = None,
    props: np.ndarray | None = None,
    norm: LatticeNorm = LatticeNorm(),
) -> OrbitBatch:
    """An :class:`OrbitBatch` (CPU) for crystals given as (space group, [(letter, element)]).
    ``xyz`` (per crystal (O, 3)) and ``lattice`` (n, 6 physical) are data values, zeros when
    generating; ``props`` (n, P) with NaN = not given."""
    n = len(templates)
    omax = max(max((len(t) for t in templates), default=1), 1)
    mults = [
        [multiplicity(g, letter) for letter, _ in t]
        for g, t in zip(space_groups, templates, strict=True)
    ]
    nmax = max(max((sum(m) for m in mults), default=1), 1)
    wid = np.zeros((n, omax), np.int64)
    number = np.zeros((n, omax), np.int64)
    pxyz = np.zeros((n, omax, 3), np.float32)
    free = np.zeros((n, omax, 3), bool)
    orbit = np.zeros((n, nmax), np.int64)
    amask = np.zeros((n, nmax), bool)
    rot = np.zeros((n, nmax, 3, 3), np.float32)
    trans = np.zeros((n, nmax, 3), np.float32)
    back = np.zeros((n, nmax, 3, 3), np.float32)
    for i, (g, t) in enumerate(zip(space_groups, templates, strict=True)):
        k = 0
        for j, (letter, z) in enumerate(t):
            r, b, f = orbit_ops(g, letter)
            pinv = _pinv(g, letter)
            m = len(r)
            wid[i, j] = wyckoff_index(g, letter)
            number[i, j] = z
            free[i, j] = f
            if xyz is not None:
                pxyz[i, j] = xyz[i][j]
            orbit[i, k : k + m] = j
            amask[i, k : k + m] = True
            rot[i, k : k + m] = r
            trans[i, k : k + m] = b
            back[i, k : k + m] = pinv
            k += m
    atoms = torch.tensor([max(sum(m), 1) for m in mults])
    lat = np.full((n, 6), 1.0) if lattice is None else np.asarray(lattice, dtype=np.float64)
    if lattice is None:
        lat[:, 3:] = 90.0
    state = norm.encode(torch.tensor(lat, dtype=torch.float32), atoms)
    p = np.full((n, 2), np.nan) if props is None else np.asarray(props, dtype=np.float64)
    pt = torch.tensor(p, dtype=torch.float32)
    return OrbitBatch(
        wid=torch.tensor(wid),
        number=torch.tensor(number),
        xyz=torch.tensor(pxyz),
        free=torch.tensor(free),
        omask=torch.tensor(number > 0),
        orbit=torch.tensor(orbit),
        amask=torch.tensor(amask),
        rot=torch.tensor(rot),
        trans=torch.tensor(trans),
        back=torch.tensor(back),
        space_group=torch.tensor(np.asarray(space_groups, dtype=np.int64)),
        atoms=atoms,
        lattice=state,
        props=torch.nan_to_num(pt),
        props_given=~torch.isnan(pt),
        **{k: torch.tensor(v) for k, v in lattice_ties(space_groups).items()},
    )


_PINV: dict[tuple[int, str], np.ndarray] = {}


def _pinv(g: int, letter: str) -> np.ndarray:
    if (g, letter) not in _PINV:
        r, _, _ = orbit_ops(g, letter)
        _PINV[(g, letter)] = np.linalg.pinv(r)
    return _PINV[(g, letter)]


def arrays_to_batch(
    arrays: WyckoffArrays, properties: Sequence[str], norm: LatticeNorm
) -> OrbitBatch:
    o = arrays.offsets
    templates, xyz = [], []
    for i in range(len(arrays)):
        rows = range(o[i], o[i + 1])
        templates.append(
            [(wyckoff_letter(int(arrays.wid[k]))[1], int(arrays.number[k])) for k in rows]
        )
        xyz.append(arrays.xyz[o[i] : o[i + 1]])
    cols = {"formation_energy": arrays.formation_energy, "band_gap": arrays.band_gap}
    props = np.stack([cols[p] for p in properties], axis=1)
    return pad_templates(
        [int(g) for g in arrays.space_group], templates, xyz, arrays.lattice, props, norm
    )


def fit_normalisation(
    arrays: WyckoffArrays, properties: Sequence[str]
) -> tuple[LatticeNorm, tuple[float, ...], tuple[float, ...]]:
    norm = LatticeNorm.fit(arrays.lattice, arrays.conventional_atoms())
    cols = {"formation_energy": arrays.formation_energy, "band_gap": arrays.band_gap}
    props = np.stack([cols[p] for p in properties], axis=1)
    mean = tuple(float(v) for v in np.nanmean(props, axis=0))
    std = tuple(float(max(v, 1e-3)) for v in np.nanstd(props, axis=0))
    return norm, mean, std


def epoch_batches(
    n: int, batch_size: int, generator: torch.Generator, sizes: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """One epoch's batches of a random order. With ``sizes`` (atoms per crystal) the epoch is
    sorted by size before it is cut and the batches are then shuffled: a batch pads to its
    largest crystal and pair features cost N^2, so mixing 4-atom and 80-atom cells in every
    batch spent most of the step on padding."""
    perm = torch.randperm(n, generator=generator)
    count = max(1, math.floor(n / batch_size))
    if sizes is not None:
        perm = perm[torch.argsort(sizes[perm], stable=True)]
        order = torch.randperm(count, generator=generator)
        return [perm[i * batch_size : (i + 1) * batch_size] for i in order.tolist()]
    return [perm[i * batch_size : (i + 1) * batch_size] for i in range(count)]
