"""The ``matinvent`` design method: RL fine-tuning of this project's generator toward the
request, counted in oracle calls.

The policy writes crystal templates (space group + Wyckoff orbits with elements,
:mod:`.tokens`); issue 13's Wyckoff flow places the free parameters and the lattice; the common
pipeline filters and scores (:mod:`.evaluate`); :mod:`.rl` turns the request's objectives into
rewards (:mod:`ml.methods.rewards`) and fine-tunes a per-job copy of the pretrained policy,
anchored to the frozen prior. Candidates are the unique hits found within the oracle-call
budget, best first within each iteration; the fine-tuned weights are discarded with the job.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator

from ml.methods.base import (
    Candidate,
    DesignMethod,
    MethodContext,
    MethodEvent,
    MethodParams,
    Progress,
    RequestError,
)
from ml.methods.conditional.checkpoint import find_weights, load_wyckoff_release
from ml.methods.conditional.method import _target as conditioning_target
from ml.methods.matinvent.checkpoint import find_prior, load_prior
from ml.methods.matinvent.evaluate import PipelineEvaluator
from ml.methods.matinvent.policy import TemplatePolicy
from ml.methods.matinvent.rl import MatInventLoop, Outcome, RLConfig
from ml.methods.matinvent.tokens import GrammarLimits, limits_for
from ml.methods.rewards import request_reward
from ml.pipeline import STABILITY_RELAX_STEPS, ScoredCandidate
from ml.request import DesignRequest

__all__ = ["MatInventMethod", "MatInventParams"]

# Defaults of the RL loop (one place: the params below take theirs from it).
_RL = RLConfig()
# The structure generator is conditioned on these properties when asked to.
FLOW_PROPERTIES = ("formation_energy", "band_gap")


class MatInventParams(MethodParams):
    iterations: int = Field(
        default=_RL.iterations,
        ge=1,
        le=2000,
        description="most RL iterations (the budget may end it first)",
    )
    batch_size: int = Field(
        default=_RL.batch_size, ge=2, le=2048, description="templates sampled per iteration"
    )
    oracle_call_budget: int = Field(
        default=_RL.oracle_call_budget,
        ge=1,
        le=200_000,
        description="property evaluations allowed: one per crystal that passes the filter "
        "(valid, charge neutral, unique, novel, E_hull <= max_energy_above_hull)",
    )
    learning_rate: float = Field(
        default=_RL.learning_rate, gt=0.0, le=0.1, description="Adam step size"
    )
    kl_weight: float = Field(
        default=_RL.kl_weight,
        ge=0.0,
        le=100.0,
        description="beta: weight of the reward-weighted KL(agent || prior) per template",
    )
    top_fraction: float = Field(
        default=_RL.top_fraction,
        gt=0.0,
        le=1.0,
        description="part of each batch, by reward, learned from",
    )
    replay_size: int = Field(
        default=_RL.replay_size,
        ge=0,
        le=10_000,
        description="best templates kept for experience replay",
    )
    replay_samples: int = Field(
        default=_RL.replay_samples,
        ge=0,
        le=1024,
        description="replayed templates added to each update",
    )
    replay_cutoff: float = Field(
        default=_RL.replay_cutoff,
        ge=0.0,
        le=1.0,
        description="least reward a template needs to be replayed",
    )
    updates_per_iteration: int = Field(
        default=_RL.updates_per_iteration, ge=1, le=32, description="gradient steps per iteration"
    )
    diversity_tolerance: int = Field(
        default=_RL.diversity_tolerance,
        ge=0,
        le=10_000,
        description="earlier scored crystals of one composition before its reward is lowered",
    )
    diversity_buffer: int = Field(
        default=_RL.diversity_buffer,
        ge=1,
        le=10_001,
        description="earlier scored crystals of one composition from which its reward is 0 "
        "(linear in between; must exceed diversity_tolerance)",
    )
    reward_combine: Literal["mean", "min", "product"] = Field(
        default="mean",
        description="how several objectives' rewards combine: weighted mean, minimum, or "
        "weighted geometric mean",
    )
    max_energy_above_hull: float = Field(
        default=0.1,
        ge=0.0,
        le=10.0,
        description="filter: largest E_hull (eV/atom, the request's stability oracle, after "
        "relaxation when relax) of a crystal that is scored",
    )
    relax_steps: int = Field(
        default=STABILITY_RELAX_STEPS,
        ge=1,
        le=1000,
        description="with relax: FIRE steps at most of the filter's relaxation of every "
        "generated crystal (the job's own evaluation of the hits keeps the pipeline's "
        f"{STABILITY_RELAX_STEPS}); fewer screen faster and let fewer crystals through",
    )
    flow_steps: int = Field(
        default=100, ge=2, le=1000, description="Euler steps of the Wyckoff flow"
    )
    guidance: float = Field(
        default=0.0, ge=0.0, le=10.0, description="classifier-free guidance of the Wyckoff flow"
    )
    condition_generator: bool = Field(
        default=False,
        description="condition the Wyckoff flow on the request's formation-energy / band-gap "
        "objectives (off: the generator is unconditional, as the paper's)",
    )
    temperature: float = Field(
        default=_RL.temperature, gt=0.0, le=5.0, description="policy sampling temperature"
    )
    fine_tune: bool = Field(
        default=True,
        description="false: sample the frozen prior with the same filter and budget (the "
        "paper's baseline)",
    )

    @model_validator(mode="after")
    def _buffer_above_tolerance(self) -> MatInventParams:
        if self.diversity_buffer <= self.diversity_tolerance:
            raise ValueError("diversity_buffer must exceed diversity_tolerance")
        return self

    def rl_config(self) -> RLConfig:
        return RLConfig(
            batch_size=self.batch_size,
            iterations=self.iterations,
            oracle_call_budget=self.oracle_call_budget,
            learning_rate=self.learning_rate,
            kl_weight=self.kl_weight,
            top_fraction=self.top_fraction,
            replay_size=self.replay_size,
            replay_samples=self.replay_samples,
            replay_cutoff=self.replay_cutoff,
            updates_per_iteration=self.updates_per_iteration,
            diversity_tolerance=self.diversity_tolerance,
            diversity_buffer=self.diversity_buffer,
            temperature=self.temperature,
            learn=self.fine_tune,
        )


def _prior_path() -> Path:
    return find_prior()


def _flow_path() -> Path:
    return find_weights("wyckoff")


@cache
def _load_policy(device: str) -> tuple[TemplatePolicy, dict[str, Any]]:
    return load_prior(_prior_path(), device)


@cache
def _load_flow(device: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    model, _stats, info = load_wyckoff_release(_flow_path(), device)
    return model, info


def _missing_weights() -> list[str]:
    out = []
    for what, find in (("the pretrained policy", _prior_path), ("the Wyckoff flow", _flow_path)):
        try:
            find()
        except FileNotFoundError as exc:
            out.append(f"{what}: {exc}")
    return out


def grammar_limits(request: DesignRequest, policy: TemplatePolicy) -> GrammarLimits:
    cons = request.constraints
    return limits_for(
        max_atoms=min(cons.max_atoms, policy.config.max_atoms),
        max_orbits=policy.config.max_orbits,
        allowed=cons.elements.allowed,
        excluded=cons.elements.excluded,
        required=cons.elements.required,
        space_groups=cons.space_groups,
    )


def _candidate(outcome: Outcome, reward: float) -> Candidate:
    sc = outcome.payload
    assert isinstance(sc, ScoredCandidate)
    # The crystal the method judged: relaxed when the request relaxes, so the job's own
    # evaluation starts at the minimum and ends where the method's did.
    return Candidate(
        crystal=sc.relaxed or sc.crystal,
        predicted={k: v for k, v in outcome.values.items() if v is not None},
        method_score=round(1.0 - reward, 6),
        meta={
            **sc.meta,
            "reward": round(reward, 6),
            "relaxed_by_method": sc.relaxed is not None,
            "energy_above_hull_method": sc.energy_above_hull,
        },
    )


class MatInventMethod(DesignMethod):
    name: ClassVar[str] = "matinvent"
    version: ClassVar[str] = "0.1.0"
    description: ClassVar[str] = (
        "MatInvent: reinforcement-learning fine-tuning of a pretrained template policy "
        "(space group + Wyckoff orbits) feeding the Wyckoff flow generator, with a KL anchor "
        "to the prior, experience replay and a composition diversity filter; returns the "
        "unique hits found within an oracle-call budget (the job ends at the budget or at "
        "num_candidates hits, whichever comes first), then, when hits are fewer, the scored "
        "crystals closest to the request."
    )
    Params: ClassVar[type[MethodParams]] = MatInventParams
    # Each shard would repeat the whole RL run to reach its slice of the stream.
    shardable: ClassVar[bool] = False

    def validate(self, request: DesignRequest) -> MatInventParams:
        params = MatInventParams.model_validate(request.params)
        missing = self.missing_weights()
        if missing:
            raise RequestError("method", "matinvent is not installed: " + "; ".join(missing))
        if not request.objectives:
            raise RequestError("objectives", "matinvent needs at least one objective to reward")
        cons = request.constraints
        if cons.composition is not None:
            raise RequestError(
                "constraints.composition",
                "matinvent designs compositions; for a fixed one use conditional or substitution",
            )
        if cons.templates:
            raise RequestError("constraints.templates", "matinvent does not start from templates")
        return params

    def missing_weights(self) -> list[str]:
        return _missing_weights()

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        models: dict[str, Any] = {}
        for what, find in (("prior", _prior_path), ("structure_generator", _flow_path)):
            try:
                models[what] = {"file": find().name, "available": True}
            except FileNotFoundError:
                models[what] = {"file": None, "available": False}
        info["models"] = models
        return info

    def run(
        self, request: DesignRequest, params: MethodParams, ctx: MethodContext
    ) -> Iterator[MethodEvent]:
        assert isinstance(params, MatInventParams)
        yield Progress("load", 0, 1)
        prior, prior_info = _load_policy(ctx.device)
        flow, flow_info = _load_flow(ctx.device)
        ctx.check_cancelled()
        targets: dict[str, float] = {}
        if params.condition_generator:
            for o in request.objectives:
                if o.property in FLOW_PROPERTIES and o.property not in targets:
                    targets[o.property] = conditioning_target(o, flow)  # type: ignore[arg-type]
        limit = request.constraints.max_energy_above_hull
        max_ehull = (
            params.max_energy_above_hull
            if limit is None
            else min(limit, params.max_energy_above_hull)
        )
        evaluator = PipelineEvaluator(
            request=request,
            flow_model=flow,
            device=ctx.device,
            max_energy_above_hull=max_ehull,
            flow_steps=params.flow_steps,
            relax_steps=params.relax_steps,
            guidance=params.guidance,
            targets=targets,
            seed=request.seed,
        )
        objectives = request.objectives
        loop = MatInventLoop(
            prior,
            grammar_limits(request, prior),
            params.rl_config(),
            lambda values: request_reward(objectives, values, params.reward_combine),
            evaluator,
            seed=request.seed,
        )
        yield Progress("rl", 0, params.iterations, detail={"oracle_calls": 0, "unique_hits": 0})
        returned = 0
        try:
            for stats, hits in loop.iterations():
                detail = {**stats.as_dict(), "oracle_call_budget": params.oracle_call_budget}
                yield Progress(
                    "rl", stats.iteration, params.iterations, stats.best_objective_loss, detail
                )
                if hits:
                    returned += len(hits)
                    yield [_candidate(o, r) for o, r in hits]
                ctx.check_cancelled()
            # Too few hits for the request: the best crystals that passed the filter (valid,
            # neutral, unique, novel, near the hull) but missed the target fill the places
            # left, closest first, so a lab still gets ranked near misses, flagged hit false.
            fill = loop.best_misses(request.num_candidates - returned)
            if fill:
                yield [_candidate(o, r) for o, r in fill]
        finally:
            # Also when the job stops early (enough candidates, cancelled): the summary says
            # what was spent up to then.
            ctx.summary.update(
                {
                    **loop.summary(),
                    "filter": {
                        "max_energy_above_hull": max_ehull,
                        "relaxed": request.relax,
                        "relax_steps": params.relax_steps if request.relax else None,
                        "outcomes": dict(evaluator.reasons),
                        "timings": {k: round(v, 2) for k, v in evaluator.timings.items()},
                    },
                    "generator_conditioning": targets or None,
                    "prior": {
                        k: prior_info.get(k)
                        for k in ("templates", "steps", "held_out_nll_per_token")
                    },
                    "structure_generator": {k: flow_info.get(k) for k in ("structures", "steps")},
                }
            )
