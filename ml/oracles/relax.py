"""Relaxation with an energy model (SevenNet-l3i5 by default, or CHGNet 0.3.0).

:func:`relax_crystals` relaxes a whole batch together (:mod:`ml.oracles.batch_relax`: FIRE on
positions and cell, one batched force call per step for all crystals still moving).
:func:`relax_one_by_one` is the earlier path (ASE FIRE + FrechetCellFilter per crystal with
the model's ASE calculator), kept to measure the batched one against. A relaxation that fails
returns NaN energy and the input crystal; it never raises.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence

import numpy as np
import torch

from ml.crystal import Crystal
from ml.oracles.batch_relax import RelaxResult, fire_relax

__all__ = ["DEFAULT_ENERGY_MODEL", "RelaxResult", "energy_potential", "relax_crystals"]

DEFAULT_ENERGY_MODEL = "chgnet"  # the default stability judge's model
_SEVENNET = ("sevennet-l3i5", "sevennet-0")
ENERGY_MODELS = (*_SEVENNET, "chgnet")


def _device(device: str | None) -> str:
    if device is not None:
        return device
    from ml.settings import get_ml_settings

    return get_ml_settings().torch_device()


def energy_potential(model: str, device: str, pool: object = None):  # -> SevennetPotential | ...
    """The batched energy/forces/stress callable of ``model`` (see ``ENERGY_MODELS``)."""
    if model == "chgnet":
        from ml.oracles.chgnet import ChgnetPotential

        return ChgnetPotential(device, pool)
    if model in _SEVENNET:
        from ml.oracles.sevennet import SevennetPotential

        return SevennetPotential(model, device, pool)
    raise KeyError(f"unknown energy model {model!r}; known: {list(ENERGY_MODELS)}")


def relax_crystals(
    crystals: Sequence[Crystal],
    fmax: float = 0.1,
    steps: int = 300,
    device: str | None = None,
    model: str = DEFAULT_ENERGY_MODEL,
    max_batch: int = 256,
    pool: object = None,
) -> list[RelaxResult]:
    """Relax the crystals together (max force ``fmax`` eV/A, at most ``steps`` FIRE steps).

    SevenNet on CUDA (``MATDESIGN_DEVICE_RELAX``) relaxes with every step on the device
    (:mod:`ml.oracles.device_relax`), all crystals in one batch; a GPU out of memory falls
    back to the CPU-graph path with ``max_batch``."""
    device = _device(device)
    if model in _SEVENNET:
        from ml.oracles.device_relax import (
            SevennetDevicePotential,
            device_relax_enabled,
            fire_relax_on_device,
        )

        if device_relax_enabled(device, len(crystals)):
            try:
                return fire_relax_on_device(
                    crystals, SevennetDevicePotential(model, device), fmax=fmax, steps=steps
                )
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
    potential = energy_potential(model, device, pool)
    return fire_relax(crystals, potential.efs, fmax=fmax, steps=steps, max_batch=max_batch)


def _calculator(model: str, device: str):  # -> an ASE calculator sharing the cached model
    if model == "chgnet":
        from chgnet.model.dynamics import CHGNetCalculator

        from ml.oracles.chgnet import load_chgnet

        with contextlib.redirect_stdout(io.StringIO()):  # it prints the device on creation
            return CHGNetCalculator(
                model=load_chgnet(device), use_device=device, on_isolated_atoms="ignore"
            )
    from sevenn.calculator import SevenNetCalculator

    from ml.oracles.sevennet import SEVENNET_MODELS

    return SevenNetCalculator(SEVENNET_MODELS[model], device=device)


def relax_one_by_one(
    crystals: Sequence[Crystal],
    fmax: float = 0.1,
    steps: int = 300,
    device: str | None = None,
    model: str = DEFAULT_ENERGY_MODEL,
) -> list[RelaxResult]:
    """ASE FIRE + FrechetCellFilter, one crystal after another (the reference path)."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    calc = _calculator(model, _device(device))
    results: list[RelaxResult] = []
    for crystal in crystals:
        try:
            atoms = crystal.to_ase()
            atoms.calc = calc  # type: ignore[attr-defined]
            with contextlib.redirect_stdout(io.StringIO()):
                opt = FIRE(FrechetCellFilter(atoms), logfile=None)
                converged = bool(opt.run(fmax=fmax, steps=steps))
            energy = float(atoms.get_potential_energy()) / len(atoms)  # type: ignore[attr-defined]
            relaxed = Crystal.from_ase(atoms)
            relaxed.properties = dict(crystal.properties)
            if not math.isfinite(energy) or not np.all(np.isfinite(relaxed.lattice)):
                raise ValueError("non-finite relaxation")
            results.append(RelaxResult(relaxed, energy, converged, int(opt.nsteps)))
        except Exception:  # any model/optimizer failure: unscored, never an exception
            results.append(RelaxResult(crystal.copy(), math.nan, False, 0))
    return results
