"""The runner's over-generation rule, shared with the benchmarks that replay the runner's
path without a database (``benchmarks/lab_suite.py``)."""

from __future__ import annotations

from dataclasses import dataclass

from ml.request import MAX_CANDIDATES, DesignRequest

# How many candidates the method is asked for per requested one when a stability limit will
# reject some: the job is full when at least a quarter of the method's crystals meet it.
EHULL_OVERSAMPLE = 4


@dataclass
class Generation:
    """Counts of this attempt for the summary (a resumed job recounts from its restart)."""

    budget: int  # candidates asked of the method
    n_generated: int = 0  # yielded by the method
    n_evaluated: int = 0  # scored by the pipeline (new ones only)
    n_rejected: int = 0  # dropped for breaking constraints.max_energy_above_hull
    exhausted: bool = False  # the method stopped before the job had enough


def generation_request(request: DesignRequest) -> DesignRequest:
    """The request the method runs: over-generating when a stability limit will reject."""
    if request.constraints.max_energy_above_hull is None:
        return request
    budget = min(MAX_CANDIDATES, request.num_candidates * EHULL_OVERSAMPLE)
    return request.model_copy(update={"num_candidates": budget})
