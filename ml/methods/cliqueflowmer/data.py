"""Training data: MP-20 canonical cells (cached) and the oracle labels of each checkpoint.

Labels (``docs/methods.md`` section 1): formation energy per atom by CHGNet-Eform; band gap as
the paper's formation-energy-regularised objective y = gap + 20 * max(0, Eform + 0.2) with the
MEGNet (PBE) gap and CHGNet-Eform. Both come from the reference table of oracle values on the
data sets (``ml/evaluation/data/reference_energies.csv.gz``); ``source="dft"`` uses the data
sets' DFT columns instead (development before that table existed, and comparison).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ml.methods.cliqueflowmer.geometry import PackedMaterials
from ml.settings import get_ml_settings

LabelSource = Literal["oracle", "dft"]

# Checkpoint properties (request property name -> label column recipe).
PROPERTIES = ("formation_energy", "band_gap")
REG_LAMBDA, REG_TAU = 20.0, -0.2
REFERENCE_TABLE = (
    Path(__file__).resolve().parents[2] / "evaluation" / "data" / "reference_energies.csv.gz"
)
CACHE_VERSION = 1


def _cache_file(split: str) -> Path:
    return get_ml_settings().cache_dir / "cliqueflowmer" / f"mp20-{split}-v{CACHE_VERSION}.npz"


def _source_digest(split: str) -> str:
    path = get_ml_settings().data_dir / "mp20" / f"{split}.csv.gz"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def load_split(split: str, limit: int | None = None) -> PackedMaterials:
    """Canonical cells of an MP-20 split (cached on disk after the first full load)."""
    cache = _cache_file(split)
    digest = _source_digest(split)
    if limit is None and cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            ok = "digest" in z.files and str(z["digest"]) == digest
        if ok:
            return PackedMaterials.load(str(cache))
    from ml.data import load_records

    records = load_records("mp20", split, limit=limit)
    packed = PackedMaterials.from_crystals(
        [r.crystal for r in records], [r.material_id for r in records]
    )
    if limit is None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez_compressed(
            tmp,
            digest=np.array(digest),
            **{f: getattr(packed, f) for f in ("lengths", "angles", "frac", "numbers")},
            num_atoms=packed.num_atoms,
            ids=packed.ids,
        )
        tmp.replace(cache)
    return packed


def regularised_gap(gap: np.ndarray, eform: np.ndarray) -> np.ndarray:
    return gap + REG_LAMBDA * np.maximum(0.0, eform - REG_TAU)


def label_table(source: LabelSource, splits: tuple[str, ...]) -> pd.DataFrame:
    """material_id -> eform, gap for MP-20 ``splits`` from oracles or DFT."""
    if source == "oracle":
        if not REFERENCE_TABLE.is_file():
            raise FileNotFoundError(
                f"{REFERENCE_TABLE} is missing: oracle labels need the reference table "
                "(or train with --labels dft)"
            )
        ref = pd.read_csv(REFERENCE_TABLE)
        ref = ref[(ref["dataset"] == "mp20") & ref["split"].isin(splits)]
        return pd.DataFrame(
            {
                "material_id": ref["material_id"].astype(str),
                "eform": ref["chgnet_eform"].astype(float),
                "gap": ref["megnet_gap_pbe"].astype(float),
            }
        )
    from ml.data import load_table

    frames = []
    for split in splits:
        t = load_table("mp20", split)
        frames.append(
            pd.DataFrame(
                {
                    "material_id": t["material_id"].astype(str),
                    "eform": t["formation_energy_per_atom"].astype(float),
                    "gap": t["band_gap"].astype(float),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def labels_for(
    packed: PackedMaterials, prop: str, source: LabelSource, splits: tuple[str, ...]
) -> np.ndarray:
    """Label of each packed material (NaN where the table has none)."""
    if prop not in PROPERTIES:
        raise ValueError(f"no CliqueFlowmer checkpoint property {prop!r}; known: {PROPERTIES}")
    table = label_table(source, splits).drop_duplicates("material_id").set_index("material_id")
    table = table.reindex(packed.ids.astype(str))
    eform = table["eform"].to_numpy(dtype=float)
    if prop == "formation_energy":
        return eform
    return regularised_gap(table["gap"].to_numpy(dtype=float), eform)
