"""Polish rounds: relax the designs with the job's judge, then optimise again from there.

SMOACS designs meet the request at the geometry it optimised (H200: joint success 0.82 before
relaxation) but not at the geometry the service judges them on: the job's relaxation moves the
median gap of a gap-1.0 run from 1.0 to 1.6 eV and joint success falls to 0.16
(benchmarks/RESULTS.md, SMOACS v2 on the H200). A polish round relaxes every design with the
judge's potential (batched, on the device on a GPU), puts the relaxed cell and positions back
into the population, scores it there (the predictors are the service's judges) and re-optimises
species and geometry for a few cold, discrete steps (no mutation, fresh Adam state, the best
discrete state kept). After the last round the designs are relaxed and scored once more, and
each candidate returns the best of its relaxed designs: a crystal at the judge's minimum, so
the job's own relaxation leaves it where it was scored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import replace

import torch

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
    generator: torch.Generator,
    check_cancelled: Callable[[], None] = lambda: None,
) -> Iterator[StepReport | FinalResult]:
    """``params.polish_rounds`` rounds of relax (``relax``: crystals -> RelaxResults), score
    and re-optimise, then a last relax and score; yields the polish engine's step reports,
    then per candidate the best of its relaxed designs (met first, then the lowest loss), so
    what is returned sits at the judge's minimum with the predictors' values there."""
    polisher = polish_engine(engine, params)
    best: FinalResult | None = None
    for r in range(params.polish_rounds + 1):
        check_cancelled()
        relaxed = relax(result.crystals)
        # A failed relaxation (NaN energy) keeps its designed geometry.
        pop.set_geometry(
            [
                res.crystal if math.isfinite(res.energy_per_atom) else designed
                for res, designed in zip(relaxed, result.crystals, strict=True)
            ]
        )
        scored = polisher.finalize(pop)
        scored.meta = [{**m, "polish_round": r} for m in scored.meta]
        best = scored if best is None else _better(best, scored)
        if r == params.polish_rounds:
            break
        pop.init_optimizer_state()
        pop.cand["steps"].zero_()
        for event in polisher.optimize(pop, generator, check_cancelled):
            if isinstance(event, StepReport):
                yield event
            else:
                pop = event
        result = polisher.finalize(pop)
    assert best is not None
    yield best


def _better(a: FinalResult, b: FinalResult) -> FinalResult:
    """Per candidate, ``b``'s entry where it meets the request and ``a``'s does not, or where
    both do or both do not and ``b``'s loss is lower."""
    take = (b.met & ~a.met) | ((b.met == a.met) & (b.loss < a.loss))
    pick = take.cpu().tolist()

    def per(xs: list, ys: list) -> list:
        return [y if t else x for x, y, t in zip(xs, ys, pick, strict=True)]

    def where(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.where(take.to(x.device), y, x)

    return FinalResult(
        crystals=per(a.crystals, b.crystals),
        predictions={k: where(v, b.predictions[k]) for k, v in a.predictions.items()},
        loss=where(a.loss, b.loss),
        met=where(a.met, b.met),
        soft_loss=where(a.soft_loss, b.soft_loss),
        site_oxidation=per(a.site_oxidation, b.site_oxidation),
        meta=per(a.meta, b.meta),
    )
