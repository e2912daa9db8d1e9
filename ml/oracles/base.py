"""The one oracle interface: a named, versioned, batched property predictor."""

from __future__ import annotations

import builtins
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pymatgen.core import Structure

from ml.crystal import Crystal


@dataclass(frozen=True)
class OracleInfo:
    """What the service reports about an oracle, available without loading weights."""

    name: str
    property: str
    unit: str
    model: str
    version: str
    reported_error: str | None = None
    description: str = ""


class Oracle(ABC):
    """A property predictor.

    ``predict`` takes many structures and scores them in batched forward passes (many graphs in
    one pass, not a Python loop of single predictions). It returns float64 values, one per
    input, with NaN for a structure the model cannot score: an unscorable candidate is never an
    exception.
    """

    info: OracleInfo

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def property(self) -> str:
        return self.info.property

    @builtins.property
    def unit(self) -> str:
        return self.info.unit

    @builtins.property
    def version(self) -> str:
        return self.info.version

    @abstractmethod
    def predict(
        self, structures: Sequence[Crystal | Structure], batch_size: int = 256
    ) -> np.ndarray: ...

    def predict_one(self, structure: Crystal | Structure) -> float:
        return float(self.predict([structure])[0])


def score_in_batches(
    graphs: Sequence[object | None],
    batch_size: int,
    score: Callable[[list[Any]], np.ndarray],
) -> np.ndarray:
    """``score`` (one forward pass over a list of graphs -> one value each) applied to the
    graphs ``batch_size`` at a time; a ``None`` graph (unscorable structure) gives NaN."""
    out = np.full(len(graphs), np.nan, dtype=np.float64)
    idx = [i for i, g in enumerate(graphs) if g is not None]
    for start in range(0, len(idx), batch_size):
        chunk = idx[start : start + batch_size]
        out[chunk] = score([graphs[i] for i in chunk])
    return out


def bounded_chunks(
    idx: Sequence[int], sizes: Sequence[int], max_size: int, max_items: int | None = None
) -> list[list[int]]:
    """Consecutive runs of ``idx`` whose ``sizes`` (sites, edges: what bounds a forward pass's
    memory) sum to at most ``max_size``, with at most ``max_items`` each; a single larger item
    still gets its own run."""
    chunks: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i, size in zip(idx, sizes, strict=True):
        full = max_items is not None and len(current) >= max_items
        if current and (full or total + size > max_size):
            chunks.append(current)
            current, total = [], 0
        current.append(i)
        total += size
    if current:
        chunks.append(current)
    return chunks
