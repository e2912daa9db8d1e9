"""Batched relaxation: FIRE on atom positions and cell for many crystals at once.

Every step makes ONE batched energy/forces/stress call for all crystals still moving (on the
GPU, that is one forward pass instead of one per crystal); a crystal leaves the batch when it
has converged or used its steps. The optimiser is ASE's FIRE (Bitzek et al., PRL 97, 170201,
2006) with ASE's default parameters, kept per crystal, on ASE's ``UnitCellFilter`` coordinates
(positions in the reference cell plus ``n_atoms`` x the deformation gradient), so a crystal
follows the same path as ``FIRE(UnitCellFilter(atoms))`` would give it alone. Convergence: the
largest generalised force (atoms and cell rows) below ``fmax``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ml.crystal import Crystal

__all__ = ["EFS", "FireParams", "RelaxResult", "fire_relax"]

# (total energy eV, forces (n, 3) eV/A, stress (3, 3) eV/A^3 in ASE's sign) or None
EFS = tuple[float, np.ndarray, np.ndarray] | None
Potential = Callable[[Sequence[Crystal]], list[EFS]]


@dataclass
class RelaxResult:
    """Relaxed crystal, its energy per atom (eV/atom), convergence and steps taken."""

    crystal: Crystal
    energy_per_atom: float
    converged: bool
    steps: int


@dataclass(frozen=True)
class FireParams:  # ASE's defaults
    dt: float = 0.1
    maxstep: float = 0.2
    dtmax: float = 1.0
    n_min: int = 5
    finc: float = 1.1
    fdec: float = 0.5
    astart: float = 0.1
    fa: float = 0.99


@dataclass
class _State:
    """One crystal's filter coordinates and FIRE state."""

    index: int
    cell0: np.ndarray
    numbers: np.ndarray
    x: np.ndarray  # (n + 3, 3): positions in the reference cell, then n * F
    dt: float
    a: float
    v: np.ndarray | None = None
    n_pos: int = 0
    steps: int = 0
    energy: float = math.nan
    properties: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.numbers)

    def deformation(self) -> np.ndarray:
        return self.x[self.n :] / self.n

    def crystal(self) -> Crystal:
        f = self.deformation()
        cell = self.cell0 @ f.T
        cart = self.x[: self.n] @ f.T
        frac = np.linalg.solve(cell.T, cart.T).T
        return Crystal(cell, frac, self.numbers, dict(self.properties))

    def generalised_forces(self, forces: np.ndarray, stress: np.ndarray) -> np.ndarray:
        f = self.deformation()
        cell = self.cell0 @ f.T
        volume = abs(np.linalg.det(cell))
        virial = -volume * stress
        atoms = forces @ f
        virial = np.linalg.solve(f, virial.T).T
        return np.vstack([atoms, virial / self.n])


def _start(index: int, crystal: Crystal, p: FireParams) -> _State:
    n = crystal.num_atoms
    x = np.vstack([crystal.cart_coords, n * np.eye(3)])
    return _State(
        index, crystal.lattice.copy(), crystal.numbers.copy(), x, p.dt, p.astart,
        properties=dict(crystal.properties),
    )  # fmt: skip


def _fire_step(s: _State, g: np.ndarray, p: FireParams) -> None:
    if s.v is None:
        s.v = np.zeros_like(s.x)
    else:
        vf = float(np.vdot(g, s.v))
        if vf > 0.0:
            s.v = (1.0 - s.a) * s.v + s.a * g / np.sqrt(np.vdot(g, g)) * np.sqrt(np.vdot(s.v, s.v))
            if s.n_pos > p.n_min:
                s.dt = min(s.dt * p.finc, p.dtmax)
                s.a *= p.fa
            s.n_pos += 1
        else:
            s.v[:] = 0.0
            s.a = p.astart
            s.dt *= p.fdec
            s.n_pos = 0
    s.v += s.dt * g
    dr = s.dt * s.v
    norm = float(np.sqrt(np.vdot(dr, dr)))
    if norm > p.maxstep:
        dr *= p.maxstep / norm
    s.x = s.x + dr


def fire_relax(
    crystals: Sequence[Crystal],
    potential: Potential,
    *,
    fmax: float = 0.1,
    steps: int = 300,
    max_batch: int = 256,
    params: FireParams = FireParams(),
) -> list[RelaxResult]:
    """Relax all ``crystals`` with ``potential`` (batched), at most ``max_batch`` at a time.

    A crystal the potential cannot score (None, non-finite energy) fails: NaN energy and its
    input returned. Never raises for one bad crystal, and a failed batch call is retried in
    halves (:func:`_evaluate`), so one bad crystal or a full GPU fails no other crystal.
    """
    results: list[RelaxResult | None] = [None] * len(crystals)
    cap = [max(len(crystals), 1)]  # the largest call that fits the device (lowered on OOM)
    waiting = list(range(len(crystals)))[::-1]
    active: list[_State] = []
    while waiting or active:
        while waiting and len(active) < max_batch:
            i = waiting.pop()
            active.append(_start(i, crystals[i], params))
        current = [s.crystal() for s in active]
        efs = _evaluate(potential, current, cap)
        still: list[_State] = []
        for s, crystal, out in zip(active, current, efs, strict=True):
            if out is None or not math.isfinite(out[0]):
                results[s.index] = RelaxResult(crystals[s.index].copy(), math.nan, False, s.steps)
                continue
            energy, forces, stress = out
            s.energy = energy / s.n
            g = s.generalised_forces(forces, stress)
            if not np.all(np.isfinite(g)):
                results[s.index] = RelaxResult(crystals[s.index].copy(), math.nan, False, s.steps)
                continue
            converged = float(np.sqrt((g**2).sum(axis=1)).max()) < fmax
            if converged or s.steps >= steps:
                results[s.index] = RelaxResult(crystal, s.energy, converged, s.steps)
                continue
            _fire_step(s, g, params)
            s.steps += 1
            still.append(s)
        active = still
    return [r for r in results if r is not None]


def _evaluate(potential: Potential, crystals: list[Crystal], cap: list[int]) -> list[EFS]:
    """The potential on the batch, in chunks of at most ``cap[0]`` crystals; where a call
    fails (a crystal it cannot take, or a chunk too large for the GPU's memory, e.g. beside
    other jobs) each half is tried again, so a failure fails only the crystals that cause it
    (None), never the whole batch. An out-of-memory lowers ``cap[0]`` for later steps."""
    if len(crystals) > cap[0]:
        return [
            out
            for i in range(0, len(crystals), cap[0])
            for out in _evaluate(potential, crystals[i : i + cap[0]], cap)
        ]
    try:
        return list(potential(crystals))
    except Exception as exc:
        if len(crystals) == 1:
            return [None]
        half = len(crystals) // 2
        if type(exc).__name__ == "OutOfMemoryError":  # torch's; free what the call held
            import torch

            torch.cuda.empty_cache()
            cap[0] = min(cap[0], half)
        return _evaluate(potential, crystals[:half], cap) + _evaluate(
            potential, crystals[half:], cap
        )
