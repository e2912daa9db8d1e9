"""The service's oracles as a scoring function for SMOACS's judged stages: per prediction key
of the loss terms and reports (``band_gap:pbe``, ``formation_energy``, ``density``, ...), the
oracle a job with this request is judged by, in one batched call per oracle (graphs shared
between the CHGNet-backbone oracles)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from ml.crystal import Crystal
from ml.methods.smoacs.objectives import prediction_key
from ml.request import DesignRequest

__all__ = ["judge_oracles", "judge_scorer"]


def judge_oracles(
    request: DesignRequest, keys: Iterable[str], device: str | None
) -> dict[str, str]:
    """Prediction key -> the name of the oracle that judges it for ``request``."""
    from ml.oracles.registry import default_oracle_name
    from ml.pipeline.oracle_choice import oracle_plan, stability_oracle

    plan = oracle_plan(request, stability_oracle(request, device))
    gap_key = next(
        (prediction_key(o) for o in request.objectives if o.property == "band_gap"), None
    )
    out = {}
    for key in keys:
        if key.startswith("band_gap:"):
            fidelity = key.split(":", 1)[1]
            if key == gap_key:
                out[key] = plan["band_gap"]
            elif fidelity == "pbe":
                out[key] = plan.get("band_gap_pbe", plan["band_gap"])
            else:
                out[key] = default_oracle_name("band_gap", fidelity)
        else:
            out[key] = plan.get(key) or default_oracle_name(key)
    return out


def judge_scorer(
    request: DesignRequest, keys: Iterable[str], device: str | None
) -> Callable[[list[Crystal]], dict[str, np.ndarray]]:
    """crystals -> {key: judged values} (NaN where an oracle cannot score; gaps clipped at 0,
    as the pipeline reports them)."""
    from ml.oracles.registry import get_oracle
    from ml.pipeline.evaluation import GraphCache

    names = judge_oracles(request, keys, device)

    def score(crystals: list[Crystal]) -> dict[str, np.ndarray]:
        if not crystals:
            return {key: np.zeros(0) for key in names}
        graphs = GraphCache(crystals)
        out = {}
        for key, name in names.items():
            values = np.asarray(
                graphs.predict(get_oracle(name, device), range(len(crystals))), dtype=np.float64
            )
            out[key] = np.maximum(values, 0.0) if key.startswith("band_gap") else values
        return out

    return score
