"""SMOACS's CHGNet predictors equal the stock models on one-hot species (real weights)."""

from __future__ import annotations

import numpy as np
import torch
from pymatgen.core import Lattice, Structure

from ml.crystal import Crystal
from ml.methods.smoacs.elements import NUM_ELEMENTS, element_index
from ml.methods.smoacs.neighbors import build_neighbor_list
from ml.methods.smoacs.soft_chgnet import CHGNET_CUTOFF, load_soft_chgnet
from ml.oracles.chgnet import load_chgnet
from ml.oracles.registry import get_oracle
from tests.structures import rutile_tio2


def _crystals() -> list[Crystal]:
    tio2 = rutile_tio2()  # its oxygens sit off equilibrium: non-zero forces and stress
    tio2.translate_sites([2], [0.03, -0.02, 0.01])
    nacl = Structure(Lattice.cubic(5.64), ["Na"] * 4 + ["Cl"] * 4, [
        [0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0],
        [0.5, 0.5, 0.5], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5],
    ])  # fmt: skip
    oxide = Structure(
        Lattice.from_parameters(3.1, 3.1, 5.0, 90, 90, 120),
        ["Zn", "Zn", "O", "O"],
        [[1 / 3, 2 / 3, 0.0], [2 / 3, 1 / 3, 0.5], [1 / 3, 2 / 3, 0.38], [2 / 3, 1 / 3, 0.88]],
    )
    perov = Structure(
        Lattice.cubic(3.9), ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )  # fmt: skip
    return [Crystal.from_structure(s) for s in (tio2, nacl, oxide, perov)]


def _soft_inputs(crystals: list[Crystal]) -> tuple:
    counts = torch.tensor([c.num_atoms for c in crystals])
    batch = torch.repeat_interleave(torch.arange(len(crystals)), counts)
    frac = torch.tensor(np.concatenate([c.frac_coords for c in crystals]), dtype=torch.float32)
    lattice = torch.tensor(np.stack([c.lattice for c in crystals]), dtype=torch.float32)
    idx = [element_index(s) for c in crystals for s in c.species]
    types = torch.nn.functional.one_hot(torch.tensor(idx), NUM_ELEMENTS).float()
    nl = build_neighbor_list(lattice, frac, batch, counts, CHGNET_CUTOFF + 0.5)
    return frac, lattice, nl, types, batch


def test_one_hot_predictions_equal_the_stock_models() -> None:
    crystals = _crystals()
    model = load_soft_chgnet("cpu")
    frac, lattice, nl, types, batch = _soft_inputs(crystals)
    out = model(frac, lattice, nl, types, batch, len(crystals), forces=True, hard=True)
    energy = get_oracle("chgnet-energy", "cpu").predict(crystals)
    eform = get_oracle("chgnet-eform", "cpu").predict(crystals)
    gap = get_oracle("gap-chgnet-ft", "cpu").predict(crystals)
    np.testing.assert_allclose(out.energy.detach().numpy(), energy, atol=2e-4)
    np.testing.assert_allclose(out.formation_energy.detach().numpy(), eform, atol=2e-4)
    np.testing.assert_allclose(out.band_gap.detach().numpy(), gap, atol=2e-3)
    assert (gap > 0.5).sum() >= 2  # the comparison covers real non-metal gaps
    # Forces and stress against chgnet's own predict_structure.
    stock = load_chgnet("cpu")
    for k, c in enumerate(crystals):
        pred = stock.predict_structure(c.to_structure(), task="efs")
        rms = np.sqrt((pred["f"] ** 2).sum(-1).mean())
        assert abs(float(out.force[k]) - rms) < 2e-3 * max(1.0, rms)
        frob = np.sqrt((pred["s"] ** 2).sum())
        assert abs(float(out.stress[k]) - frob) < 2e-2 * max(1.0, frob)
    assert float(out.force[0]) > 0.1  # the perturbed cell is off equilibrium


def test_soft_predictions_are_differentiable_in_species_and_geometry() -> None:
    crystals = _crystals()[:2]
    model = load_soft_chgnet("cpu")
    frac, lattice, nl, types, batch = _soft_inputs(crystals)
    logits = (types * 3.0).requires_grad_(True)
    frac = frac.clone().requires_grad_(True)
    lattice = lattice.clone().requires_grad_(True)
    soft = torch.softmax(logits, -1)
    out = model(frac, lattice, nl, soft, batch, len(crystals), forces=True)
    loss = (out.formation_energy + out.band_gap + out.force + 0.01 * out.stress).sum()
    g_logits, g_frac, g_lat = torch.autograd.grad(loss, [logits, frac, lattice])
    for g in (g_logits, g_frac, g_lat):
        assert torch.isfinite(g).all() and g.abs().sum() > 0
