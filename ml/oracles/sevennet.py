"""SevenNet oracles (the checkpoints bundled in the ``sevenn`` wheel: nothing is downloaded).

``7net-l3i5`` (Matbench Discovery F1 0.76, MAE 0.044 eV/atom) is the service's default judge
of energy, relaxation, formation energy and energy above hull; ``7net-0`` (F1 0.72) is there
for comparison. Graphs (matscipy neighbour lists, SevenNet's own builder) are made on the CPU
and ``batch_size`` of them run in one forward pass, which also gives forces and stress, so the
same batched call drives :mod:`ml.oracles.batch_relax`.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pymatgen.core import Structure

from ml.crystal import Crystal, as_crystal
from ml.oracles.base import Oracle, OracleInfo, bounded_chunks
from ml.parallel import pool_map

__all__ = [
    "SEVENNET_MODELS",
    "SevennetEformOracle",
    "SevennetEnergyOracle",
    "SevennetPotential",
    "load_sevennet",
]

# energy-model name used across the project -> sevenn's pretrained name
SEVENNET_MODELS = {"sevennet-l3i5": "7net-l3i5", "sevennet-0": "7net-0"}
_MODELS: dict[tuple[str, str], tuple[torch.nn.Module, float, frozenset[int]]] = {}
_LOCK = threading.Lock()


def sevenn_version() -> str:
    from importlib.metadata import version

    return version("sevenn")


def load_sevennet(model: str, device: str) -> tuple[torch.nn.Module, float, frozenset[int]]:
    """(model in batch mode on ``device``, cutoff in A, atomic numbers it knows), cached."""
    key = (model, device)
    with _LOCK:
        if key not in _MODELS:
            import sevenn._keys as KEY
            from sevenn.util import load_checkpoint, pretrained_name_to_path

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "no tensor-product accelerator" notice
                cp = load_checkpoint(pretrained_name_to_path(SEVENNET_MODELS[model]))
                net = cp.build_model()
            net.set_is_batch_data(True)
            net.eval()
            known = frozenset(int(z) for z in cp.config[KEY.TYPE_MAP])
            _MODELS[key] = (net.to(device), float(cp.config[KEY.CUTOFF]), known)
        return _MODELS[key]


@dataclass(frozen=True)
class SevennetGraphBuilder:
    """Crystal -> SevenNet ``AtomGraphData``; ``None`` when the model cannot score it (an
    unknown element, or an atom with no neighbour within the cutoff)."""

    cutoff: float
    known: frozenset[int]

    def __call__(self, item: Crystal | Structure):
        import sevenn._keys as KEY
        from sevenn.atom_graph_data import AtomGraphData
        from sevenn.train.dataload import unlabeled_atoms_to_graph

        crystal = as_crystal(item)
        if crystal.num_atoms == 0 or not set(crystal.numbers.tolist()) <= self.known:
            return None
        try:
            graph = unlabeled_atoms_to_graph(crystal.to_ase(), self.cutoff)
        except Exception:  # degenerate cell
            return None
        src = graph[KEY.EDGE_IDX][0]
        if len(np.unique(src)) < crystal.num_atoms:
            return None  # an isolated atom: the energy would be meaningless
        return AtomGraphData.from_numpy_dict(graph)


class SevennetPotential:
    """Batched energy (eV), forces (eV/A) and stress (eV/A^3, ASE sign) of many crystals."""

    def __init__(self, model: str, device: str, pool: Any = None):
        self.model_name = model
        self.device = device
        self.net, cutoff, known = load_sevennet(model, device)
        self.builder = SevennetGraphBuilder(cutoff, known)
        # Graph building (neighbour lists) is CPU work: a process pool spreads it over cores.
        self.pool = pool

    def graphs(self, structures: Sequence[Crystal | Structure]) -> list[Any]:
        if self.pool is None or len(structures) < 32:
            return [self.builder(s) for s in structures]
        return pool_map(self.pool, self.builder, structures)

    def forward_graphs(self, graphs: Sequence[object]) -> dict[str, list[np.ndarray]]:
        """One forward pass over ``graphs`` (none may be None)."""
        import sevenn._keys as KEY
        from torch_geometric.loader.dataloader import Collater

        batch = Collater([], follow_batch=None, exclude_keys=None)(list(graphs)).to(self.device)
        out = self.net(batch)
        energy = out[KEY.PRED_TOTAL_ENERGY].detach().double().cpu().numpy().reshape(-1)
        forces = out[KEY.PRED_FORCE].detach().double().cpu().numpy()
        voigt = -out[KEY.PRED_STRESS].detach().double().cpu().numpy()  # xx yy zz xy yz zx
        n = [int(g[KEY.NUM_ATOMS]) for g in graphs]  # type: ignore[index]
        splits = np.cumsum(n)[:-1]
        stress = [
            np.array([[v[0], v[3], v[5]], [v[3], v[1], v[4]], [v[5], v[4], v[2]]]) for v in voigt
        ]
        return {"energy": list(energy), "forces": np.split(forces, splits), "stress": stress}

    def energies(self, structures: Sequence[Crystal | Structure], batch_size: int) -> np.ndarray:
        """Total energy per atom (eV/atom), NaN where the model cannot score a structure."""
        graphs = self.graphs(structures)
        out = np.full(len(graphs), np.nan, dtype=np.float64)
        idx = [i for i, g in enumerate(graphs) if g is not None]
        for chunk in _edge_bounded_chunks(graphs, idx, batch_size):
            res = self.forward_graphs([graphs[i] for i in chunk])
            for i, e in zip(chunk, res["energy"], strict=True):
                out[i] = e / int(graphs[i].num_atoms)  # type: ignore[index]
        return out

    def efs(self, crystals: Sequence[Crystal]) -> list[tuple[float, np.ndarray, np.ndarray] | None]:
        """(energy eV, forces, stress) per crystal, batched; None if unscorable."""
        graphs = self.graphs(crystals)
        idx = [i for i, g in enumerate(graphs) if g is not None]
        results: list[tuple[float, np.ndarray, np.ndarray] | None] = [None] * len(crystals)
        for chunk in _edge_bounded_chunks(graphs, idx, len(idx)):
            res = self.forward_graphs([graphs[i] for i in chunk])
            for k, i in enumerate(chunk):
                results[i] = (float(res["energy"][k]), res["forces"][k], res["stress"][k])
        return results


# Memory of a SevenNet forward + force/stress backward grows with the edge count; 256 cells of
# up to 200 atoms ran an H200 out of memory, 256 of ~10 atoms (~100k edges) did not.
MAX_EDGES_PER_PASS = 120_000


def _edge_bounded_chunks(
    graphs: Sequence[Any], idx: list[int], max_items: int, max_edges: int = MAX_EDGES_PER_PASS
) -> list[list[int]]:
    """Consecutive runs of ``idx`` with at most ``max_items`` graphs and ``max_edges`` edges
    (a single larger graph still gets its own pass)."""
    import sevenn._keys as KEY

    edges = [int(graphs[i][KEY.EDGE_IDX].shape[1]) for i in idx]
    return bounded_chunks(idx, edges, max_edges, max_items)


class SevennetEnergyOracle(Oracle):
    """SevenNet energy per atom at the given geometry (eV/atom)."""

    def __init__(self, info: OracleInfo, model: str, device: str):
        self.info = info
        self.energy_model = model
        self.device = device
        self.potential = SevennetPotential(model, device)

    def predict(
        self, structures: Sequence[Crystal | Structure], batch_size: int = 64
    ) -> np.ndarray:
        return self.potential.energies(structures, batch_size=batch_size)


class SevennetEformOracle(SevennetEnergyOracle):
    """SevenNet energy per atom plus the MP2020 correction (it was trained on uncorrected
    energies) minus its own composition-weighted elemental references."""

    def __init__(self, info: OracleInfo, model: str, device: str):
        super().__init__(info, model, device)
        from ml.oracles.references import load_elemental_refs

        self.refs = load_elemental_refs(model)

    def eform_from_energies(
        self, structures: Sequence[Crystal | Structure], energies: np.ndarray
    ) -> np.ndarray:
        from ml.oracles.references import formation_energies

        return formation_energies(structures, energies, self.refs, self.energy_model)

    def predict(
        self, structures: Sequence[Crystal | Structure], batch_size: int = 64
    ) -> np.ndarray:
        return self.eform_from_energies(structures, super().predict(structures, batch_size))
