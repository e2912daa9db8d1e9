"""The one oracle interface: a named, versioned, batched property predictor."""

from __future__ import annotations

import builtins
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

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
