"""Exact (model-free) oracles from pymatgen: density, Goldschmidt tolerance factor, HHI."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from pymatgen.core import Composition, Species, Structure

from ml.crystal import Crystal, as_structure
from ml.oracles.base import Oracle, OracleInfo

__all__ = ["DensityOracle", "HHIOracle", "ToleranceFactorOracle", "tolerance_factor"]


class _ExactOracle(Oracle):
    def __init__(self, info: OracleInfo):
        self.info = info

    def value(self, structure: Structure) -> float:
        raise NotImplementedError

    def predict(
        self, structures: Sequence[Crystal | Structure], batch_size: int = 256
    ) -> np.ndarray:
        out = np.full(len(structures), np.nan, dtype=np.float64)
        for i, item in enumerate(structures):
            try:
                out[i] = self.value(as_structure(item))
            except (ValueError, KeyError, ZeroDivisionError, TypeError):
                out[i] = math.nan  # unscorable input stays NaN, never an exception
        return out


class DensityOracle(_ExactOracle):
    """Mass density in g/cm^3."""

    def value(self, structure: Structure) -> float:
        return float(structure.density)


def ionic_radius(species: Species, coordination: str) -> float | None:
    """Shannon radius at a coordination (e.g. "VI"), else pymatgen's ionic radius.

    Shared with SMOACS's differentiable tolerance factor so both use the same radii.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(species.get_shannon_radius(coordination))
        except (KeyError, ValueError, TypeError):
            pass
        radius = species.ionic_radius
    return None if radius is None else float(radius)


def tolerance_factor(composition: Composition | str) -> float:
    """Goldschmidt t = (r_A + r_X) / (sqrt(2) (r_B + r_X)) for an ABX3-like composition.

    Radii: Shannon radii of the oxidation states pymatgen guesses (A twelve-fold, B and X
    six-fold; pymatgen's ionic radius when that coordination is not tabulated). The larger
    cation is A. NaN when the composition is not A1 B1 X3 (up to a multiple) or no guess gives
    radii for all three ions.
    """
    comp = Composition(composition).reduced_composition
    amounts = comp.get_el_amt_dict()
    if len(amounts) != 3 or sorted(amounts.values()) != [1.0, 1.0, 3.0]:
        return math.nan
    anion = next(el for el, amt in amounts.items() if amt == 3.0)
    cations = [el for el, amt in amounts.items() if amt == 1.0]
    for guess in comp.oxi_state_guesses():
        if guess[anion] >= 0 or any(guess[c] <= 0 for c in cations):
            continue
        ions = {el: Species(el, guess[el]) for el in amounts}
        sizes = {c: ions[c].ionic_radius for c in cations}
        if any(v is None for v in sizes.values()):
            continue
        a_el, b_el = sorted(cations, key=lambda c: float(sizes[c]), reverse=True)
        r_a, r_b, r_x = (
            ionic_radius(ions[a_el], "XII"),
            ionic_radius(ions[b_el], "VI"),
            ionic_radius(ions[anion], "VI"),
        )
        if r_a is None or r_b is None or r_x is None:
            continue
        return (r_a + r_x) / (math.sqrt(2.0) * (r_b + r_x))
    return math.nan


class ToleranceFactorOracle(_ExactOracle):
    """Perovskite Goldschmidt tolerance factor of the composition (NaN if not ABX3-like)."""

    def value(self, structure: Structure) -> float:
        return tolerance_factor(structure.composition)


@lru_cache(maxsize=1)
def _hhi_model():  # -> pymatgen HHIModel, read once
    from pymatgen.analysis.hhi import HHIModel

    return HHIModel()


class HHIOracle(_ExactOracle):
    """Production Herfindahl-Hirschman index of the composition (pymatgen's HHI data)."""

    def value(self, structure: Structure) -> float:
        hhi = _hhi_model().get_hhi_production(structure.composition)
        return math.nan if hhi is None else float(hhi)
