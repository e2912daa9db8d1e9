"""Elemental reference energies for CHGNet-Eform (``data/elemental_refs.json``).

For each element: the lowest CHGNet 0.3.0 energy per atom among the relaxed single-element
structures of every data set under MATDESIGN_DATA_DIR (bcc Eu and fcc Th, which have none
there, are built and relaxed). Made by ``ml/tools/build_reference_tables.py``.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

from pymatgen.core import Composition

__all__ = ["ELEMENTAL_REFS_PATH", "formation_energy", "load_elemental_refs"]

ELEMENTAL_REFS_PATH = Path(__file__).resolve().parent / "data" / "elemental_refs.json"


@lru_cache(maxsize=1)
def load_elemental_refs() -> dict[str, float]:
    """{element symbol: CHGNet energy per atom (eV/atom)}."""
    if not ELEMENTAL_REFS_PATH.is_file():
        raise FileNotFoundError(
            f"{ELEMENTAL_REFS_PATH} is missing; build it with ml/tools/build_reference_tables.py"
        )
    with ELEMENTAL_REFS_PATH.open() as fh:
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
