"""Issue 20: SevenNet relaxations with every FIRE step on the device (tensors, torch neighbour
lists) follow the CPU-graph path step for step, and fail the crystals SevenNet cannot score."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from ml.crystal import Crystal
from ml.data.records import load_records
from ml.oracles import relax as relax_module
from ml.oracles.batch_relax import fire_relax
from ml.oracles.device_relax import SevennetDevicePotential, fire_relax_on_device
from ml.oracles.sevennet import SevennetPotential
from ml.settings import get_ml_settings


@pytest.fixture(scope="module")
def perturbed() -> list[Crystal]:
    records = load_records("mp20", "test", limit=40)
    crystals = [r.crystal for r in records if r.crystal.num_atoms <= 8][:3]
    rng = np.random.default_rng(0)
    for c in crystals:  # off the minimum, so FIRE has steps to take
        c.frac_coords = c.frac_coords + rng.normal(0.0, 0.02, c.frac_coords.shape)
        c.lattice = c.lattice * 1.03
    return crystals


def test_device_forces_and_stress_equal_sevennets_own_graphs(perturbed: list[Crystal]) -> None:
    stock = SevennetPotential("sevennet-l3i5", "cpu").efs(perturbed)
    device = SevennetDevicePotential("sevennet-l3i5", "cpu")
    with torch.enable_grad():
        out = device(
            torch.tensor(np.stack([c.lattice for c in perturbed])),
            torch.tensor(np.concatenate([c.cart_coords for c in perturbed])),
            torch.tensor(np.concatenate([c.numbers for c in perturbed])),
            torch.tensor([c.num_atoms for c in perturbed]),
        )
    assert out.ok.all()
    np.testing.assert_allclose(out.energy.numpy(), [e for e, _, _ in stock], rtol=1e-6)
    forces = np.concatenate([f for _, f, _ in stock])
    assert np.abs(out.forces.numpy() - forces).max() < 1e-4
    assert np.abs(out.stress.numpy() - np.stack([s for _, _, s in stock])).max() < 1e-5
    assert np.abs(forces).max() > 0.1  # the comparison is not of zeros


def test_device_relaxation_follows_the_cpu_graph_path(perturbed: list[Crystal]) -> None:
    cpu = fire_relax(perturbed, SevennetPotential("sevennet-l3i5", "cpu").efs, steps=60)
    dev = fire_relax_on_device(perturbed, SevennetDevicePotential("sevennet-l3i5", "cpu"), steps=60)
    for a, b in zip(cpu, dev, strict=True):
        assert a.converged and b.converged and a.steps == b.steps > 3
        assert b.energy_per_atom == pytest.approx(a.energy_per_atom, abs=1e-4)
        np.testing.assert_allclose(b.crystal.lattice, a.crystal.lattice, atol=1e-4)
        np.testing.assert_allclose(b.crystal.cart_coords, a.crystal.cart_coords, atol=1e-4)


def test_unscorable_crystals_fail_alone(perturbed: list[Crystal]) -> None:
    lonely = Crystal.from_structure(Structure(Lattice.cubic(12.0), ["Na"], [[0, 0, 0]]))
    unknown = Crystal.from_structure(Structure(Lattice.cubic(3.3), ["Og"], [[0, 0, 0]]))
    crystals = [lonely, perturbed[0], unknown]
    out = fire_relax_on_device(crystals, SevennetDevicePotential("sevennet-l3i5", "cpu"), steps=5)
    assert math.isnan(out[0].energy_per_atom) and math.isnan(out[2].energy_per_atom)
    np.testing.assert_array_equal(out[0].crystal.lattice, lonely.lattice)
    assert math.isfinite(out[1].energy_per_atom) and out[1].steps == 5


def test_relax_crystals_takes_the_device_path_when_enabled(
    perturbed: list[Crystal], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = relax_module.fire_relax

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(relax_module, "fire_relax", counting)
    monkeypatch.setattr(get_ml_settings(), "device_relax", "on")
    on = relax_module.relax_crystals(perturbed[:1], steps=3, device="cpu", model="sevennet-l3i5")
    assert not calls and on[0].steps == 3
    monkeypatch.setattr(get_ml_settings(), "device_relax", "off")
    off = relax_module.relax_crystals(perturbed[:1], steps=3, device="cpu", model="sevennet-l3i5")
    assert calls and off[0].energy_per_atom == pytest.approx(on[0].energy_per_atom, abs=1e-5)
