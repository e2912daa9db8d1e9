"""CHGNet 0.3.0 oracles: static energy per atom and CHGNet-Eform.

Graphs are built per structure (picklable builder, so DataLoader workers can build them) and
scored ``batch_size`` at a time in one CHGNet forward pass each. A structure with an isolated
atom (no neighbour within CHGNet's 6 A atom-graph cutoff) is unscored: NaN.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pymatgen.core import Structure

from ml.crystal import Crystal, as_structure
from ml.oracles.base import Oracle, OracleInfo, score_in_batches
from ml.oracles.references import formation_energies, load_elemental_refs
from ml.parallel import pool_map

__all__ = [
    "CHGNET_VERSION",
    "ChgnetBackboneOracle",
    "ChgnetEformOracle",
    "ChgnetEnergyOracle",
    "ChgnetGraphBuilder",
    "load_chgnet",
]

CHGNET_VERSION = "0.3.0"
_MODELS: dict[str, torch.nn.Module] = {}
_LOCK = threading.Lock()


def load_chgnet(device: str) -> torch.nn.Module:
    """CHGNet 0.3.0 (weights inside the chgnet wheel: nothing is downloaded) on ``device``."""
    with _LOCK:
        if device not in _MODELS:
            from chgnet.model import CHGNet

            model = CHGNet.load(model_name=CHGNET_VERSION, use_device=device, verbose=False)
            model.eval()
            _MODELS[device] = model
        return _MODELS[device]


@dataclass(frozen=True)
class ChgnetGraphBuilder:
    """Structure -> CHGNet ``CrystalGraph``; ``None`` when CHGNet cannot score it."""

    atom_graph_cutoff: float = 6.0
    bond_graph_cutoff: float = 3.0

    def __call__(self, item: Crystal | Structure):  # -> CrystalGraph | None
        from chgnet.graph import CrystalGraphConverter

        structure = as_structure(item)
        # CHGNet's composition model covers Z <= 94; heavier atoms crash its forward pass.
        if len(structure) == 0 or max(site.specie.Z for site in structure) > 94:
            return None
        # Our own converter set to "error": the model's shared one may have been switched
        # to "warn" by a relaxation calculator.
        converter = CrystalGraphConverter(
            atom_graph_cutoff=self.atom_graph_cutoff,
            bond_graph_cutoff=self.bond_graph_cutoff,
            on_isolated_atoms="error",
        )
        try:
            return converter(structure)
        except Exception:  # isolated atoms, degenerate cells, unknown species
            return None


class ChgnetBackboneOracle(Oracle):
    """An oracle that scores CHGNet graphs (``predict_graphs``): the pipeline's GraphCache
    shares each crystal's graph among such oracles, or, where graphs are built on the device
    (:func:`ml.oracles.chgnet_device.device_graphs_enabled`), one torch pass gives every such
    oracle's ``device_field``."""

    device: str
    builder: ChgnetGraphBuilder
    # The field of ml.oracles.chgnet_device's one-pass scores that this oracle reports.
    device_field: str

    def graph_builder(self) -> ChgnetGraphBuilder:
        return self.builder

    def predict_graphs(self, graphs: Sequence[object | None], batch_size: int = 256) -> np.ndarray:
        raise NotImplementedError

    def predict(
        self, structures: Sequence[Crystal | Structure], batch_size: int = 256
    ) -> np.ndarray:
        return self.predict_graphs([self.builder(s) for s in structures], batch_size=batch_size)


class ChgnetEnergyOracle(ChgnetBackboneOracle):
    """CHGNet 0.3.0 energy per atom at the given geometry (eV/atom)."""

    device_field = "energy"

    def __init__(self, info: OracleInfo, device: str):
        self.info = info
        self.device = device
        self.model = load_chgnet(device)
        conv = self.model.graph_converter
        self.builder = ChgnetGraphBuilder(
            float(conv.atom_graph_cutoff), float(conv.bond_graph_cutoff)
        )

    def predict_graphs(self, graphs: Sequence[object | None], batch_size: int = 256) -> np.ndarray:
        """Energy per atom of pre-built graphs (``None`` -> NaN), one forward pass per batch."""

        def score(batch: list) -> np.ndarray:
            with torch.no_grad():
                pred = self.model([g.to(self.device) for g in batch], task="e")
            return pred["e"].reshape(-1).double().cpu().numpy()

        return score_in_batches(graphs, batch_size, score)


class ChgnetEformOracle(ChgnetEnergyOracle):
    """CHGNet-Eform: CHGNet energy per atom minus composition-weighted elemental references."""

    def __init__(self, info: OracleInfo, device: str):
        super().__init__(info, device)
        self.refs = load_elemental_refs()

    def eform_from_energies(
        self, structures: Sequence[Crystal | Structure], energies: np.ndarray
    ) -> np.ndarray:
        return formation_energies(structures, energies, self.refs)

    def predict(
        self, structures: Sequence[Crystal | Structure], batch_size: int = 256
    ) -> np.ndarray:
        energies = super().predict(structures, batch_size=batch_size)
        return self.eform_from_energies(structures, energies)


class ChgnetPotential:
    """Batched CHGNet energy (eV), forces (eV/A) and stress (eV/A^3, ASE sign) for
    :func:`ml.oracles.batch_relax.fire_relax`."""

    _GPA = 1.0 / 160.21766208  # CHGNet reports stress in GPa

    def __init__(self, device: str, pool: object = None):
        self.device = device
        self.model = load_chgnet(device)
        self.builder = ChgnetGraphBuilder()
        self.pool = pool

    def graphs(self, structures: Sequence[Crystal | Structure]) -> list:
        if self.pool is None or len(structures) < 32:
            return [self.builder(s) for s in structures]
        return pool_map(self.pool, self.builder, structures)

    def efs(self, crystals: Sequence[Crystal]) -> list[tuple[float, np.ndarray, np.ndarray] | None]:
        graphs = self.graphs(crystals)
        idx = [i for i, g in enumerate(graphs) if g is not None]
        out: list[tuple[float, np.ndarray, np.ndarray] | None] = [None] * len(crystals)
        if not idx:
            return out
        pred = self.model([graphs[i].to(self.device) for i in idx], task="efs")  # type: ignore[union-attr]
        energy = pred["e"].detach().double().cpu().numpy().reshape(-1)
        stress = [s.detach().double().cpu().numpy() * self._GPA for s in pred["s"]]
        for k, i in enumerate(idx):
            n = crystals[i].num_atoms
            forces = pred["f"][k].detach().double().cpu().numpy()
            out[i] = (float(energy[k]) * n, forces, stress[k])
        return out
