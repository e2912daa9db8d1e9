"""MP-20 crystals as the proxy sees them: space group, composition, conventional lattice.

Every structure is reduced to what Crystal-GFN samples: spglib's space group at symprec 0.1
(as the data sets' column), the standardised conventional lattice (a, b, c, alpha, beta,
gamma; the setting the Wyckoff generator uses) and the atoms per element of the primitive
cell (conventional counts over the centring). Parsing and symmetry take ~10 ms a crystal, so
splits are processed in a process pool once and cached as ``.npz`` under the cache directory.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from ml.crystal import lattice_params
from ml.settings import get_ml_settings
from ml.symmetry import centring

__all__ = ["MAX_ELEMENTS", "ProxyData", "featurize_cif", "load_split"]

MAX_ELEMENTS = 8  # padded elements per composition (MP-20 has at most 7)
SPLITS = ("train", "val", "test")


@dataclass
class ProxyData:
    ids: np.ndarray  # (n,)
    space_group: np.ndarray  # (n,)
    lattice: np.ndarray  # (n, 6) conventional a, b, c (Å), alpha, beta, gamma (deg)
    z: np.ndarray  # (n, MAX_ELEMENTS) atomic numbers, 0 = padding
    count: np.ndarray  # (n, MAX_ELEMENTS) atoms in the primitive cell
    formation_energy: np.ndarray  # (n,) eV/atom (DFT)
    band_gap: np.ndarray  # (n,) eV (DFT)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, idx: np.ndarray) -> ProxyData:
        return ProxyData(*(getattr(self, f.name)[idx] for f in fields(self)))

    @staticmethod
    def concat(parts: list[ProxyData]) -> ProxyData:
        return ProxyData(
            *(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(ProxyData))
        )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, **{f.name: getattr(self, f.name) for f in fields(self)})
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> ProxyData:
        with np.load(path, allow_pickle=False) as data:
            return cls(*(data[f.name] for f in fields(cls)))


def featurize_cif(cif: str) -> tuple[int, np.ndarray, dict[int, int]] | None:
    """(space group, conventional lattice (6,), primitive atoms per element) of one CIF;
    None when it cannot be parsed or spglib finds no symmetry."""
    import spglib

    from ml.data.cache import parse_cif

    crystal = parse_cif(cif)
    if crystal is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = spglib.get_symmetry_dataset(
            (crystal.lattice, crystal.frac_coords, crystal.numbers), symprec=0.1
        )
    if ds is None:
        return None
    sg = int(ds.number)
    conv = Counter(int(z) for z in ds.std_types)
    c = centring(sg)
    if any(n % c for n in conv.values()):
        return None
    lengths, angles = lattice_params(np.asarray(ds.std_lattice))
    return sg, np.concatenate([lengths, angles]), {z: n // c for z, n in conv.items()}


def _from_rows(rows: list, ids: list[str], eform: np.ndarray, gap: np.ndarray) -> ProxyData:
    keep = [i for i, r in enumerate(rows) if r is not None and len(r[2]) <= MAX_ELEMENTS]
    z = np.zeros((len(keep), MAX_ELEMENTS), np.int64)
    count = np.zeros((len(keep), MAX_ELEMENTS), np.int64)
    for k, i in enumerate(keep):
        for j, (el, n) in enumerate(sorted(rows[i][2].items())):
            z[k, j], count[k, j] = el, n
    return ProxyData(
        ids=np.array([ids[i] for i in keep], dtype="U"),
        space_group=np.array([rows[i][0] for i in keep], dtype=np.int64),
        lattice=np.array([rows[i][1] for i in keep], dtype=np.float64).reshape(-1, 6),
        z=z,
        count=count,
        formation_energy=eform[keep].astype(np.float64),
        band_gap=gap[keep].astype(np.float64),
    )


def cache_path(split: str) -> Path:
    return get_ml_settings().cache_dir / "crystal_gfn" / f"mp20_{split}.npz"


def load_split(split: str, workers: int = 1, limit: int | None = None) -> ProxyData:
    """One MP-20 split (rows with a structure), cached when read whole."""
    from ml.data import read_table

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; one of {SPLITS}")
    table = read_table("mp20", split)
    table = table[table["cif"].notna()]
    if limit is not None:
        table = table.iloc[:limit]
    path = cache_path(split)
    if limit is None and path.exists():
        data = ProxyData.load(path)
        if len(data) and len(data) >= math.floor(0.99 * len(table)):
            return data
    cifs = table["cif"].astype(str).tolist()
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            rows = list(pool.map(featurize_cif, cifs, chunksize=64))
    else:
        rows = [featurize_cif(c) for c in cifs]
    data = _from_rows(
        rows,
        table["material_id"].astype(str).tolist(),
        table["formation_energy_per_atom"].to_numpy(dtype=float),
        table["band_gap"].to_numpy(dtype=float),
    )
    if len(data) < len(cifs):
        print(f"crystal_gfn proxy data {split}: {len(cifs) - len(data)} of {len(cifs)} left out")
    if limit is None:
        data.save(path)
    return data
