"""Elemental reference energies: the zero of every formation energy and hull, per energy model.

For each element: the lowest energy per atom, by that model, among the RELAXED single-element
structures of every data set under MATDESIGN_DATA_DIR (bcc Eu and fcc Th, which have none
there, are built and relaxed). Made by ``ml/tools/build_hull_tables.py`` (CHGNet's first by
``ml/tools/build_reference_tables.py``); one JSON file per model in ``data/``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from pymatgen.core import Composition, Structure

__all__ = [
    "ELEMENTAL_REFS_PATH",
    "elemental_refs_path",
    "formation_energies",
    "formation_energy",
    "load_elemental_refs",
]

_DATA = Path(__file__).resolve().parent / "data"
ELEMENTAL_REFS_PATH = _DATA / "elemental_refs.json"  # CHGNet 0.3.0's


def elemental_refs_path(model: str = "chgnet") -> Path:
    return ELEMENTAL_REFS_PATH if model == "chgnet" else _DATA / f"elemental_refs_{model}.json"


@lru_cache(maxsize=8)
def load_elemental_refs(model: str = "chgnet") -> dict[str, float]:
    """{element symbol: energy per atom (eV/atom)} of ``model`` (chgnet, sevennet-l3i5, ...)."""
    path = elemental_refs_path(model)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; build it with ml/tools/build_hull_tables.py")
    with path.open() as fh:
        data = json.load(fh)
    return {str(k): float(v) for k, v in data.items()}


def formation_energy(
    composition: Composition | str, energy_per_atom: float, refs: dict[str, float] | None = None
) -> float:
    """Energy per atom minus the composition-weighted elemental references (NaN if one lacks)."""
    refs = load_elemental_refs() if refs is None else refs
    comp = Composition(composition)
    if not math.isfinite(energy_per_atom) or comp.num_atoms == 0:
        return math.nan
    total = 0.0
    for el, amount in comp.get_el_amt_dict().items():
        if el not in refs:
            return math.nan
        total += amount * refs[el]
    return float(energy_per_atom - total / comp.num_atoms)


def formation_energies(
    structures: Sequence[object], energies: np.ndarray, refs: dict[str, float]
) -> np.ndarray:
    """:func:`formation_energy` of each structure (a Crystal or pymatgen Structure)."""
    from ml.crystal import as_structure

    comps = [
        s.composition if isinstance(s, Structure) else as_structure(s).composition  # type: ignore[arg-type]
        for s in structures
    ]
    return np.array(
        [formation_energy(c, float(e), refs) for c, e in zip(comps, energies, strict=True)],
        dtype=np.float64,
    )
