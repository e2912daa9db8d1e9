"""What the pipeline hands back: scored candidates, their flags and the content fingerprint
(with a bounded cache of prepared primitive cells keyed by it)."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ml.crystal import Crystal
from ml.evaluation.uniqueness import PreparedStructure
from ml.methods.base import Candidate


@dataclass
class OracleScore:
    value: float | None  # None when the oracle could not score the structure
    unit: str
    oracle: str
    version: str


@dataclass
class ScoredCandidate:
    crystal: Crystal
    relaxed: Crystal | None
    formula: str
    n_atoms: int
    space_group: int | None
    # property name (e.g. "formation_energy") -> score by the default oracle for it
    scores: dict[str, OracleScore]
    # valid, charge_neutral, unique, novel, stable, metastable, hit
    flags: dict[str, bool]
    energy_above_hull: float | None
    method_score: float | None
    predicted: dict[str, float] = field(default_factory=dict)
    objective_loss: float = float("inf")
    rank: int | None = None
    # candidate_identity: the method's key for the candidate, else a stable content hash of
    # the unrelaxed crystal; what makes storage idempotent.
    fingerprint: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


STABILITY_RELAX_FMAX = 0.1  # eV/A, evaluation.md
STABILITY_RELAX_STEPS = 300
FINGERPRINT_DECIMALS = 6
# The violation name of the stability constraint (the request field).
EHULL_CONSTRAINT = "max_energy_above_hull"
_FLAG_NAMES = (
    "valid",
    "charge_neutral",
    "unique",
    "novel",
    "stable",
    "metastable",
    "hit",
    "constraints",
)
# Primitive cells of crystals already seen (``previous`` recurs batch after batch), by
# fingerprint; bounded so a long job cannot grow it without limit.
_PREPARED: OrderedDict[str, PreparedStructure | None] = OrderedDict()
_PREPARED_MAX = 50_000
_LOCK = threading.Lock()


def fingerprint(crystal: Crystal) -> str:
    """SHA-256 of the lattice (Å) and wrapped fractional coordinates rounded to 1e-6, and the
    atomic numbers: equal for the same cell and site order, whatever the float noise."""
    lat = np.round(crystal.lattice, FINGERPRINT_DECIMALS) + 0.0  # +0.0 turns -0.0 into 0.0
    frac = np.round(np.mod(crystal.frac_coords, 1.0), FINGERPRINT_DECIMALS)
    frac = np.mod(frac, 1.0) + 0.0  # 0.9999999 rounds to 1.0: wrap it to 0.0
    h = hashlib.sha256(b"matdesign-crystal-v1")
    h.update(np.ascontiguousarray(lat, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(frac, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(crystal.numbers, dtype=np.int64).tobytes())
    return h.hexdigest()


def candidate_identity(candidate: Candidate) -> str:
    """What a job stores a candidate under, once: its method's key, else its content."""
    return f"key:{candidate.key}" if candidate.key else fingerprint(candidate.crystal)


def _remember(key: str, prepared: PreparedStructure | None) -> None:
    with _LOCK:
        _PREPARED[key] = prepared
        while len(_PREPARED) > _PREPARED_MAX:
            _PREPARED.popitem(last=False)


def remember_prepared(crystal: Crystal, prepared: PreparedStructure) -> None:
    """Cache a prepared form computed elsewhere (a pool process) under the crystal's key."""
    _remember(fingerprint(crystal), prepared)


def _prepared(crystal: Crystal) -> PreparedStructure | None:
    """Primitive cell for matching, cached by fingerprint; None for a crystal pymatgen cannot
    even build (e.g. an invalid one passed in ``previous``)."""
    key = fingerprint(crystal)
    with _LOCK:
        if key in _PREPARED:
            _PREPARED.move_to_end(key)
            return _PREPARED[key]
    try:
        prepared: PreparedStructure | None = PreparedStructure(crystal)
    except Exception:
        prepared = None
    _remember(key, prepared)
    return prepared
