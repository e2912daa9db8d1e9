"""MEGNet oracles (matgl 4.x, PyG backend) with truly batched inference.

Each structure becomes one matgl graph (same converter and float32 geometry as
``MEGNet.predict_structure``); many graphs are collated into one torch_geometric ``Batch`` and
scored in a single forward pass. A structure with an atom that has no neighbour within the
cutoff (MEGNet gives NaN for it) or an element outside the model's vocabulary is unscored
(NaN) and kept out of the batch, so it cannot disturb the others.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pymatgen.core import Structure

from ml.crystal import Crystal, as_structure
from ml.oracles.base import Oracle, OracleInfo

__all__ = ["MegnetGraphBuilder", "MegnetOracle", "load_megnet"]

_MODELS: dict[tuple[str, str], torch.nn.Module] = {}
_LOCK = threading.Lock()


def _model_path(model_dir: str) -> Path:
    from ml.settings import get_ml_settings

    path = Path(get_ml_settings().models_dir) / "matgl" / model_dir
    if not (path / "model.pt").is_file():
        raise FileNotFoundError(
            f"MEGNet weights not found at {path}; set MATDESIGN_MODELS_DIR to the folder "
            "that holds matgl/<model name>/"
        )
    return path


def load_megnet(model_dir: str, device: str) -> torch.nn.Module:
    """The matgl model in ``MATDESIGN_MODELS_DIR/matgl/<model_dir>`` on ``device`` (cached)."""
    key = (model_dir, device)
    with _LOCK:
        if key not in _MODELS:
            import matgl
            from matgl.data.transformer import Normalizer

            # The checkpoints pickle their target Normalizer; torch refuses it unless allowed.
            torch.serialization.add_safe_globals([Normalizer])
            model = matgl.load_model(_model_path(model_dir))
            model.eval()
            _MODELS[key] = model.to(device)
        return _MODELS[key]


@contextlib.contextmanager
def _full_fp32_cudnn() -> Iterator[None]:
    """cuDNN runs the Set2Set LSTM in TF32 by default on Ampere and newer GPUs, which moved
    H100 band gaps by up to 0.017 eV between batch sizes; keep it in full float32."""
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = previous


@dataclass(frozen=True)
class MegnetGraphBuilder:
    """Structure -> matgl graph ready for ``forward``; picklable for DataLoader workers.

    Returns ``None`` for a structure MEGNet cannot score.
    """

    element_types: tuple[str, ...]
    cutoff: float

    def __call__(self, item: Crystal | Structure):  # -> torch_geometric Data | None
        from matgl.ext.pymatgen import Structure2Graph

        structure = as_structure(item)
        if any(el.symbol not in self.element_types for el in structure.composition.elements):
            return None
        try:
            graph, lat, _ = Structure2Graph(self.element_types, self.cutoff).get_graph(structure)
        except Exception:  # neighbour search on a degenerate cell
            return None
        degree = torch.bincount(graph.edge_index[0], minlength=len(structure))
        if len(structure) == 0 or bool((degree == 0).any()):
            return None
        # Same float32 operations as MEGNet.predict_structure, done per graph before collating.
        graph.pbc_offshift = torch.matmul(graph.pbc_offset, lat[0])
        graph.pos = graph.frac_coords @ lat[0]
        return graph


class MegnetOracle(Oracle):
    """A matgl MEGNet checkpoint; ``state`` is the fidelity index of a multi-fidelity model."""

    def __init__(self, info: OracleInfo, model_dir: str, device: str, state: int | None = None):
        self.info = info
        self.device = device
        self.state = state
        self.model = load_megnet(model_dir, device)
        inner = self.model.model
        self.builder = MegnetGraphBuilder(tuple(inner.element_types), float(inner.cutoff))

    def graph_builder(self) -> MegnetGraphBuilder:
        return self.builder

    def _state_attr(self, n: int) -> torch.Tensor:
        if self.state is None:
            # Single-fidelity checkpoints were trained with a zero two-component state.
            return torch.zeros((n, 2), dtype=torch.float32, device=self.device)
        return torch.full((n,), self.state, dtype=torch.long, device=self.device)

    def predict_graphs(self, graphs: Sequence[object | None], batch_size: int = 256) -> np.ndarray:
        """Score pre-built graphs (``None`` -> NaN), ``batch_size`` graphs per forward pass."""
        from torch_geometric.data import Batch

        out = np.full(len(graphs), np.nan, dtype=np.float64)
        idx = [i for i, g in enumerate(graphs) if g is not None]
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            batch = Batch.from_data_list([graphs[i] for i in chunk]).to(self.device)
            with torch.no_grad(), _full_fp32_cudnn():
                pred = self.model(g=batch, state_attr=self._state_attr(len(chunk)))
            out[chunk] = pred.reshape(-1).double().cpu().numpy()
        return out

    def predict(
        self, structures: Sequence[Crystal | Structure], batch_size: int = 256
    ) -> np.ndarray:
        return self.predict_graphs([self.builder(s) for s in structures], batch_size=batch_size)
