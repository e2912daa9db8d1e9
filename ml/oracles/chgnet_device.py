"""CHGNet energies and ``gap-chgnet-ft`` gaps with the graphs built on the device (issue 20).

chgnet builds each crystal's graph on the CPU, one Python call per structure; on a GPU that is
the bottleneck (H200: 150 structures/s batched with 12 graph processes, against ~600/s for the
forward pass alone). SMOACS already builds CHGNet's graph for a whole population in torch
(:mod:`ml.methods.smoacs.neighbors`, :mod:`ml.methods.smoacs.chgnet_graph`) and runs CHGNet
0.3.0 and the trained gap heads in one pass (:class:`ml.methods.smoacs.soft_chgnet.SoftChgnet`,
equal to the stock models on one-hot species). Scored here on one-hot species, so one pass
gives both oracles' values for a whole chunk of crystals.

Crystals with an element outside that vocabulary (Po-Ra, Z > 94) are left to the stock path
(``supported`` is False for them); an atom with no neighbour within 6 Å gives NaN, as the stock
oracles do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ml.crystal import Crystal
from ml.oracles.base import bounded_chunks

__all__ = [
    "DeviceChgnetScores",
    "chgnet_energies",
    "device_graphs_enabled",
    "score_on_device",
    "with_stock_fallback",
]

# Sites per forward pass: bounds the line graph's memory (about 10^3 angles per site at 3 Å).
_MAX_SITES = 8192
# Neighbour list reach beyond CHGNet's 6 Å (the graph itself is cut at 6 Å inside the model).
_SKIN = 0.5


@dataclass(frozen=True)
class DeviceChgnetScores:
    energy: np.ndarray  # (N,) CHGNet 0.3.0 energy per atom, eV/atom (NaN: unscored)
    band_gap: np.ndarray  # (N,) gap-chgnet-ft, eV (NaN: unscored)
    supported: np.ndarray  # (N,) bool: scored here (False: use the stock path)


def device_graphs_enabled(device: str) -> bool:
    """Whether oracles on ``device`` build CHGNet graphs in torch (``MATDESIGN_CHGNET_DEVICE_
    GRAPHS``: auto = on CUDA only; on a CPU chgnet's compiled builder is as fast)."""
    from ml.settings import get_ml_settings

    mode = get_ml_settings().chgnet_device_graphs
    return mode == "on" or (mode == "auto" and str(device).startswith("cuda"))


def score_on_device(crystals: Sequence[Crystal], device: str) -> DeviceChgnetScores:
    """CHGNet energy per atom and the trained gap of every crystal, graphs built in torch."""
    from ml.methods.smoacs.elements import ELEMENTS, NUM_ELEMENTS, element_index
    from ml.methods.smoacs.neighbors import build_neighbor_list
    from ml.methods.smoacs.soft_chgnet import CHGNET_CUTOFF, load_soft_chgnet

    vocabulary = frozenset(ELEMENTS)
    n = len(crystals)
    energy = np.full(n, np.nan)
    gap = np.full(n, np.nan)
    supported = np.array(
        [c.num_atoms > 0 and vocabulary.issuperset(c.species) for c in crystals], dtype=bool
    )
    model = load_soft_chgnet(device)
    todo = [i for i in range(n) if supported[i]]
    for chunk in _chunks(todo, [crystals[i].num_atoms for i in todo]):
        cs = [crystals[i] for i in chunk]
        counts = torch.tensor([c.num_atoms for c in cs], device=device)
        batch = torch.repeat_interleave(torch.arange(len(cs), device=device), counts)
        frac = torch.tensor(
            np.concatenate([c.frac_coords for c in cs]), dtype=torch.float32, device=device
        )
        lattice = torch.tensor(
            np.stack([c.lattice for c in cs]), dtype=torch.float32, device=device
        )
        species = torch.tensor([element_index(s) for c in cs for s in c.species], device=device)
        types = torch.nn.functional.one_hot(species, NUM_ELEMENTS).float()
        nl = build_neighbor_list(lattice, frac, batch, counts, CHGNET_CUTOFF + _SKIN)
        with torch.no_grad():
            out = model(frac, lattice, nl, types, batch, len(cs), hard=True)
        e = out.energy.double().cpu().numpy()
        g = out.band_gap.double().cpu().numpy()
        lonely = out.lonely.cpu().numpy()
        e[lonely] = np.nan
        g[lonely] = np.nan
        energy[chunk] = e
        gap[chunk] = g
    return DeviceChgnetScores(energy, gap, supported)


def _chunks(indices: list[int], sizes: list[int]) -> list[list[int]]:
    """Consecutive groups of crystals with at most ``_MAX_SITES`` sites each."""
    return bounded_chunks(indices, sizes, _MAX_SITES)


def with_stock_fallback(
    scores: DeviceChgnetScores,
    field: str,
    stock: Callable[[list[int]], np.ndarray],
) -> np.ndarray:
    """``scores``'s ``field`` ("energy" or "band_gap"), with the crystals it could not take
    scored by ``stock`` (called with their positions, once, only when there are any)."""
    values = np.array(getattr(scores, field), dtype=np.float64)
    rest = [int(i) for i in np.flatnonzero(~scores.supported)]
    if rest:
        values[rest] = stock(rest)
    return values


def chgnet_energies(crystals: Sequence[Crystal], device: str) -> np.ndarray:
    """CHGNet 0.3.0 energy per atom of each crystal (NaN: unscorable), on device-built graphs
    where :func:`device_graphs_enabled`, else with chgnet's own graphs."""
    from ml.oracles.gap import GAP_CHECKPOINT
    from ml.oracles.registry import get_oracle

    oracle = get_oracle("chgnet-energy", device)
    # The one-pass model also carries the trained gap head; energies alone must not need it.
    if not device_graphs_enabled(device) or not GAP_CHECKPOINT.is_file():
        return np.asarray(oracle.predict(list(crystals)), dtype=np.float64)
    return with_stock_fallback(
        score_on_device(crystals, device),
        "energy",
        lambda ks: oracle.predict([crystals[k] for k in ks]),
    )
