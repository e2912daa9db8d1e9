"""Templates -> crystals (issue 13's Wyckoff flow) -> the common pipeline -> MatInvent's filter.

Crystals whose composition is not charge neutral (the request's rule) are dropped first, unrelaxed.
The pipeline (:func:`ml.pipeline.evaluate_candidates`) checks validity and neutrality, relaxes
with the request's stability oracle when ``request.relax``, judges E_hull, uniqueness (against
every valid crystal generated earlier in the job) and novelty (against the reference set),
and scores the properties. A crystal *survives* the filter when it is valid, charge neutral
(the request's rule), unique, novel and its E_hull is at most ``max_energy_above_hull``.
Only survivors count as oracle calls, at most ``remaining`` per batch: the paper counts the
property evaluations its filter lets through. The pipeline computes the cheap ML properties
of every valid crystal in the same batched pass, but nothing about a filtered-out crystal
(nor about a survivor past the budget) reaches the reward, the candidates or the counts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ml.constraints import neutrality_ok
from ml.crystal import Crystal
from ml.evaluation.validity import check_validity
from ml.methods.base import Candidate
from ml.methods.conditional.wyckoff_flow import WyckoffSampleConfig
from ml.methods.conditional.wyckoff_sampler import WyckoffCondition, generate_batches
from ml.methods.matinvent.rl import Outcome, Sample
from ml.pipeline import STABILITY_RELAX_STEPS, ScoredCandidate, evaluate_candidates
from ml.request import DesignRequest

__all__ = ["PipelineEvaluator", "filter_reason"]


def filter_reason(sc: ScoredCandidate, max_energy_above_hull: float) -> str:
    """Why a scored candidate fails MatInvent's filter ("" when it passes)."""
    f = sc.flags
    if not f.get("valid"):
        return "invalid"
    if not f.get("charge_neutral"):
        return "not charge neutral"
    if not f.get("unique"):
        return "duplicate"
    if not f.get("novel"):
        return "not novel"
    e = sc.energy_above_hull
    if e is None or e > max_energy_above_hull:
        return "above hull limit"
    return ""


@dataclass
class PipelineEvaluator:
    """Callable evaluator of :class:`ml.methods.matinvent.rl.MatInventLoop`."""

    request: DesignRequest
    flow_model: torch.nn.Module
    device: str
    max_energy_above_hull: float = 0.1
    flow_steps: int = 100
    guidance: float = 0.0
    targets: dict[str, float] = field(default_factory=dict)  # flow conditioning
    seed: int = 0
    batch_size: int = 512
    relax_steps: int = STABILITY_RELAX_STEPS  # FIRE steps of the filter's relaxation
    previous: list[Crystal] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)

    def crystals(
        self, templates: Sequence[tuple[int, tuple[tuple[str, int], ...]]], it: int
    ) -> list[Crystal]:
        """The flow's crystals for ``templates`` (in order), noise seeded by ``it``."""
        conditions = [
            WyckoffCondition(
                sg,
                orbits,
                formation_energy=self.targets.get("formation_energy"),
                band_gap=self.targets.get("band_gap"),
            )
            for sg, orbits in templates
        ]
        cfg = WyckoffSampleConfig(steps=self.flow_steps, guidance=self.guidance)
        # One seed per iteration: the same request and seed give the same crystals.
        seed = self.seed * 100_003 + it
        with torch.inference_mode():
            return [
                c
                for batch in generate_batches(
                    self.flow_model, conditions, cfg, seed, self.batch_size
                )
                for _, c in batch
            ]

    def __call__(self, samples: Sequence[Sample], it: int, remaining: int) -> list[Outcome]:
        outcomes = [Outcome(reason="no orbit") for _ in samples]
        live = [k for k, s in enumerate(samples) if s.template is not None]
        if not live:
            return outcomes
        t = time.perf_counter()
        crystals = self.crystals([samples[k].template for k in live], it)  # type: ignore[misc]
        self.timings["flow_s"] = self.timings.get("flow_s", 0.0) + time.perf_counter() - t
        # Neutrality depends on the composition only, which relaxation keeps: a crystal that
        # fails it is not relaxed and scored for nothing.
        strict = self.request.constraints.charge_neutral
        neutral = [neutrality_ok(samples[k].formula, requested=strict) for k in live]
        for k, c, ok in zip(live, crystals, neutral, strict=True):
            if not ok:
                outcomes[k].valid = bool(check_validity(c))
                outcomes[k].reason = "not charge neutral"
                self._count(outcomes[k].reason)
        live = [k for k, ok in zip(live, neutral, strict=True) if ok]
        crystals = [c for c, ok in zip(crystals, neutral, strict=True) if ok]
        if not live:
            return outcomes
        cands = [
            Candidate(crystal=c, meta=_template_meta(samples[k], it))
            for k, c in zip(live, crystals, strict=True)
        ]
        scored = evaluate_candidates(
            cands,
            self.request,
            previous=self.previous,
            device=self.device,
            timings=self.timings,
            relax_steps=self.relax_steps,
        )
        for k, sc in zip(live, scored, strict=True):
            reason = filter_reason(sc, self.max_energy_above_hull)
            o = outcomes[k]
            o.valid = bool(sc.flags.get("valid"))
            o.judged = o.valid  # its uniqueness was judged
            o.unique = o.valid and bool(sc.flags.get("unique"))
            o.survived = not reason
            if reason:
                o.reason = reason
            elif remaining > 0:
                remaining -= 1
                o.reason = ""
                o.scored = True
                o.values = {key: s.value for key, s in sc.scores.items()}
                o.hit = bool(sc.flags.get("hit"))
                o.objective_loss = sc.objective_loss
                o.payload = sc
            else:
                o.reason = "budget spent"
            self._count(o.reason or "scored")
            if o.valid:
                self.previous.append(sc.relaxed or sc.crystal)
        return outcomes

    def _count(self, reason: str) -> None:
        self.reasons[reason] = self.reasons.get(reason, 0) + 1


def _template_meta(sample: Sample, it: int) -> dict[str, Any]:
    assert sample.template is not None
    sg, orbits = sample.template
    return {
        "template_space_group": sg,
        "wyckoff": [f"{letter}:{z}" for letter, z in orbits],
        "template_formula": sample.formula,
        "iteration": it,
    }
