"""The ``smoacs`` design method: request -> templates -> batched gradient optimisation through
differentiable predictors (CHGNet by default, MEGNet by name) -> argmax structures with exact
charge neutrality."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Generator, Iterator
from typing import ClassVar, TypeVar

import numpy as np
import torch

from ml.methods.base import (
    Candidate,
    DesignMethod,
    MethodContext,
    MethodEvent,
    MethodParams,
    Progress,
    RequestError,
)
from ml.methods.smoacs.engine import (
    CHGNET_KEYS,
    EngineConfig,
    FinalResult,
    Predictors,
    SmoacsEngine,
    StepReport,
)
from ml.methods.smoacs.judges import judge_scorer
from ml.methods.smoacs.objectives import (
    DIFFERENTIABLE_PROPERTIES,
    prediction_key,
    terms_from_request,
)
from ml.methods.smoacs.params import SmoacsParams
from ml.methods.smoacs.polish import polish_rounds
from ml.methods.smoacs.population import Population, reused_templates
from ml.methods.smoacs.predictors import EFORM_MODEL, GAP_MODEL, load_soft_megnet
from ml.methods.smoacs.refine import RefineReport, refine
from ml.methods.smoacs.soft_chgnet import load_soft_chgnet
from ml.methods.smoacs.sources import (
    allowed_elements,
    build_tables,
    build_templates,
    feasible_perovskite_patterns,
    resolve_source,
    user_templates,
)
from ml.request import DesignRequest

__all__ = ["SmoacsMethod"]

_GAP_STATES = {"pbe": 0, "gllb_sc": 1, "hse": 2, "scan": 3}


T = TypeVar("T")
# Deterministic kernels where CUDA has them (warn_only: scatter-adds have none), so a re-run
# with the same seed regenerates the same designs as closely as the device allows.
DETERMINISTIC = True
# Deterministic mode also fills every new tensor with NaN by default, a debugging aid that makes
# no correct computation more reproducible: thousands of extra kernels per optimisation step.
FILL_UNINITIALIZED_MEMORY = False


@contextlib.contextmanager
def deterministic_kernels() -> Iterator[None]:
    import torch.utils.deterministic as det

    was, fill = torch.are_deterministic_algorithms_enabled(), det.fill_uninitialized_memory
    torch.use_deterministic_algorithms(DETERMINISTIC, warn_only=True)
    det.fill_uninitialized_memory = FILL_UNINITIALIZED_MEMORY
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)
        det.fill_uninitialized_memory = fill


def deterministic_between_yields(events: Generator[T, None, None]) -> Iterator[T]:
    """``events`` with deterministic kernels while it computes, not while it waits at a yield:
    the job relaxes and scores each yielded batch meanwhile, and deterministic (sort-based)
    scatters and NaN-filled buffers would slow those down for nothing."""
    try:
        while True:
            with deterministic_kernels():
                try:
                    event = next(events)
                except StopIteration:
                    return
            yield event
    finally:
        events.close()


class SmoacsMethod(DesignMethod):
    name: ClassVar[str] = "smoacs"
    version: ClassVar[str] = "0.1.0"
    description: ClassVar[str] = (
        "SMOACS: gradient-based optimisation of lattice, coordinates and soft element "
        "distributions through differentiable predictors (default: the service's CHGNet "
        "energy and band-gap models with a stability term, then element swaps judged by the "
        "service's oracles after relaxation with the job's judge; MEGNet by "
        "params.predictor), with oxidation-number masks that keep charge neutrality "
        "exact; data-set, user or perovskite templates."
    )
    Params: ClassVar[type[MethodParams]] = SmoacsParams

    # ---- validation -----------------------------------------------------------------------
    def validate(self, request: DesignRequest) -> SmoacsParams:
        params = SmoacsParams.model_validate(request.params)
        cons = request.constraints
        if not request.objectives:
            raise RequestError("objectives", "smoacs needs at least one objective to optimise")
        perovskite = resolve_source(request, params) == "perovskite"
        for i, obj in enumerate(request.objectives):
            if obj.property not in DIFFERENTIABLE_PROPERTIES:
                raise RequestError(
                    f"objectives.{i}.property",
                    f"smoacs cannot optimise {obj.property!r}; it supports "
                    f"{list(DIFFERENTIABLE_PROPERTIES)}",
                )
            if obj.property == "tolerance_factor" and not perovskite:
                raise RequestError(
                    f"objectives.{i}.property",
                    "tolerance_factor needs crystal_family 'perovskite'",
                )
        if cons.composition is not None:
            raise RequestError(
                "constraints.composition", "smoacs designs compositions; a fixed one is unsupported"
            )
        if cons.space_groups is not None:
            raise RequestError("constraints.space_groups", "smoacs does not constrain space groups")
        if cons.elements.required:
            raise RequestError(
                "constraints.elements.required", "smoacs cannot force elements to appear"
            )
        if not allowed_elements(request).any():
            raise RequestError("constraints.elements", "no permitted element is in MEGNet's set")
        tables = build_tables(request, "cpu")
        if params.masks and not tables.allowed[0, :-1].any():
            raise RequestError(
                "constraints.elements", "no permitted element has a common oxidation state"
            )
        if params.template_source == "user" and not cons.templates:
            raise RequestError(
                "constraints.templates", "template_source 'user' needs template CIFs"
            )
        if perovskite:
            sites = 5 * params.supercell**3
            if sites > cons.max_atoms:
                raise RequestError(
                    "params.supercell",
                    f"a {params.supercell}^3 perovskite supercell has {sites} sites, more than "
                    f"constraints.max_atoms {cons.max_atoms}",
                )
            if not params.masks:
                raise RequestError("params.masks", "perovskite mode needs oxidation masks")
            if not feasible_perovskite_patterns(tables):
                raise RequestError(
                    "constraints.elements",
                    "the permitted elements fill no (A, B, X) perovskite oxidation pattern",
                )
        elif resolve_source(request, params) == "user":
            user_templates(request, params, tables)  # raises for an unusable CIF
        return params

    # ---- run ------------------------------------------------------------------------------
    def run(
        self, request: DesignRequest, params: MethodParams, ctx: MethodContext
    ) -> Iterator[MethodEvent]:
        assert isinstance(params, SmoacsParams)
        yield from deterministic_between_yields(self._run(request, params, ctx))

    def _run(
        self, request: DesignRequest, params: SmoacsParams, ctx: MethodContext
    ) -> Iterator[MethodEvent]:
        device = ctx.device
        yield Progress(phase="setup", step=0, total=1)
        perovskite = resolve_source(request, params) == "perovskite"
        tables = build_tables(request, device)
        terms = terms_from_request(
            request,
            params.threshold_margin,
            params.tolerance_window if perovskite else None,
            params.tolerance_weight,
        )
        gap_key = next(
            (prediction_key(o) for o in request.objectives if o.property == "band_gap"),
            "band_gap:pbe",
        )
        report = {gap_key, "formation_energy", "density"}
        if perovskite:
            report.add("tolerance_factor")
        predictors = _load_predictors({t.key for t in terms} | report, device, params.predictor)
        engine = SmoacsEngine(
            terms, predictors, tables, _engine_config(params), report_keys=tuple(sorted(report))
        )

        rng = np.random.default_rng(request.seed)
        generator = torch.Generator().manual_seed(request.seed)
        n_total = request.num_candidates
        pass_size = params.pass_size(device)
        n_batches = math.ceil(n_total / pass_size)
        total_steps = n_batches * params.steps
        best = math.inf
        for bi in range(n_batches):
            count = min(pass_size, n_total - bi * pass_size)
            designs = params.designed(count) if params.refines(n_total) else count
            templates = build_templates(request, params, tables, designs, rng)
            pop = Population.from_templates(
                templates,
                generator,
                device,
                random_geometry=params.init_geometry == "random",
                logit_noise=params.logit_init_noise,
            )
            # Copies of one template would otherwise start (and end) identical.
            reused = reused_templates(templates)
            if bool(reused.any()):
                pop.jitter(
                    reused, generator, params.jitter_coords, params.jitter_lattice,
                    params.jitter_logits,
                )  # fmt: skip
            final_pop = pop
            for event in engine.optimize(pop, generator, ctx.check_cancelled):
                if isinstance(event, StepReport):
                    best = min(best, event.best)
                    yield Progress(
                        phase="optimize",
                        step=bi * params.steps + event.step,
                        total=total_steps,
                        best=best,
                    )
                else:
                    final_pop = event
            ctx.check_cancelled()
            result = engine.finalize(final_pop)
            if params.polish_rounds:
                result = yield from _polish(
                    engine, final_pop, result, request, params, ctx, generator
                )
            designed = result.crystals
            if params.refines(n_total):
                # The stage returns crystals relaxed by the judge: no second relaxation.
                result, picked = yield from _refine(
                    engine, final_pop, result, request, params, ctx, count, bi, n_batches
                )
                designed = [designed[i] for i in picked]
            elif params.relaxes(request.relax):
                yield Progress(phase="relax", step=bi, total=n_batches)
                result = _relax_and_rescore(engine, final_pop, result, params, device)
                yield Progress(phase="relax", step=bi + 1, total=n_batches)
            yield _candidates(result, gap_key, bi * pass_size, designed, request.seed)

    def describe(self) -> dict[str, object]:
        out = super().describe()
        out["predictors"] = {
            "chgnet": ["gap-chgnet-ft (CHGNet 0.3.0 backbone)", "chgnet-eform (CHGNet 0.3.0)"],
            "megnet": [GAP_MODEL, EFORM_MODEL],
        }
        return out


def _engine_config(params: SmoacsParams) -> EngineConfig:
    return EngineConfig(
        steps=params.steps,
        lr={
            "length": params.lr_lattice,
            "angle": params.lr_angles,
            "frac": params.lr_coords,
            "logits": params.lr_elements,
            "pattern": params.lr_patterns,
        },
        cosine=params.lr_schedule == "cosine",
        temperature_start=params.temperature_start,
        temperature_end=params.temperature_end,
        exponential_temperature=params.temperature_schedule == "exponential",
        mutation_steps=params.mutation_steps(),
        mutation_top_rate=params.mutation_top_rate,
        mutation_replace_prob=params.mutation_replace_prob,
        mutation_noise=params.mutation_noise,
        graph_update_every=params.graph_update_every,
        skin=params.neighbor_skin,
        min_distance=params.min_distance,
        geometry_weight=params.geometry_weight,
        progress_every=params.progress_every,
        straight_through_start=params.straight_through_start(),
        keep_best=params.keep_best,
        logit_noise=params.logit_init_noise,
        stability_energy=params.stability_energy if params.predictor == "chgnet" else 0.0,
        stability_force=params.stability_force if params.predictor == "chgnet" else 0.0,
        stability_stress=params.stability_stress if params.predictor == "chgnet" else 0.0,
        mutation_logit_noise=params.jitter_logits,
        geometry_follows_stability=params.geometry_loss == "stability",
    )


def _load_predictors(keys: set[str], device: str, predictor: str = "megnet") -> Predictors:
    """MEGNet per key, or CHGNet for its keys (PBE gap, formation energy) and MEGNet for
    gap fidelities the trained gap model does not cover."""
    models = {}
    chgnet = load_soft_chgnet(device) if predictor == "chgnet" else None
    for key in keys:
        if chgnet is not None and key in CHGNET_KEYS:
            continue
        if key.startswith("band_gap:"):
            fid = key.split(":", 1)[1]
            models[key] = load_soft_megnet(GAP_MODEL, device, state=_GAP_STATES[fid])
        elif key == "formation_energy":
            models[key] = load_soft_megnet(EFORM_MODEL, device, state=None)
    return Predictors(models, chgnet)


def _polish(
    engine: SmoacsEngine,
    pop: Population,
    result: FinalResult,
    request: DesignRequest,
    params: SmoacsParams,
    ctx: MethodContext,
    generator: torch.Generator,
) -> Generator[Progress, None, FinalResult]:
    """:func:`polish_rounds` with the job's judge (SevenNet-l3i5 on a GPU, CHGNet on a CPU,
    or the request's ``energy_above_hull`` oracle) as the relaxing potential."""
    from ml.pipeline.oracle_choice import relax_as_judged

    def relax(crystals: list) -> list:
        return relax_as_judged(crystals, request, ctx.device, params.polish_relax_steps)

    total = params.polish_rounds * params.polish_steps
    offset, last = 0, 0
    yield Progress(phase="polish", step=0, total=total)
    for event in polish_rounds(engine, pop, result, params, relax, generator, ctx.check_cancelled):
        if isinstance(event, StepReport):
            if event.step <= last:  # the next round began
                offset += params.polish_steps
            last = event.step
            yield Progress(phase="polish", step=offset + event.step, total=total, best=event.best)
        else:
            result = event
    yield Progress(phase="polish", step=total, total=total)
    return result


def _refine(
    engine: SmoacsEngine,
    pop: Population,
    result: FinalResult,
    request: DesignRequest,
    params: SmoacsParams,
    ctx: MethodContext,
    keep: int,
    pass_index: int,
    n_passes: int,
) -> Generator[Progress, None, tuple[FinalResult, list[int]]]:
    """:func:`refine` with the job's judge relaxing (the job's protocol: FIRE fmax 0.1, <= 300
    steps) and the service's oracles scoring; ``keep`` candidates of this pass returned."""
    from ml.pipeline.oracle_choice import relax_as_judged

    def relax(crystals: list) -> list:
        return relax_as_judged(crystals, request, ctx.device)

    keys = {t.key for t in engine.terms} | set(engine.report_keys)
    score = judge_scorer(request, keys, ctx.device)
    counts = pop.cand["num_sites"].cpu().tolist()
    roles = [r.tolist() for r in torch.split(pop.site["role"].cpu(), counts)]
    rounds = params.rounds(request.num_candidates)
    per_pass = rounds + 1
    total = n_passes * per_pass
    yield Progress(phase="refine", step=pass_index * per_pass, total=total)
    refined = None
    for event in refine(
        result, roles, engine.terms, engine.tables.allowed.cpu().numpy(), relax, score,
        rounds=rounds, proposals=params.refine_proposals,
        species_per_group=params.refine_species_per_group, keep=keep,
        pairs=params.refine_pairs,
        check_cancelled=ctx.check_cancelled,
    ):  # fmt: skip
        if isinstance(event, RefineReport):
            yield Progress(
                phase="refine",
                step=pass_index * per_pass + event.round + 1,
                total=total,
                detail={"met": event.met, "moved": event.moved, "relaxed": event.relaxed},
            )
        else:
            refined = event
    assert refined is not None
    yield Progress(phase="refine", step=(pass_index + 1) * per_pass, total=total)
    return refined.result, refined.picked


def _relax_and_rescore(
    engine: SmoacsEngine,
    pop: Population,
    result: FinalResult,
    params: SmoacsParams,
    device: str,
) -> FinalResult:
    """Relax the designs together with CHGNet (the service's stability judge) and score the
    relaxed crystals with the predictors again (a failed relaxation keeps the design)."""
    from ml.oracles.relax import relax_crystals

    def relax(pool: object = None) -> list:
        return relax_crystals(
            result.crystals, fmax=params.relax_fmax, steps=params.relax_steps, device=device,
            model="chgnet", max_batch=max(len(result.crystals), 1), pool=pool,
        )  # fmt: skip

    if params.relax_workers > 0:
        import multiprocessing

        # spawn: the workers only build graphs on the CPU and must not inherit a CUDA context.
        with multiprocessing.get_context("spawn").Pool(params.relax_workers) as pool:
            relaxed = relax(pool)
    else:
        relaxed = relax()
    crystals = [r.crystal for r in relaxed]
    pop.set_geometry(crystals)
    out = engine.finalize(pop)
    for meta, r in zip(out.meta, relaxed, strict=True):
        meta["relax"] = {
            "converged": r.converged,
            "steps": r.steps,
            "failed": not math.isfinite(r.energy_per_atom),
        }
    return out


def _candidates(
    result: FinalResult,
    gap_key: str,
    offset: int,
    designed: list | None = None,
    seed: int | None = None,
) -> list[Candidate]:
    preds = {k: v.detach().double().cpu().numpy() for k, v in result.predictions.items()}
    loss = result.loss.cpu().numpy()
    met = result.met.cpu().numpy()
    out = []
    for i, crystal in enumerate(result.crystals):
        predicted = {}
        for key, values in preds.items():
            v = float(values[i])
            if not math.isfinite(v):
                continue
            if key == gap_key:
                predicted["band_gap"] = v
            elif key.startswith("band_gap:"):
                predicted[key.replace(":", "_")] = v
            else:
                predicted[key] = v
        out.append(
            Candidate(
                crystal=crystal,
                predicted=predicted,
                method_score=float(loss[i]) if math.isfinite(loss[i]) else None,
                # The same request (seed) yields candidate i again on a resumed job, with
                # float noise from non-deterministic GPU kernels: its key, not its content.
                key=f"smoacs/{seed}/{offset + i}",
                meta={
                    **result.meta[i],
                    "index": offset + i,
                    "site_oxidation": result.site_oxidation[i],
                    "objectives_met": bool(met[i]),
                    # The design before the final relaxation (the candidate is the relaxed one).
                    **(
                        {"designed": _geometry(designed[i])}
                        if designed is not None and "relax" in result.meta[i]
                        else {}
                    ),
                },
            )
        )
    return out


def _geometry(crystal: object) -> dict[str, list]:
    return {
        "lattice": crystal.lattice.round(6).tolist(),  # type: ignore[attr-defined]
        "frac_coords": crystal.frac_coords.round(6).tolist(),  # type: ignore[attr-defined]
    }
