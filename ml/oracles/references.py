"""Elemental reference energies: the zero of every formation energy and hull, per energy model.

For each element: the lowest energy per atom, by that model, among the RELAXED single-element
structures of every data set under MATDESIGN_DATA_DIR (bcc Eu and fcc Th, which have none
there, are built and relaxed). Made by ``ml/tools/build_hull_tables.py`` (CHGNet's first by
``ml/tools/build_reference_tables.py``); one JSON file per model in ``data/``.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Composition, Structure

__all__ = [
    "ELEMENTAL_REFS_PATH",
    "MP2020_MODELS",
    "elemental_refs_path",
    "energy_correction",
    "formation_energies",
    "formation_energy",
    "load_elemental_refs",
    "mp2020_correction",
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
    structures: Sequence[object],
    energies: np.ndarray,
    refs: dict[str, float],
    model: str = "chgnet",
) -> np.ndarray:
    """:func:`formation_energy` of each structure (a Crystal or pymatgen Structure), with the
    model's energy correction (:func:`energy_correction`) added to each energy."""
    from ml.crystal import as_structure

    comps = [
        s.composition if isinstance(s, Structure) else as_structure(s).composition  # type: ignore[arg-type]
        for s in structures
    ]
    return np.array(
        [
            formation_energy(c, float(e) + energy_correction(model, c), refs)
            for c, e in zip(comps, energies, strict=True)
        ],
        dtype=np.float64,
    )


# Energy models trained on uncorrected MPtrj energies: MP2020 corrections make their energies
# comparable with Materials Project formation energies and hulls (MAE of SevenNet-l3i5 Eform on
# MP-20 test: 0.208 eV/atom without, 0.022 with).
MP2020_MODELS = frozenset({"sevennet-l3i5", "sevennet-0"})


def energy_correction(model: str, composition: Composition | str) -> float:
    """eV/atom to add to ``model``'s energy per atom of ``composition`` (0 for CHGNet)."""
    if model not in MP2020_MODELS:
        return 0.0
    comp = Composition(composition)
    return mp2020_correction(comp.reduced_formula) if comp.num_atoms else math.nan


# Hubbard U (eV) of the Materials Project's GGA+U calculations, used for oxides and fluorides
# of these metals (pymatgen's MPRelaxSet values); MP2020 corrects those energies.
_MP_U = {"Co": 3.32, "Cr": 3.7, "Fe": 5.3, "Mn": 3.9, "Mo": 4.38, "Ni": 6.2, "V": 3.25, "W": 6.2}


@lru_cache(maxsize=1)
def _mp2020_compatibility() -> Any:
    """pymatgen's MP2020 scheme, built once: it reads its YAML config when made (~25 ms, most of
    a correction's cost: 7 s of a 256-candidate GPU job's oracle phase)."""
    from pymatgen.entries.compatibility import MaterialsProject2020Compatibility

    return MaterialsProject2020Compatibility(check_potcar=False)


@lru_cache(maxsize=65536)
def mp2020_correction(formula: str) -> float:
    """MP2020 energy correction (eV/atom) of a composition, as the Materials Project applies it
    to a GGA(+U) calculation: anion corrections (oxide, fluoride, ...) and GGA+U corrections.

    Models trained on uncorrected MPtrj energies (SevenNet) need it to be compared with MP
    formation energies and hulls; CHGNet was trained on corrected energies and does not.
    Returns NaN where pymatgen's compatibility rejects the composition."""
    from pymatgen.entries.computed_entries import ComputedEntry

    comp = Composition(formula)
    symbols = {el.symbol for el in comp.elements}
    hubbards = {el: u for el, u in _MP_U.items() if el in symbols} if symbols & {"O", "F"} else {}
    entry = ComputedEntry(
        comp,
        0.0,
        parameters={"run_type": "GGA+U" if hubbards else "GGA", "hubbards": hubbards},
    )
    compat = _mp2020_compatibility()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no POTCAR spec" notices: POTCARs are not checked
        processed = compat.process_entry(entry, clean=True, inplace=False)
    if processed is None:
        return math.nan
    return float(processed.correction) / comp.num_atoms
