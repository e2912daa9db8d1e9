"""Batched FIRE under failures: a crystal the potential cannot take, or a batch too large for
the GPU's memory, fails only what causes it (fake potentials; the real ones are compared with
ASE in test_oracles_v2.py and test_device_relax.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ml.crystal import Crystal
from ml.oracles.batch_relax import fire_relax


class OutOfMemoryError(RuntimeError):
    """Named as torch's, which the relaxation recognises by name."""


def _cell(z: int, a: float = 3.0) -> Crystal:
    return Crystal(np.eye(3) * a, np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]]), np.array([z, z]))


class FakePotential:
    """A harmonic pull of the cell edge towards 3.2 A; raises for element 99 anywhere in the
    call, and as out of memory for calls of more than ``fits`` crystals."""

    def __init__(self, fits: int) -> None:
        self.fits = fits
        self.sizes: list[int] = []

    def __call__(self, crystals: Sequence[Crystal]) -> list:
        self.sizes.append(len(crystals))
        if len(crystals) > self.fits:
            raise OutOfMemoryError("CUDA out of memory")
        if any(99 in c.numbers for c in crystals):
            raise ValueError("unknown element")
        out = []
        for c in crystals:
            a = float(np.cbrt(c.volume))
            stress = np.eye(3) * (a - 3.2) * 0.5  # positive: the cell wants to shrink
            out.append((float((a - 3.2) ** 2), np.zeros((len(c.numbers), 3)), stress))
        return out


def test_a_batch_too_large_for_memory_is_split_and_every_crystal_still_relaxes() -> None:
    crystals = [_cell(14, 3.0 + 0.02 * i) for i in range(8)]
    alone = [fire_relax([c], FakePotential(fits=8), fmax=0.01, steps=200)[0] for c in crystals]
    potential = FakePotential(fits=3)
    results = fire_relax(crystals, potential, fmax=0.01, steps=200)
    for res, ref in zip(results, alone, strict=True):
        assert res.converged and math.isfinite(res.energy_per_atom)
        assert res.steps == ref.steps
        np.testing.assert_allclose(res.crystal.lattice, ref.crystal.lattice, atol=1e-9)
    # Two calls ran out of memory (8, then a half of 4); every later call fits.
    assert potential.sizes[:2] == [8, 4] and max(potential.sizes[2:]) <= 3


def test_one_crystal_the_potential_cannot_take_fails_alone() -> None:
    crystals = [_cell(14), _cell(99), _cell(14, 3.1), _cell(6, 3.3)]
    results = fire_relax(crystals, FakePotential(fits=64), fmax=0.01, steps=200)
    assert math.isnan(results[1].energy_per_atom) and not results[1].converged
    for i in (0, 2, 3):
        assert results[i].converged and math.isfinite(results[i].energy_per_atom)
        assert abs(np.cbrt(results[i].crystal.volume) - 3.2) < 0.05
