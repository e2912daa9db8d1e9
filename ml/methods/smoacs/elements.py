"""Element vocabulary, oxidation states and per-element tables used by SMOACS.

The vocabulary is matgl's ``DEFAULT_ELEMENTS`` (89 elements, Z <= 94 without Po-Ra): the
order of the MEGNet element embedding, so a soft distribution over it multiplies the embedding
matrix directly.

Oxidation states ("ours", as in the SMOACS paper, Appendix B.4) are the intersection of
SMACT's default list, pymatgen's ICSD list and pymatgen's common list; we also intersect with
SMACT's ``oxidation_states_icsd24`` so every state used here is one the project's neutrality
check (:func:`ml.constraints.is_charge_neutral`) accepts. Noble gases, Tc, Pm, Os, Pt, Au and
the heavy actinides have no such state and so never occupy a masked site.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
from pymatgen.core import Element, Species

from ml.oracles.exact import ionic_radius
from ml.oxidation import confident_oxidation_states

__all__ = [
    "ELEMENTS",
    "NUM_ELEMENTS",
    "OX_MAX",
    "OX_MIN",
    "element_index",
    "ionic_radius_table",
    "masses",
    "ox_allowed_table",
    "oxidation_states",
]

_EXCLUDED = ("Po", "At", "Rn", "Fr", "Ra")
# Same construction as matgl.config.DEFAULT_ELEMENTS (asserted against the model on load).
ELEMENTS: tuple[str, ...] = tuple(
    el.symbol for el in Element if el.symbol not in _EXCLUDED and el.Z < 95
)
NUM_ELEMENTS = len(ELEMENTS)
_INDEX = {s: i for i, s in enumerate(ELEMENTS)}

# Oxidation numbers are stored as indices ox - OX_MIN into the tables below.
OX_MIN, OX_MAX = -4, 8


def element_index(symbol: str) -> int:
    """Position of an element in the vocabulary; ``KeyError`` outside it."""
    return _INDEX[symbol]


@cache
def oxidation_states(symbol: str) -> tuple[int, ...]:
    """Non-zero oxidation states SMOACS may assign to ``symbol`` (possibly empty): the
    confident ones within the tables' range."""
    return tuple(s for s in confident_oxidation_states(symbol) if OX_MIN <= s <= OX_MAX)


@cache
def _ox_allowed_np() -> np.ndarray:
    table = np.zeros((OX_MAX - OX_MIN + 1, NUM_ELEMENTS), dtype=bool)
    for k, sym in enumerate(ELEMENTS):
        for ox in oxidation_states(sym):
            table[ox - OX_MIN, k] = True
    return table


def ox_allowed_table(allowed: np.ndarray | None = None) -> np.ndarray:
    """(n_ox, K) bool: element k may take oxidation number ox (row ox - OX_MIN).

    ``allowed`` (K,) bool further restricts the elements (the request's element constraints).
    """
    table = _ox_allowed_np().copy()
    if allowed is not None:
        table &= allowed[None, :]
    return table


@cache
def _masses_np() -> np.ndarray:
    return np.array([float(Element(s).atomic_mass) for s in ELEMENTS])


def masses(device: str | torch.device = "cpu") -> torch.Tensor:
    """Atomic masses (u) in vocabulary order."""
    return torch.tensor(_masses_np(), dtype=torch.float32, device=device)


def _radius(symbol: str, ox: int, coordination: str) -> float | None:
    return ionic_radius(Species(symbol, ox), coordination)


@cache
def ionic_radius_table(coordination: str) -> np.ndarray:
    """(n_ox, K) radii in Å (NaN where unknown) of element k at oxidation number ox."""
    table = np.full((OX_MAX - OX_MIN + 1, NUM_ELEMENTS), np.nan)
    for k, sym in enumerate(ELEMENTS):
        for ox in oxidation_states(sym):
            r = _radius(sym, ox, coordination)
            if r is not None:
                table[ox - OX_MIN, k] = r
    return table
