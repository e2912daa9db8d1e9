"""CHGNet 0.3.0 relaxation (FIRE on positions and cell, FrechetCellFilter).

Same components as chgnet's ``StructOptimizer`` (CHGNetCalculator + ASE FIRE + cell filter),
driven here directly so that convergence and the step count are reported. A relaxation that
fails returns NaN energy and the input crystal; it never raises.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ml.crystal import Crystal

__all__ = ["RelaxResult", "relax_crystals"]


@dataclass
class RelaxResult:
    """Relaxed crystal, its CHGNet energy per atom (eV/atom), convergence and FIRE steps."""

    crystal: Crystal
    energy_per_atom: float
    converged: bool
    steps: int


def _calculator(device: str):  # -> CHGNetCalculator sharing the cached model
    from chgnet.model.dynamics import CHGNetCalculator

    from ml.oracles.chgnet import load_chgnet

    with contextlib.redirect_stdout(io.StringIO()):  # it prints the device on creation
        return CHGNetCalculator(
            model=load_chgnet(device), use_device=device, on_isolated_atoms="ignore"
        )


def _relax_one(crystal: Crystal, calc: object, fmax: float, steps: int) -> RelaxResult:
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    from ml.oracles.chgnet import ChgnetGraphBuilder

    # An isolated atom makes CHGNet's energy meaningless: report it as a failure.
    if crystal.num_atoms == 0 or ChgnetGraphBuilder()(crystal) is None:
        return RelaxResult(crystal.copy(), math.nan, False, 0)
    atoms = crystal.to_ase()
    atoms.calc = calc  # type: ignore[attr-defined]
    with contextlib.redirect_stdout(io.StringIO()):
        opt = FIRE(FrechetCellFilter(atoms), logfile=None)
        converged = bool(opt.run(fmax=fmax, steps=steps))
    energy = float(atoms.get_potential_energy()) / len(atoms)  # type: ignore[attr-defined]
    relaxed = Crystal.from_ase(atoms)
    relaxed.properties = dict(crystal.properties)
    if not math.isfinite(energy) or not np.all(np.isfinite(relaxed.lattice)):
        return RelaxResult(crystal.copy(), math.nan, False, int(opt.nsteps))
    return RelaxResult(relaxed, energy, converged, int(opt.nsteps))


def relax_crystals(
    crystals: Sequence[Crystal],
    fmax: float = 0.1,
    steps: int = 300,
    device: str | None = None,
) -> list[RelaxResult]:
    """Relax each crystal with CHGNet (FIRE, max force ``fmax`` eV/A, at most ``steps``)."""
    if device is None:
        from ml.settings import get_ml_settings

        device = get_ml_settings().torch_device()
    calc = _calculator(device)
    results: list[RelaxResult] = []
    for crystal in crystals:
        try:
            results.append(_relax_one(crystal, calc, fmax, steps))
        except Exception:  # any model/optimizer failure: unscored, never an exception
            results.append(RelaxResult(crystal.copy(), math.nan, False, 0))
    return results
