"""The runner's over-generation and selection rule, shared with the benchmarks that replay the
runner's path without a database (``benchmarks/lab_suite.py``).

With ``request.oversample`` k > 1 (or a stability limit, which implies at least
:data:`EHULL_OVERSAMPLE`), the method is asked for k x ``num_candidates`` crystals, all are
scored, and the job keeps the best ``num_candidates``: S.U.N. hits (a hit that is metastable,
unique and novel) are stored as soon as they are scored, the rest wait in memory until the
method is done and then fill the places left in ranking order. What waits is never stored
twice: a resumed job regenerates the same stream (same seed) and re-scores only what was not
stored. With k = 1 and no limit the first ``num_candidates`` are kept, as they come.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from ml.pipeline.ranking import is_sun_hit, rank_candidates
from ml.pipeline.scored import EHULL_CONSTRAINT, ScoredCandidate
from ml.request import MAX_CANDIDATES, DesignRequest

# How many candidates the method is asked for per requested one when a stability limit will
# reject some: the job is full when at least a quarter of the method's crystals meet it.
EHULL_OVERSAMPLE = 4

T = TypeVar("T")


@dataclass
class Generation:
    """Counts of this attempt for the summary (a resumed job recounts from its restart)."""

    budget: int  # candidates asked of the method
    n_generated: int = 0  # yielded by the method
    n_evaluated: int = 0  # scored by the pipeline (new ones only)
    n_rejected: int = 0  # dropped for breaking constraints.max_energy_above_hull
    exhausted: bool = False  # the method stopped before the job had enough
    oversample: int = 1  # the factor the method was asked for
    n_not_selected: int = 0  # scored, met every limit, but not among the best returned


def oversample_factor(request: DesignRequest) -> int:
    """Candidates asked of the method per requested one."""
    factor = request.oversample
    if request.constraints.max_energy_above_hull is not None:
        factor = max(factor, EHULL_OVERSAMPLE)
    return factor


def generation_request(request: DesignRequest) -> DesignRequest:
    """The request the method runs: over-generating when the job selects (see module doc)."""
    factor = oversample_factor(request)
    if factor == 1:
        return request
    budget = min(MAX_CANDIDATES, request.num_candidates * factor)
    return request.model_copy(update={"num_candidates": budget})


@dataclass
class Selection:
    """Which scored candidates a job keeps, batch by batch (see module doc)."""

    request: DesignRequest
    kept: int = 0  # stored so far (a resumed job starts from what it has)
    reserve: list[ScoredCandidate] = field(default_factory=list)

    @property
    def factor(self) -> int:
        return oversample_factor(self.request)

    @property
    def remaining(self) -> int:
        return max(self.request.num_candidates - self.kept, 0)

    @property
    def full(self) -> bool:
        return self.remaining == 0

    def admit(self, batch: Sequence[T]) -> list[T]:
        """The part of a method batch worth scoring: without over-generation, only as many as
        there are places left."""
        if self.factor == 1:
            return list(batch[: self.remaining])
        return list(batch) if self.remaining else []

    def take(self, scored: Sequence[ScoredCandidate]) -> tuple[list[ScoredCandidate], int]:
        """(the candidates to store now, how many broke the stability limit). The rest of a
        batch waits in :attr:`reserve` for :meth:`flush`."""
        if self.factor == 1:
            now = list(scored[: self.remaining])
            self.kept += len(now)
            return now, 0
        meeting = list(scored)
        if self.request.constraints.max_energy_above_hull is not None:
            meeting = [
                s
                for s in scored
                if s.flags.get("valid") and EHULL_CONSTRAINT not in s.meta.get("violations", [])
            ]
        ranked = rank_candidates(meeting)
        sure = [s for s in ranked if is_sun_hit(s)]
        now = sure[: self.remaining]
        chosen = {id(s) for s in now}
        self.reserve.extend(s for s in ranked if id(s) not in chosen)
        self.kept += len(now)
        return _unranked(now), len(scored) - len(meeting)

    def flush(self) -> tuple[list[ScoredCandidate], int]:
        """When the method is done: the best waiting candidates for the places left, and how
        many were not selected."""
        ranked = rank_candidates(self.reserve)
        now = ranked[: self.remaining]
        self.kept += len(now)
        self.reserve = []
        return _unranked(now), len(ranked) - len(now)


def _unranked(scored: list[ScoredCandidate]) -> list[ScoredCandidate]:
    for s in scored:
        s.rank = None  # ranks are the job's, set at the end
    return scored
