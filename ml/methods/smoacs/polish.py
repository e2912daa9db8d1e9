"""Polish rounds: relax the designs with the job's judge, then optimise again from there.

SMOACS designs meet the request at the geometry it optimised (H200: joint success 0.82 before
relaxation) but not at the geometry the service judges them on: the job's relaxation moves the
median gap of a gap-1.0 run from 1.0 to 1.6 eV and joint success falls to 0.16
(benchmarks/RESULTS.md, SMOACS v2 on the H200). A polish round relaxes every design with the
judge's potential (batched, on the device on a GPU), puts the relaxed cell and positions back
into the population and re-optimises species and geometry for a few cold, discrete steps (no
mutation, fresh Adam state, the best discrete state kept), so the next relaxation, the job's,
starts near a minimum of a crystal that already meets the request there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import replace

from ml.methods.smoacs.engine import FinalResult, SmoacsEngine, StepReport
from ml.methods.smoacs.params import SmoacsParams
from ml.methods.smoacs.population import Population

__all__ = ["polish_engine", "polish_rounds"]


def polish_engine(engine: SmoacsEngine, params: SmoacsParams) -> SmoacsEngine:
    """The main engine's terms and predictors with a short, cold, discrete schedule."""
    cfg = replace(
        engine.config,
        steps=params.polish_steps,
        lr={k: v * params.polish_lr_scale for k, v in engine.config.lr.items()},
        temperature_start=engine.config.temperature_end,
        mutation_steps=(),
        straight_through_start=0,
        keep_best=True,
        logit_noise=0.0,
    )
    return SmoacsEngine(engine.terms, engine.predictors, engine.tables, cfg, engine.report_keys)


def polish_rounds(
    engine: SmoacsEngine,
    pop: Population,
    result: FinalResult,
    params: SmoacsParams,
    relax: Callable[[list], list],
    generator,
    check_cancelled: Callable[[], None] = lambda: None,
) -> Iterator[StepReport | FinalResult]:
    """``params.polish_rounds`` rounds of relax (``relax``: crystals -> RelaxResults) and
    re-optimisation; yields the polish engine's step reports, then the final result."""
    polisher = polish_engine(engine, params)
    for r in range(params.polish_rounds):
        check_cancelled()
        relaxed = relax(result.crystals)
        # A failed relaxation (NaN energy) keeps its designed geometry.
        pop.set_geometry(
            [
                res.crystal if math.isfinite(res.energy_per_atom) else designed
                for res, designed in zip(relaxed, result.crystals, strict=True)
            ]
        )
        pop.init_optimizer_state()
        pop.cand["steps"].zero_()
        for event in polisher.optimize(pop, generator, check_cancelled):
            if isinstance(event, StepReport):
                yield event
            else:
                pop = event
        result = polisher.finalize(pop)
        for meta in result.meta:
            meta["polish_rounds"] = r + 1
    yield result
