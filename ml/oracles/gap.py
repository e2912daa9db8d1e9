"""The trained band-gap oracle (``gap-chgnet-ft``): :class:`ml.oracles.gap_model.GapNet` with the
shipped checkpoint ``ml/weights/bandgap_chgnet.pt`` (model card beside it).

Graphs are CHGNet graphs (:class:`ml.oracles.chgnet.ChgnetGraphBuilder`), scored ``batch_size``
at a time; a structure CHGNet cannot graph (an isolated atom, Z > 94) is unscored (NaN).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ml.oracles.base import OracleInfo, score_in_batches
from ml.oracles.chgnet import ChgnetBackboneOracle, ChgnetGraphBuilder
from ml.oracles.gap_model import GapNet, load_gap_model

__all__ = ["GAP_CHECKPOINT", "TrainedGapOracle", "load_trained_gap"]

GAP_CHECKPOINT = Path(__file__).resolve().parents[1] / "weights" / "bandgap_chgnet.pt"
_MODELS: dict[str, GapNet] = {}
_LOCK = threading.Lock()


def load_trained_gap(device: str, path: Path = GAP_CHECKPOINT) -> GapNet:
    with _LOCK:
        key = f"{path}:{device}"
        if key not in _MODELS:
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} is missing; train it with python -m ml.training.train_gap"
                )
            _MODELS[key] = load_gap_model(path, device)[0]
        return _MODELS[key]


class TrainedGapOracle(ChgnetBackboneOracle):
    """DFT-PBE band gap (eV) from the fine-tuned CHGNet backbone; never negative."""

    device_field = "band_gap"

    def __init__(self, info: OracleInfo, device: str):
        self.info = info
        self.device = device
        self.model = load_trained_gap(device)
        self.builder = ChgnetGraphBuilder()

    def predict_graphs(self, graphs: Sequence[object | None], batch_size: int = 256) -> np.ndarray:

        def score(batch: list) -> np.ndarray:
            with torch.no_grad():
                pred = self.model.predict([g.to(self.device) for g in batch])
            return pred.double().cpu().numpy()

        return score_in_batches(graphs, batch_size, score)
