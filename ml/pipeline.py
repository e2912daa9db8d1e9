"""The common candidate pipeline used by every method and by the job runner.

candidates -> structural validity -> constraints -> optional relaxation -> oracle scores
-> evaluation (uniqueness, novelty, energy above hull) -> ranking by the request's objectives.

INTERFACE STUB: the data types and signatures below are fixed (the service codes against
them); the bodies are filled in by the foundation work (issue 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ml.crystal import Crystal
from ml.methods.base import Candidate
from ml.request import DesignRequest


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
    # Stable content hash of the unrelaxed crystal: the key that makes storage idempotent.
    fingerprint: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


def evaluate_candidates(
    candidates: Sequence[Candidate],
    request: DesignRequest,
    *,
    previous: Sequence[Crystal] = (),
    device: str | None = None,
) -> list[ScoredCandidate]:
    """Check, (optionally) relax, score and evaluate one batch of candidates.

    ``previous`` holds the crystals already kept by the same job (uniqueness is judged against
    them and against earlier candidates of this batch). Ranks are not assigned here.
    """
    raise NotImplementedError


def rank_candidates(scored: Sequence[ScoredCandidate]) -> list[ScoredCandidate]:
    """Order by (valid, hit, objective loss, method score) and set ``rank`` from 1."""
    raise NotImplementedError


def summarize(scored: Sequence[ScoredCandidate], request: DesignRequest) -> dict[str, Any]:
    """Counts and rates for a job summary: n_candidates, n_valid, n_unique, n_novel, n_stable,
    n_metastable, hit_rate, sun_rate, msun_rate, best (per objective property)."""
    raise NotImplementedError
