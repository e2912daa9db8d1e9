"""A cheap pre-screen with the service's own oracles, for methods that can build more crystals
than they pass on: predicted objective losses of unrelaxed crystals, one batched call per
oracle. The pipeline still relaxes, scores and judges whatever the method passes on; this only
decides the order in which built crystals are offered.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ml.crystal import Crystal
from ml.pipeline.evaluation import GraphCache
from ml.pipeline.oracle_choice import _GAP_KEYS, oracle_plan, stability_oracle
from ml.request import DesignRequest, Objective

__all__ = ["predicted_losses", "prescreen_properties"]


def prescreen_properties(request: DesignRequest) -> list[str]:
    """Objective properties an oracle predicts from an unrelaxed crystal (E_hull needs the
    relaxation and the hull, so it is left to the pipeline)."""
    plan = oracle_plan(request)
    props = [o.property for o in request.objectives if o.property != "energy_above_hull"]
    return [p for p in dict.fromkeys(props) if p in plan]


def _prescreen_loss(objective: Objective, value: float) -> float:
    # A target's centre, not just its band: relaxation moves a predicted value, and one near
    # the band's edge leaves it more often than one near the centre.
    if objective.goal == "target" and objective.value is not None:
        return abs(value - objective.value)
    return objective.loss(value)


def predicted_losses(
    crystals: Sequence[Crystal], request: DesignRequest, device: str | None = None
) -> np.ndarray:
    """Weighted objective loss of each crystal as predicted unrelaxed (lower first; inf when
    an oracle cannot score it, 0 for every crystal when no objective can be pre-screened)."""
    from ml.oracles.registry import get_oracle

    out = np.zeros(len(crystals), dtype=np.float64)
    props = prescreen_properties(request)
    if not crystals or not props:
        return out
    plan = oracle_plan(request, stability_oracle(request, device))
    graphs = GraphCache(crystals)
    predicted: dict[str, np.ndarray] = {}
    for prop in props:
        values = graphs.predict(get_oracle(plan[prop], device), range(len(crystals)))
        if prop in _GAP_KEYS:
            values = np.maximum(values, 0.0)  # as the pipeline clips regression gaps
        predicted[prop] = values
    for objective in request.objectives:
        if objective.property not in predicted:
            continue
        values = predicted[objective.property]
        out += [
            objective.weight * _prescreen_loss(objective, float(v)) if v == v else np.inf
            for v in values
        ]
    return out
