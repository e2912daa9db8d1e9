"""Batched relaxation with every step on the device: FIRE state, neighbour lists and SevenNet.

:func:`ml.oracles.batch_relax.fire_relax` makes one batched force call per FIRE step, but builds
every crystal's SevenNet graph on the CPU (matscipy) and steps FIRE per crystal in numpy: at
1,024 crystals that is ~0.4 s of CPU work per step, more than the forward pass. Here the
optimiser state of all crystals lives in tensors, the neighbour list is rebuilt in torch at each
step (:func:`ml.methods.smoacs.neighbors.build_neighbor_list`) and SevenNet gets the edge
vectors directly (it differentiates its energy with respect to them for forces and stress;
:mod:`ml.oracles.sevennet_graphs`, which replays the small calls of a relaxation's last steps
as CUDA graphs).

The algorithm is the same as :mod:`ml.oracles.batch_relax`: ASE's FIRE with its default
parameters on ``UnitCellFilter`` coordinates (positions in the reference cell, then ``n_atoms``
x the deformation gradient), one FIRE state per crystal, converged when the largest generalised
force is below ``fmax``. A crystal leaves the batch when it converges, fails or runs out of
steps, so later (small) steps cost less. Crystals the model cannot score (an element outside
its table, an atom with no neighbour within the cutoff, a non-finite energy) fail with NaN
energy and their input returned, as on the CPU path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ml.crystal import Crystal
from ml.oracles.base import bounded_chunks
from ml.oracles.batch_relax import FireParams, RelaxResult

__all__ = [
    "SevennetDevicePotential",
    "device_relax_enabled",
    "fire_relax_on_device",
    "prepare_graphs",
]

# Edges per SevenNet forward + force/stress backward; the active crystals are split into
# consecutive groups under it. 256 cells of ~10 atoms (~100k edges) ran on an H200 with room
# to spare; see benchmarks/RESULTS.md for the memory measured per edge.
MAX_EDGES_PER_PASS = 400_000


# Below this many crystals "auto" keeps the CPU-graph path: on the H200 a substitution job's
# 16-crystal relaxations took 131.8 s on this path against 117.7 s (under cProfile) on the
# other, while 256 SMOACS designs took 26.0 s against 47.3 s.
MIN_CRYSTALS_AUTO = 64


def device_relax_enabled(device: str, n_crystals: int | None = None) -> bool:
    """Whether relaxations on ``device`` run on device-built graphs (``MATDESIGN_DEVICE_RELAX``:
    auto = CUDA only and batches of at least ``MIN_CRYSTALS_AUTO``; on a CPU matscipy's
    compiled neighbour list is as fast)."""
    from ml.settings import get_ml_settings

    mode = get_ml_settings().device_relax
    big = n_crystals is None or n_crystals >= MIN_CRYSTALS_AUTO
    return mode == "on" or (mode == "auto" and str(device).startswith("cuda") and big)


def prepare_graphs(model: str, device: str) -> int:
    """Capture ``model``'s CUDA graphs on ``device`` now (worker warm-up), when relaxations
    there use them (:mod:`ml.oracles.sevennet_graphs`); the number captured."""
    if not device_relax_enabled(device):
        return 0
    potential = SevennetDevicePotential(model, device)
    if potential.graphs is None:
        return 0
    potential.graphs.prepare()
    return len(potential.graphs.graphs)


@dataclass
class Forces:
    """Energy (B,) eV, forces (S, 3) eV/A, stress (B, 3, 3) eV/A^3 in ASE's sign, and whether
    each crystal was scored (B,) bool."""

    energy: torch.Tensor
    forces: torch.Tensor
    stress: torch.Tensor
    ok: torch.Tensor


class SevennetDevicePotential:
    """SevenNet energy, forces and stress of a batch of crystals given as tensors."""

    def __init__(
        self, model: str, device: str, max_edges: int = MAX_EDGES_PER_PASS,
        graphs: bool | None = None,
    ) -> None:  # fmt: skip
        """``graphs``: replay small calls as CUDA graphs (default: the
        ``sevennet_cuda_graphs`` setting; CUDA only)."""
        from ml.oracles.sevennet import load_sevennet
        from ml.oracles.sevennet_graphs import SevennetEFS, graphed_efs
        from ml.settings import get_ml_settings

        self.device = device
        self.net, self.cutoff, known = load_sevennet(model, device)
        self.known = known
        self.max_edges = max_edges
        self.efs = SevennetEFS(self.net, device)
        if graphs is None:
            graphs = get_ml_settings().sevennet_cuda_graphs
        graphs = graphs and str(device).startswith("cuda")
        self.graphs = graphed_efs(self.net, self.efs, device) if graphs else None

    def supports(self, crystal: Crystal) -> bool:
        return crystal.num_atoms > 0 and set(crystal.numbers.tolist()) <= self.known

    def __call__(
        self, lattice: torch.Tensor, cart: torch.Tensor, numbers: torch.Tensor,
        counts: torch.Tensor,
    ) -> Forces:  # fmt: skip
        """``lattice`` (B, 3, 3) rows = vectors, ``cart`` (S, 3) A, ``numbers`` (S,),
        ``counts`` (B,) atoms per crystal (sites in crystal order)."""
        from ml.methods.smoacs.neighbors import build_neighbor_list

        b = len(counts)
        batch = torch.repeat_interleave(torch.arange(b, device=cart.device), counts)
        frac = torch.linalg.solve(lattice.transpose(1, 2)[batch], cart.unsqueeze(-1)).squeeze(-1)
        nl = build_neighbor_list(lattice, frac, batch, counts, self.cutoff)
        vec = (
            cart[nl.dst]
            - cart[nl.src]
            + torch.einsum("ei,eij->ej", nl.images, lattice[batch[nl.src]])
        )
        edge_crystal = batch[nl.src]
        edges_per = torch.bincount(edge_crystal, minlength=b)
        has_edge = torch.zeros(len(cart), dtype=torch.bool, device=cart.device)
        has_edge[nl.src] = True
        lonely = torch.bincount(batch[~has_edge], minlength=b) > 0
        energy = torch.full((b,), math.nan, dtype=torch.float64, device=cart.device)
        forces = torch.zeros_like(cart)
        stress = torch.zeros((b, 3, 3), dtype=torch.float64, device=cart.device)
        atom_start = torch.zeros(b + 1, dtype=torch.long, device=cart.device)
        atom_start[1:] = torch.cumsum(counts, 0)
        edge_start = torch.zeros(b + 1, dtype=torch.long, device=cart.device)
        edge_start[1:] = torch.cumsum(edges_per, 0)
        # Sorted by crystal, so each pass below takes one contiguous slice of edges.
        order = torch.argsort(edge_crystal, stable=True)
        src, dst, vec = nl.src[order], nl.dst[order], vec[order]
        starts, edge_starts = atom_start.tolist(), edge_start.tolist()
        for group in bounded_chunks(list(range(b)), edges_per.tolist(), self.max_edges):
            c0, c1 = group[0], group[-1] + 1
            a0, a1, e0, e1 = starts[c0], starts[c1], edge_starts[c0], edge_starts[c1]
            e, f, s = self._forward(
                numbers[a0:a1], counts[c0:c1], batch[a0:a1] - c0,
                torch.stack([src[e0:e1], dst[e0:e1]]) - a0, vec[e0:e1], lattice[c0:c1],
            )  # fmt: skip
            energy[c0:c1] = e
            forces[a0:a1] = f
            stress[c0:c1] = s
        ok = torch.isfinite(energy) & ~lonely
        return Forces(energy, forces, stress, ok)

    def _forward(
        self, numbers: torch.Tensor, counts: torch.Tensor, batch: torch.Tensor,
        edge_index: torch.Tensor, vec: torch.Tensor, lattice: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        volume = torch.linalg.det(lattice).abs().float()
        args = (self.efs.types(numbers), edge_index, vec.float().detach(), batch, volume)
        out = self.graphs(*args) if self.graphs is not None else self.efs(*args)
        idx = [[0, 3, 5], [3, 1, 4], [5, 4, 2]]  # Voigt xx yy zz xy yz zx -> 3 x 3
        stress = out.stress.double()[:, torch.tensor(idx, device=vec.device)]
        return out.energy.double(), out.forces.double(), stress


@dataclass
class _Batch:
    """FIRE state of the crystals still relaxing (per-crystal tensors (B, ...), per-atom
    tensors (S, ...), atoms in crystal order)."""

    index: torch.Tensor  # (B,) position in the caller's list
    counts: torch.Tensor  # (B,)
    numbers: torch.Tensor  # (S,)
    cell0: torch.Tensor  # (B, 3, 3)
    pos: torch.Tensor  # (S, 3) positions in the reference cell
    fn: torch.Tensor  # (B, 3, 3) n_atoms x deformation gradient
    v_pos: torch.Tensor
    v_cell: torch.Tensor
    dt: torch.Tensor  # (B,)
    a: torch.Tensor
    n_pos: torch.Tensor
    steps: torch.Tensor
    started: torch.Tensor  # (B,) bool
    batch: torch.Tensor = None  # type: ignore[assignment]  # (S,) crystal of each atom

    def __post_init__(self) -> None:
        # Kept, not recomputed: repeat_interleave waits for the GPU (its size is data).
        if self.batch is None:
            self.batch = torch.repeat_interleave(
                torch.arange(len(self.counts), device=self.pos.device), self.counts
            )

    def geometry(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(deformation F (B, 3, 3), cell (B, 3, 3), cartesian positions (S, 3))."""
        f = self.fn / self.counts.to(self.fn.dtype)[:, None, None]
        cell = torch.bmm(self.cell0, f.transpose(1, 2))
        cart = torch.einsum("sj,sij->si", self.pos, f[self.batch])
        return f, cell, cart

    def keep(self, mask: torch.Tensor) -> _Batch:
        atoms = mask[self.batch]
        per_crystal = (
            "index",
            "counts",
            "cell0",
            "fn",
            "v_cell",
            "dt",
            "a",
            "n_pos",
            "steps",
            "started",
        )
        per_atom = ("numbers", "pos", "v_pos")
        fields = {k: getattr(self, k)[mask] for k in per_crystal}
        fields.update({k: getattr(self, k)[atoms] for k in per_atom})
        return _Batch(**fields)


def _start(crystals: Sequence[Crystal], index: list[int], device: str, p: FireParams) -> _Batch:
    cs = [crystals[i] for i in index]
    dt = torch.float64
    counts = torch.tensor([c.num_atoms for c in cs], device=device)
    b = len(cs)
    return _Batch(
        index=torch.tensor(index, device=device),
        counts=counts,
        numbers=torch.tensor(np.concatenate([c.numbers for c in cs]), device=device),
        cell0=torch.tensor(np.stack([c.lattice for c in cs]), dtype=dt, device=device),
        pos=torch.tensor(np.concatenate([c.cart_coords for c in cs]), dtype=dt, device=device),
        fn=counts.to(dt)[:, None, None] * torch.eye(3, dtype=dt, device=device).expand(b, 3, 3),
        v_pos=torch.zeros((int(counts.sum()), 3), dtype=dt, device=device),
        v_cell=torch.zeros((b, 3, 3), dtype=dt, device=device),
        dt=torch.full((b,), p.dt, dtype=dt, device=device),
        a=torch.full((b,), p.astart, dtype=dt, device=device),
        n_pos=torch.zeros(b, dtype=torch.long, device=device),
        steps=torch.zeros(b, dtype=torch.long, device=device),
        started=torch.zeros(b, dtype=torch.bool, device=device),
    )


def _per_crystal_sum(
    atom_values: torch.Tensor, cell_values: torch.Tensor, s: _Batch
) -> torch.Tensor:
    """Sum over each crystal's atom rows (S,) and cell rows (B,)."""
    out = torch.zeros(len(s.counts), dtype=atom_values.dtype, device=atom_values.device)
    return out.index_add_(0, s.batch, atom_values) + cell_values


def _fire_step(s: _Batch, g_pos: torch.Tensor, g_cell: torch.Tensor, p: FireParams) -> None:
    """ASE's FIRE update of every crystal in ``s`` (as ``batch_relax._fire_step`` does it)."""
    batch = s.batch
    vf = _per_crystal_sum((g_pos * s.v_pos).sum(1), (g_cell * s.v_cell).sum((1, 2)), s)
    gg = _per_crystal_sum((g_pos * g_pos).sum(1), (g_cell * g_cell).sum((1, 2)), s)
    vv = _per_crystal_sum((s.v_pos * s.v_pos).sum(1), (s.v_cell * s.v_cell).sum((1, 2)), s)
    uphill = s.started & (vf > 0)
    reset = s.started & ~(vf > 0)
    mix = torch.where(uphill, s.a, torch.zeros_like(s.a))
    scale = torch.where(uphill, s.a * torch.sqrt(vv) / torch.sqrt(gg).clamp_min(1e-300), 0.0)
    keep = torch.where(reset, 0.0, 1.0 - mix)
    s.v_pos = keep[batch, None] * s.v_pos + scale[batch, None] * g_pos
    s.v_cell = keep[:, None, None] * s.v_cell + scale[:, None, None] * g_cell
    speed_up = uphill & (s.n_pos > p.n_min)
    s.dt = torch.where(speed_up, torch.clamp(s.dt * p.finc, max=p.dtmax), s.dt)
    s.a = torch.where(speed_up, s.a * p.fa, s.a)
    s.n_pos = torch.where(uphill, s.n_pos + 1, s.n_pos)
    s.a = torch.where(reset, torch.full_like(s.a, p.astart), s.a)
    s.dt = torch.where(reset, s.dt * p.fdec, s.dt)
    s.n_pos = torch.where(reset, torch.zeros_like(s.n_pos), s.n_pos)
    s.started = torch.ones_like(s.started)
    s.v_pos = s.v_pos + s.dt[batch, None] * g_pos
    s.v_cell = s.v_cell + s.dt[:, None, None] * g_cell
    dr_pos = s.dt[batch, None] * s.v_pos
    dr_cell = s.dt[:, None, None] * s.v_cell
    norm = torch.sqrt(
        _per_crystal_sum((dr_pos * dr_pos).sum(1), (dr_cell * dr_cell).sum((1, 2)), s)
    )
    shrink = torch.where(norm > p.maxstep, p.maxstep / norm.clamp_min(1e-300), 1.0)
    s.pos = s.pos + shrink[batch, None] * dr_pos
    s.fn = s.fn + shrink[:, None, None] * dr_cell


def fire_relax_on_device(
    crystals: Sequence[Crystal],
    potential: SevennetDevicePotential,
    *,
    fmax: float = 0.1,
    steps: int = 300,
    max_batch: int = 4096,
    params: FireParams = FireParams(),
) -> list[RelaxResult]:
    """Relax all ``crystals`` with ``potential``, ``max_batch`` crystals at a time, every step
    one batched call on the device. Never raises for one bad crystal."""
    results: list[RelaxResult | None] = [None] * len(crystals)
    todo = []
    for i, c in enumerate(crystals):
        if potential.supports(c):
            todo.append(i)
        else:
            results[i] = RelaxResult(c.copy(), math.nan, False, 0)
    for start in range(0, len(todo), max_batch):
        _relax_group(
            crystals, todo[start : start + max_batch], potential, fmax, steps, params, results
        )
    return [r for r in results if r is not None]


def _relax_group(
    crystals: Sequence[Crystal], index: list[int], potential: SevennetDevicePotential,
    fmax: float, max_steps: int, p: FireParams, results: list[RelaxResult | None],
) -> None:  # fmt: skip
    s = _start(crystals, index, potential.device, p)
    while len(s.counts):
        f, cell, cart = s.geometry()
        try:
            with torch.enable_grad():
                out = potential(cell, cart, s.numbers, s.counts)
        except torch.OutOfMemoryError:
            raise  # the caller falls back to the CPU-graph path
        except Exception:  # a degenerate cell the neighbour search cannot take: fail them all
            for i in s.index.tolist():
                results[i] = RelaxResult(crystals[i].copy(), math.nan, False, 0)
            return
        batch = s.batch
        g_pos = torch.einsum("sj,sji->si", out.forces, f[batch])
        volume = torch.linalg.det(cell).abs()
        virial = -volume[:, None, None] * out.stress
        virial = torch.linalg.solve(f, virial.transpose(1, 2)).transpose(1, 2)
        g_cell = virial / s.counts.to(virial.dtype)[:, None, None]
        finite = (
            _per_crystal_sum(
                (~torch.isfinite(g_pos)).any(1).double(),
                (~torch.isfinite(g_cell)).flatten(1).any(1).double(),
                s,
            )
            == 0
        )
        ok = out.ok & finite
        largest = torch.zeros(len(s.counts), dtype=g_pos.dtype, device=g_pos.device)
        largest = largest.scatter_reduce_(0, batch, g_pos.norm(dim=1), "amax")
        largest = torch.maximum(largest, g_cell.norm(dim=2).amax(1))
        converged = ok & (largest < fmax)
        done = ~ok | converged | (s.steps >= max_steps)
        if bool(done.any()):
            _record(s, done, ok, converged, out.energy, cell, cart, crystals, results)
        s_keep = ~done
        if not bool(s_keep.any()):
            return
        if not bool(s_keep.all()):
            atoms = s_keep[batch]
            g_pos, g_cell = g_pos[atoms], g_cell[s_keep]
            s = s.keep(s_keep)
        _fire_step(s, g_pos, g_cell, p)
        s.steps = s.steps + 1


def _record(
    s: _Batch, done: torch.Tensor, ok: torch.Tensor, converged: torch.Tensor,
    energy: torch.Tensor, cell: torch.Tensor, cart: torch.Tensor,
    crystals: Sequence[Crystal], results: list[RelaxResult | None],
) -> None:  # fmt: skip
    starts = np.concatenate([[0], np.cumsum(s.counts.tolist())])
    cart_np = cart.detach().cpu().numpy()
    cell_np = cell.detach().cpu().numpy()
    energy_np = energy.cpu().numpy()
    counts = s.counts.tolist()
    for k in torch.nonzero(done).flatten().tolist():
        i = int(s.index[k])
        steps = int(s.steps[k])
        if not bool(ok[k]):
            results[i] = RelaxResult(crystals[i].copy(), math.nan, False, steps)
            continue
        lattice = cell_np[k]
        frac = np.linalg.solve(lattice.T, cart_np[starts[k] : starts[k + 1]].T).T
        relaxed = Crystal(lattice, frac, crystals[i].numbers.copy(), dict(crystals[i].properties))
        results[i] = RelaxResult(
            relaxed, float(energy_np[k]) / counts[k], bool(converged[k]), steps
        )
