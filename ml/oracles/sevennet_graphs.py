"""SevenNet energy, forces and stress from edge vectors, replayed as CUDA graphs for small batches.

A relaxation's last FIRE steps move a handful of crystals, and each SevenNet call then costs
~0.1 s whatever its size: the GPU waits while Python launches the thousands of small kernels of
the forward and force backward (issue 20's profile, benchmarks/RESULTS.md). A CUDA graph
replays all of them in one launch. Graphs need fixed shapes and no read-back from the GPU, so

* :class:`SevennetEFS` runs SevenNet's modules up to the atomic energies and does the two last
  steps itself (the per-crystal sum and forces/stress from the edge-vector gradient, as
  ``sevenn``'s ``ForceStressOutputFromEdge`` computes them), sized from tensor shapes: sevenn's
  own modules read the batch size back from the GPU (``batch.max().item()``);
* :class:`_GraphedEFS` captures it for one capacity (atoms, edges, crystals) and pads each call
  to it: padding atoms belong to one extra crystal whose results are dropped, and padding edges
  join a padding atom to itself, so they touch nothing real.

Capacities come in powers of two up to ``MAX_GRAPH_EDGES`` edges; larger calls are compute bound
and run eagerly. Each capacity's first replay is checked against the eager result, and a failed
capture or check turns the graphs off for the model (the eager path is always right).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

__all__ = ["EFS", "SevennetEFS", "graphed_efs"]

# Edge capacities of the captured graphs: 2^10 .. 2^16. Above, a call is compute bound.
MIN_GRAPH_EDGES = 1 << 10
MAX_GRAPH_EDGES = 1 << 16
# Atoms and crystals a capacity holds, per edge (SevenNet-l3i5's 5 Å cutoff gives ~20-60
# edges per atom in MP-20 cells; a call with more atoms takes the next capacity).
_ATOMS_PER_EDGE = 0.25
_MAX_GRAPH_CRYSTALS = 4096
# Largest energy difference (eV per crystal) tolerated between a replay and the eager pass.
_CHECK_TOLERANCE = 1e-3
# Length of a padding edge (Å): inside the cutoff, so its terms are finite.
_PAD_EDGE = 2.0

_SKIPPED = ("AtomReduce", "ForceStressOutputFromEdge")


@dataclass
class EFS:
    """Energy (B,) eV, forces (A, 3) eV/Å, stress (B, 6) Voigt xx yy zz xy yz zx in eV/Å^3
    with ASE's sign (positive under tension)."""

    energy: torch.Tensor
    forces: torch.Tensor
    stress: torch.Tensor


class SevennetEFS:
    """SevenNet on a batch given as edge vectors, with fixed-size reductions."""

    def __init__(self, net: torch.nn.Module, device: str) -> None:
        self.modules = [m for m in net._modules.values() if type(m).__name__ not in _SKIPPED]
        rescale = [m for m in self.modules if hasattr(m, "key_indices")]
        self.energy_key = rescale[-1].key_output if rescale else "atomic_energy"
        self.type_of_z = net.z_to_onehot_tensor.to(device)

    def types(self, numbers: torch.Tensor) -> torch.Tensor:
        return self.type_of_z[numbers]

    def __call__(
        self, types: torch.Tensor, edge_index: torch.Tensor, vec: torch.Tensor,
        batch: torch.Tensor, volume: torch.Tensor,
    ) -> EFS:  # fmt: skip
        """``types`` (A,) SevenNet's type indices, ``edge_index`` (2, E) source, neighbour,
        ``vec`` (E, 3) neighbour minus source, ``batch`` (A,) crystal of each atom,
        ``volume`` (B,) cell volumes."""
        import sevenn._keys as KEY

        n_atoms, n_crystals = types.shape[0], volume.shape[0]
        with torch.enable_grad():
            vec = vec.detach().requires_grad_(True)
            data = {
                KEY.NODE_FEATURE: types,
                KEY.EDGE_IDX: edge_index,
                KEY.EDGE_VEC: vec,
                KEY.BATCH: batch,
            }
            for module in self.modules:
                data = module(data)
            atom_energy = data[self.energy_key].reshape(-1)
            (fij,) = torch.autograd.grad(atom_energy.sum(), [vec])
        atom_energy, src, dst = atom_energy.detach(), edge_index[0], edge_index[1]
        forces = torch.zeros((n_atoms, 3), dtype=fij.dtype, device=fij.device)
        forces = forces.index_add(0, src, fij).index_add(0, dst, -fij)
        vec = vec.detach()
        virial = torch.cat(
            [
                vec * fij,
                (vec[:, 0] * fij[:, 1])[:, None],
                (vec[:, 1] * fij[:, 2])[:, None],
                (vec[:, 2] * fij[:, 0])[:, None],
            ],
            dim=1,
        )
        per_atom = torch.zeros((n_atoms, 6), dtype=fij.dtype, device=fij.device)
        per_atom = per_atom.index_add(0, dst, virial)
        per_crystal = torch.zeros((n_crystals, 6), dtype=fij.dtype, device=fij.device)
        per_crystal = per_crystal.index_add(0, batch, per_atom)
        energy = torch.zeros(n_crystals, dtype=atom_energy.dtype, device=atom_energy.device)
        energy = energy.index_add(0, batch, atom_energy)
        # sevenn's stress is -virial / V; ASE's sign is its negative.
        return EFS(energy, forces, per_crystal / volume.clamp_min(1e-3)[:, None])


class _GraphedEFS:
    """:class:`SevennetEFS` captured for ``edges`` edges, ``atoms`` atoms, ``crystals``
    crystals; a call with fewer is padded. ``capture`` False runs the padded call eagerly
    (the padding's tests on a CPU)."""

    def __init__(
        self, efs: SevennetEFS, edges: int, atoms: int, crystals: int, device: str,
        capture: bool = True, pool: tuple | None = None,
    ) -> None:  # fmt: skip
        self.efs, self.edges, self.atoms, self.crystals = efs, edges, atoms, crystals
        self.types = torch.empty(atoms, dtype=torch.long, device=device)
        self.edge_index = torch.empty((2, edges), dtype=torch.long, device=device)
        self.vec = torch.empty((edges, 3), dtype=torch.float32, device=device)
        self.batch = torch.empty(atoms, dtype=torch.long, device=device)
        self.volume = torch.empty(crystals, dtype=torch.float32, device=device)
        self.args = (self.types, self.edge_index, self.vec, self.batch, self.volume)
        self._load(*self._nothing(device))  # all padding: what the capture runs on
        self.graph: torch.cuda.CUDAGraph | None = None
        if capture:
            self._capture(pool)

    def _capture(self, pool: tuple | None) -> None:
        args = self.args
        efs = self.efs
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the capture (lazy inits, autotuning)
            for _ in range(2):
                efs(*args)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.out = efs(*args)

    @staticmethod
    def _nothing(device: str) -> tuple[torch.Tensor, ...]:
        long, f32 = torch.long, torch.float32
        return (
            torch.empty(0, dtype=long, device=device),
            torch.empty((2, 0), dtype=long, device=device),
            torch.empty((0, 3), dtype=f32, device=device),
            torch.empty(0, dtype=long, device=device),
            torch.empty(0, dtype=f32, device=device),
        )

    def _load(
        self, types: torch.Tensor, edge_index: torch.Tensor, vec: torch.Tensor,
        batch: torch.Tensor, volume: torch.Tensor,
    ) -> None:  # fmt: skip
        """Copy a call into the buffers and pad the rest (the caller leaves at least one
        padding atom and one padding crystal)."""
        a, e, b = types.shape[0], vec.shape[0], volume.shape[0]
        self.types[:a] = types
        self.types[a:] = 0
        self.batch[:a] = batch
        self.batch[a:] = self.crystals - 1
        self.edge_index[:, :e] = edge_index
        self.edge_index[:, e:] = self.atoms - 1
        self.vec[:e] = vec
        self.vec[e:] = 0.0
        self.vec[e:, 0] = _PAD_EDGE
        self.volume[:b] = volume
        self.volume[b:] = 1.0

    def __call__(
        self, types: torch.Tensor, edge_index: torch.Tensor, vec: torch.Tensor,
        batch: torch.Tensor, volume: torch.Tensor,
    ) -> EFS:  # fmt: skip
        a, b = types.shape[0], volume.shape[0]
        self._load(types, edge_index, vec, batch, volume)
        if self.graph is None:
            self.out = self.efs(*self.args)
        else:
            self.graph.replay()
        out = self.out
        return EFS(out.energy[:b].clone(), out.forces[:a].clone(), out.stress[:b].clone())


class _GraphCache:
    """The captured capacities of one model on one device, built on first use or by
    :meth:`prepare` (worker warm-up). They share one memory pool: replays never overlap (a
    lock) and each call copies its outputs out before the next replay."""

    def __init__(self, efs: SevennetEFS, device: str, capture: bool = True) -> None:
        self.efs, self.device, self.capture = efs, device, capture
        self.graphs: dict[int, _GraphedEFS] = {}
        self.checked: set[int] = set()
        self.enabled = True
        self.pool = torch.cuda.graph_pool_handle() if capture else None
        # A graph's buffers hold one call at a time.
        self.lock = threading.Lock()

    @staticmethod
    def _shape(capacity: int) -> tuple[int, int]:
        """(atoms, crystals) held by the capacity of ``capacity`` edges."""
        atoms = int(capacity * _ATOMS_PER_EDGE)
        return atoms, min(atoms, _MAX_GRAPH_CRYSTALS) + 1

    def prepare(self) -> None:
        """Capture every capacity now (each is checked against the eager pass on first use)."""
        with self.lock:
            capacity = MIN_GRAPH_EDGES
            while self.enabled and capacity <= MAX_GRAPH_EDGES:
                self._graph(capacity)
                capacity *= 2

    def __call__(
        self, types: torch.Tensor, edge_index: torch.Tensor, vec: torch.Tensor,
        batch: torch.Tensor, volume: torch.Tensor,
    ) -> EFS:  # fmt: skip
        args = (types, edge_index, vec, batch, volume)
        size = (types.shape[0], vec.shape[0], volume.shape[0])
        capacity = max(MIN_GRAPH_EDGES, 1 << max(size[1] - 1, 0).bit_length())
        while self.enabled and capacity <= MAX_GRAPH_EDGES:
            atoms, crystals = self._shape(capacity)
            # One padding atom and one padding crystal are always left.
            if atoms > size[0] and crystals > size[2]:
                with self.lock:
                    return self._replay(capacity, args)
            capacity *= 2
        return self.efs(*args)

    def _graph(self, capacity: int) -> _GraphedEFS | None:
        if capacity not in self.graphs:
            atoms, crystals = self._shape(capacity)
            try:
                self.graphs[capacity] = _GraphedEFS(
                    self.efs, capacity, atoms, crystals, self.device, self.capture, self.pool
                )
            except Exception as exc:  # a kernel that cannot be captured: eager from now on
                log.warning("SevenNet CUDA graphs off: capture failed (%s)", exc)
                self.enabled = False
                return None
        return self.graphs[capacity]

    def _replay(self, capacity: int, args: tuple) -> EFS:
        graph = self._graph(capacity)
        if graph is None:
            return self.efs(*args)
        out = graph(*args)
        if capacity in self.checked:
            return out
        eager = self.efs(*args)
        err = float((out.energy - eager.energy).abs().max()) if len(eager.energy) else 0.0
        if not err <= _CHECK_TOLERANCE:
            log.warning("SevenNet CUDA graphs off: replay differs by %.3g eV", err)
            self.enabled = False
            return eager
        self.checked.add(capacity)
        return out


_CACHES: dict[tuple[int, str], _GraphCache] = {}
_LOCK = threading.Lock()


def graphed_efs(net: torch.nn.Module, efs: SevennetEFS, device: str) -> _GraphCache:
    """The graph cache of ``net`` on ``device`` (one per process, shared by all jobs)."""
    with _LOCK:
        key = (id(net), str(device))
        if key not in _CACHES:
            _CACHES[key] = _GraphCache(efs, device)
        return _CACHES[key]
