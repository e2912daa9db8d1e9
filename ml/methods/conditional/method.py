"""The ``conditional`` design method: compositions (given or proposed) x space groups x property
targets -> flow-matching generator with classifier-free guidance -> candidate crystals."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from functools import cache
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from pymatgen.core import Composition, Element

from ml.constraints import is_perovskite, snap_to_space_group
from ml.crystal import Crystal
from ml.data.reference import known_formulas
from ml.evaluation.uniqueness import PreparedStructure
from ml.methods.base import (
    Candidate,
    DesignMethod,
    MethodContext,
    MethodEvent,
    MethodParams,
    Progress,
    RequestError,
    batch_on,
)
from ml.methods.conditional.checkpoint import find_weights, load_release, load_wyckoff_release
from ml.methods.conditional.composition import (
    ProposedComposition,
    cell_numbers,
    propose_compositions,
)
from ml.methods.conditional.flow import SampleConfig
from ml.methods.conditional.model import PROPERTIES, ConditionalFlowModel
from ml.methods.conditional.sampler import GenerationCondition, generate_batches
from ml.methods.conditional.wyckoff_flow import WyckoffSampleConfig
from ml.methods.conditional.wyckoff_sampler import WyckoffCondition
from ml.methods.conditional.wyckoff_sampler import generate_batches as generate_wyckoff
from ml.methods.conditional.wyckoff_sampler import plan as plan_wyckoff
from ml.request import Constraints, DesignRequest, Objective, reduced_amounts
from ml.symmetry import compatible

__all__ = ["ConditionalMethod", "ConditionalParams"]

# How far past a threshold a "below"/"above" objective is aimed, in units of the property.
THRESHOLD_MARGIN = 0.2
# "minimize"/"maximize" aim this many training standard deviations from the training mean.
EXTREME_SIGMAS = 1.65
# Largest cell of the training data (MP-20); larger cells are generated only when needed.
TRAINING_MAX_ATOMS = 20
# Candidates per batch by default (see ConditionalParams.batch_size).
CPU_BATCH, GPU_BATCH = 256, 1024


class ConditionalParams(MethodParams):
    model: Literal["wyckoff", "free-cell"] | None = Field(
        default=None,
        description="generator: 'wyckoff' (v2, generates the free Wyckoff parameters of an "
        "assignment in a space group, so the space group is exact) or 'free-cell' (v1, lattice "
        "and all coordinates, then snapped). Default: 'wyckoff' when its checkpoint exists",
    )
    template_options: int = Field(
        default=4,
        ge=1,
        le=100,
        description="wyckoff: samples share the top Wyckoff assignments round-robin, one "
        "assignment per this many samples (space groups proposed from the composition when "
        "the request gives none)",
    )
    samples_per_composition: int = Field(
        default=8, ge=1, le=1000, description="structures per (composition, space group)"
    )
    guidance: float = Field(
        default=1.0, ge=0.0, le=10.0, description="classifier-free guidance weight w (0 = none)"
    )
    steps: int = Field(default=100, ge=2, le=1000, description="Euler steps of the flow ODE")
    coord_anneal: float | None = Field(
        default=None,
        ge=0.0,
        le=50.0,
        description="speed-up s of the coordinate velocity, v * (1 + s t) (FlowMM's "
        "anti-annealing). Default: 5 for the Wyckoff generator (own-template match 0.57 -> "
        "0.63, median CHGNet energy above the known crystal 0.16 -> 0.05 eV/atom), 0 for the "
        "free-cell model (there s = 10 matches more, 0.39 -> 0.51, but leaves atoms loosely "
        "placed: CHGNet-Eform within 0.1 eV/atom of the request for 0.05 of structures instead "
        "of 0.31); benchmarks/RESULTS.md",
    )
    prior: Literal["uniform", "normal"] = Field(
        default="uniform", description="coordinate prior of the checkpoint to use"
    )
    num_compositions: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="compositions to propose when the request gives none "
        "(default: enough for num_candidates)",
    )
    new_compositions: bool = Field(
        default=True,
        description="when the request gives no composition: new formulas first, made by the "
        "substitution baseline's ion exchanges on stable, property-matched known materials, "
        "then enumerated ones absent from the reference data (a known formula mostly "
        "regenerates its known crystal, which is not novel); false: the most plausible "
        "formulas, known ones included",
    )
    formula_unit_options: int = Field(
        default=1,
        ge=1,
        le=50,
        description="when the request fixes a composition without formula_units: how many "
        "numbers of formula units to try per space group (the smallest its Wyckoff positions "
        "allow, cells of at most 20 atoms first)",
    )
    energy_rank: int = Field(
        default=1,
        ge=1,
        le=64,
        description="wyckoff: samples drawn per returned candidate (consecutive ones, over the "
        "top assignments); above 1 the candidate is the one with the lowest CHGNet energy per "
        "atom, as generated (the known crystal of a composition is usually its lowest-energy "
        "form)",
    )
    redraw_off_group: int = Field(
        # ZnO in P6_3mc (CPU, 20 samples): 13 of 20 samples are NiAs-type P6_3/mmc with no
        # redraw, 10 with 2, 5 with 6; only the off-group samples are drawn again.
        default=6,
        ge=0,
        le=16,
        description="wyckoff: a sample whose spglib space group (symprec 0.1) is not the one "
        "it was generated in (free parameters on special values add symmetry) is drawn again, "
        "up to this many times",
    )
    batch_size: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="Candidates generated (and then relaxed by the job) per batch (default: "
        "256 on a CPU, 1,024 on a GPU).",
    )
    symmetrize: bool = Field(
        default=True,
        description="snap a structure that has the conditioned space group within 0.5 A onto "
        "that group's ideal cell (spglib), so it meets a space-group constraint",
    )


def _default_model() -> str:
    try:
        find_weights("wyckoff")
    except FileNotFoundError:
        return "free-cell"
    return "wyckoff"


def _new_compositions(request: DesignRequest, count: int) -> list[ProposedComposition]:
    """Novel compositions from data-mined ion substitution (Hautier et al.) on near-hull
    parents, in their parents' cell sizes, within the request's constraints."""
    from ml.methods.substitution import substituted_compositions

    cons = request.constraints
    out = []
    for rank, (formula, n_atoms) in enumerate(substituted_compositions(request, count * 2)):
        reduced = Composition(formula).reduced_composition
        z = max(1, round(n_atoms / reduced.num_atoms))
        if n_atoms > cons.max_atoms or (
            cons.crystal_family == "perovskite" and not is_perovskite(formula)
        ):
            continue
        numbers = cell_numbers(reduced, z)
        out.append(ProposedComposition(numbers, formula, -float(rank), "substituted"))
    return out[:count]


@cache
def _load_wyckoff(device: str):  # type: ignore[no-untyped-def]
    return load_wyckoff_release(find_weights("wyckoff"), device)


@cache
def _load_model(prior: str, device: str) -> ConditionalFlowModel:
    model, _ = load_release(find_weights(prior), device)
    return model


def _cell(amounts: dict[str, int], z: int) -> tuple[int, ...]:
    """Atomic numbers of a cell of ``z`` formula units, sorted."""
    numbers: list[int] = []
    for symbol, amount in amounts.items():
        numbers += [Element(symbol).Z] * (amount * z)
    return tuple(sorted(numbers))


def _formula_units(cons: Constraints, space_group: int | None, options: int) -> list[int]:
    """Numbers of formula units to generate the given composition with, for one space group
    (None: not conditioned). Explicit ``formula_units``: all of them the group allows.
    Otherwise the ``options`` smallest the group's Wyckoff positions allow, preferring cells
    within the training data's size (the smallest allowed one when none is)."""
    zs = cons.formula_units_in(space_group) if space_group else cons.formula_unit_choices()
    if cons.formula_units:
        return zs
    per_fu = sum(reduced_amounts(cons.composition or "").values())
    in_range = [z for z in zs if z * per_fu <= TRAINING_MAX_ATOMS]
    return (in_range or zs[:1])[:options]


def _likeliest_cells(
    request: DesignRequest, params: ConditionalParams, stats: Any
) -> list[tuple[tuple[int, ...], int | None, str]]:
    """A given composition with no space group and no formula_units: the
    ``formula_unit_options`` numbers of formula units (cells within the training data's size)
    whose likeliest space group for the composition is likeliest, rather than the smallest.
    MgAl2O4 with one formula unit fits no spinel (its primitive cell holds two): P = 0.06 for
    the best group of a 7-atom cell against 0.39 for Fd-3m at 14 atoms. [] when not such a
    request (then ``_cells`` decides)."""
    cons = request.constraints
    if cons.composition is None or cons.space_groups or cons.formula_units:
        return []
    amounts = reduced_amounts(cons.composition)
    zs = _formula_units(cons, None, len(cons.formula_unit_choices()))  # all within range

    def best(z: int) -> float:
        cell = {el: a * z for el, a in amounts.items()}
        top = stats.propose_space_groups(cell, 1, (1,))
        return top[0][1] if top else 0.0

    ranked = sorted(zs, key=lambda z: (-best(z), z))[: params.formula_unit_options]
    return [(_cell(amounts, z), None, "given") for z in ranked]


def _target(objective: Objective, model: ConditionalFlowModel) -> float:
    """The property value the generator is conditioned on for one objective."""
    p = model.config.properties.index(objective.property)
    mean, std = model.config.prop_mean[p], model.config.prop_std[p]
    if objective.goal == "target":
        assert objective.value is not None
        return objective.value
    if objective.goal == "below":
        assert objective.value is not None
        return objective.value - THRESHOLD_MARGIN
    if objective.goal == "above":
        assert objective.value is not None
        return objective.value + THRESHOLD_MARGIN
    if objective.goal == "minimize":
        return mean - EXTREME_SIGMAS * std
    return mean + EXTREME_SIGMAS * std


class ConditionalMethod(DesignMethod):
    name: ClassVar[str] = "conditional"
    version: ClassVar[str] = "0.1.0"
    description: ClassVar[str] = (
        "Conditional flow matching: generates lattice and fractional coordinates for a given "
        "or proposed composition, optional space groups and formation-energy / band-gap "
        "targets (uniform periodic coordinate prior, classifier-free guidance)."
    )
    Params: ClassVar[type[MethodParams]] = ConditionalParams

    def validate(self, request: DesignRequest) -> ConditionalParams:
        params = ConditionalParams.model_validate(request.params)
        if params.model is None:
            params = params.model_copy(update={"model": _default_model()})
        if params.model == "wyckoff":
            try:
                find_weights("wyckoff")
            except FileNotFoundError as exc:
                raise RequestError("params.model", f"no Wyckoff checkpoint: {exc}") from exc
        else:
            try:
                find_weights(params.prior)
            except FileNotFoundError as exc:
                raise RequestError("params.prior", f"no checkpoint for this prior: {exc}") from exc
        cons = request.constraints
        if cons.composition is not None and cons.crystal_family == "perovskite":
            cells = (Composition(cons.composition) * z for z in cons.formula_unit_choices())
            if not any(is_perovskite(c) for c in cells):
                raise RequestError(
                    "constraints.composition", "composition is not ABX3 but family is perovskite"
                )
        if cons.templates:
            raise RequestError(
                "constraints.templates", "the conditional generator does not use templates"
            )
        seen: set[str] = set()
        for i, obj in enumerate(request.objectives):
            if obj.property in PROPERTIES and obj.property in seen:
                raise RequestError(
                    f"objectives.{i}.property", f"{obj.property} is conditioned on only once"
                )
            seen.add(obj.property)
        return params

    # ---- planning ----------------------------------------------------------------------
    def _cells(
        self, request: DesignRequest, params: ConditionalParams
    ) -> list[tuple[tuple[int, ...], int | None, str]]:
        """(atomic numbers of the cell, space group or None, source) to generate for: the
        given composition in the numbers of formula units each space group allows, or
        proposed compositions paired with the space groups whose Wyckoff positions fit."""
        cons = request.constraints
        space_groups: list[int | None] = list(cons.space_groups or [None])
        if cons.composition is not None:
            amounts = reduced_amounts(cons.composition)
            cells = [
                (_cell(amounts, z), spg, "given")
                for spg in space_groups
                for z in _formula_units(cons, spg, params.formula_unit_options)
            ]
            if not cells:  # the request schema rejects this; a stored old request may not
                raise RequestError(
                    "constraints.space_groups",
                    f"no allowed number of formula units of {cons.composition} fits them",
                )
            return cells
        wanted = params.num_compositions or math.ceil(
            request.num_candidates / (params.samples_per_composition * len(space_groups))
        )
        widen = cons.crystal_family is not None or cons.space_groups is not None
        count = wanted * 4 if widen else wanted
        pool = _new_compositions(request, count) if params.new_compositions else []
        if len(pool) < count:
            avoid = known_formulas() if params.new_compositions else frozenset[str]()
            taken = {p.numbers for p in pool}
            more = propose_compositions(cons, count, avoid=avoid)
            pool += [p for p in more if p.numbers not in taken][: count - len(pool)]
        if cons.crystal_family == "perovskite":
            pool = [p for p in pool if is_perovskite(p.formula)]
        if not pool:
            raise RequestError(
                "constraints.elements",
                "no composition satisfies the element, size and neutrality constraints",
            )
        out = []
        for spg in space_groups:
            fits = [p for p in pool if spg is None or compatible(spg, Counter(p.numbers).values())]
            out += [(p.numbers, spg, p.source) for p in fits[:wanted]]
        if not out:
            raise RequestError(
                "constraints.space_groups",
                f"none of the {len(pool)} proposed compositions fits these space groups' "
                "Wyckoff positions within max_atoms",
            )
        return out

    def _conditions(
        self, request: DesignRequest, params: ConditionalParams, model: ConditionalFlowModel
    ) -> list[tuple[GenerationCondition, str]]:
        targets = {
            o.property: _target(o, model)
            for o in request.objectives
            if o.property in model.config.properties
        }
        groups = [
            (
                GenerationCondition(
                    numbers,
                    space_group=spg,
                    formation_energy=targets.get("formation_energy"),
                    band_gap=targets.get("band_gap"),
                ),
                source,
            )
            for numbers, spg, source in self._cells(request, params)
        ]
        # Round-robin over groups until num_candidates, so every group gets its share.
        return [groups[i % len(groups)] for i in range(request.num_candidates)]

    # ---- run ---------------------------------------------------------------------------
    def run(
        self, request: DesignRequest, params: MethodParams, ctx: MethodContext
    ) -> Iterator[MethodEvent]:
        assert isinstance(params, ConditionalParams)
        if (params.model or _default_model()) == "wyckoff":
            yield from self._run_wyckoff(request, params, ctx)
            return
        yield Progress("load", 0, 1)
        model = _load_model(params.prior, ctx.device)
        ctx.check_cancelled()
        planned = self._conditions(request, params, model)
        conditions = [c for c, _ in planned]
        anneal = 0.0 if params.coord_anneal is None else params.coord_anneal
        cfg = SampleConfig(steps=params.steps, guidance=params.guidance, coord_anneal=anneal)
        size = batch_on(params.batch_size, ctx.device, CPU_BATCH, GPU_BATCH)
        total = math.ceil(len(conditions) / size)
        yield Progress("generate", 0, total)
        batches = generate_batches(model, conditions, cfg, request.seed, size)
        done = 0
        for k in range(total):
            ctx.check_cancelled()
            with torch.inference_mode():
                crystals = next(batches)
            out: list[Candidate] = []
            for crystal, (cond, source) in zip(
                crystals, planned[done : done + len(crystals)], strict=True
            ):
                snapped = None
                if params.symmetrize and cond.space_group is not None:
                    snapped = snap_to_space_group(crystal, cond.space_group)
                targets = {
                    p: v for p in model.config.properties if (v := cond.value(p)) is not None
                }
                # The generator has no property predictor: the conditioning targets are what
                # was asked for, not a prediction, so they go in meta only.
                comp = crystal.to_structure().composition
                out.append(
                    Candidate(
                        crystal=snapped or crystal,
                        meta={
                            "composition": comp.formula,
                            "formula_units": round(comp.get_reduced_composition_and_factor()[1]),
                            "composition_source": source,
                            "space_group_condition": cond.space_group,
                            "targets": targets,
                            "guidance": params.guidance,
                            "coord_anneal": anneal,
                            "prior": params.prior,
                            "symmetrized": snapped is not None,
                        },
                    )
                )
            done += len(crystals)
            yield out
            yield Progress("generate", k + 1, total)

    # ---- v2: Wyckoff generator ---------------------------------------------------------
    def _wyckoff_plan(
        self,
        request: DesignRequest,
        params: ConditionalParams,
        model,
        stats,  # type: ignore[no-untyped-def]
    ) -> list[tuple[WyckoffCondition, str]]:
        targets = {
            o.property: _target(o, model)
            for o in request.objectives
            if o.property in model.config.properties
        }
        cells = _likeliest_cells(request, params, stats) or self._cells(request, params)
        # Every cell plans num_candidates, so cells that no assignment fits (e.g. a number of
        # formula units whose only assignments give a supergroup) leave their share to others.
        # With energy_rank k, each candidate is a group of k consecutive samples of one cell.
        # Only a cell's share of the interleaving below is used, and a plan's first `used`
        # conditions do not depend on the rest: each cell checks only the assignments its
        # share can reach (a cell that turns out empty raises the others' shares: re-planned).
        k = params.energy_rank
        per_cell = request.num_candidates
        planned: dict[int, list[list[tuple[WyckoffCondition, str]]]] = {}
        share = 0
        while True:
            live = [i for i in range(len(cells)) if i not in planned or planned[i]]
            wanted = math.ceil(per_cell / max(len(live), 1))
            if wanted <= share:
                break
            share = wanted
            for i in live:
                numbers, spg, source = cells[i]
                conds = plan_wyckoff(
                    numbers,
                    per_cell * k,
                    stats,
                    space_group=spg,
                    formation_energy=targets.get("formation_energy"),
                    band_gap=targets.get("band_gap"),
                    per_template=params.template_options,
                    used=share * k,
                )[: share * k]
                groups = [conds[j : j + k] for j in range(0, len(conds) - k + 1, k)]
                planned[i] = [[(c, source) for c in g] for g in groups]
        planned_cells = [planned[i] for i in range(len(cells))]
        # Interleave the cells so every one gets its share of num_candidates.
        out = [p[i] for i in range(per_cell) for p in planned_cells if i < len(p)]
        if not out:
            raise RequestError(
                "constraints.space_groups",
                "no Wyckoff assignment of the requested composition fits these space groups",
            )
        return [pair for group in out[: request.num_candidates] for pair in group]

    def _run_wyckoff(
        self, request: DesignRequest, params: ConditionalParams, ctx: MethodContext
    ) -> Iterator[MethodEvent]:
        yield Progress("load", 0, 1)
        model, stats, _ = _load_wyckoff(ctx.device)
        ctx.check_cancelled()
        planned = self._wyckoff_plan(request, params, model, stats)
        conditions = [c for c, _ in planned]
        anneal = WYCKOFF_COORD_ANNEAL if params.coord_anneal is None else params.coord_anneal
        cfg = WyckoffSampleConfig(steps=params.steps, guidance=params.guidance, coord_anneal=anneal)
        rank = params.energy_rank
        # Whole groups per batch: each candidate's samples are ranked together.
        size = batch_on(params.batch_size, ctx.device, CPU_BATCH, GPU_BATCH)
        batch_size = max(rank, size // rank * rank)
        total = math.ceil(len(conditions) / batch_size)
        yield Progress("generate", 0, total)
        batches = generate_wyckoff(
            model, conditions, cfg, request.seed, batch_size, redraw=params.redraw_off_group
        )
        chosen: list[PreparedStructure] = []  # the energy ranking's picks so far, all batches
        done = 0
        for k in range(total):
            ctx.check_cancelled()
            with torch.inference_mode():
                pairs = next(batches)
            batch_planned = planned[done : done + len(pairs)]
            done += len(pairs)
            ranked: list[dict[str, Any]] = [{} for _ in pairs]
            if rank > 1:
                pairs, batch_planned, ranked = _lowest_energy_of_groups(
                    pairs, batch_planned, rank, ctx.device, chosen
                )
            out: list[Candidate] = []
            for (wyck, crystal), (cond, source), ranking in zip(
                pairs, batch_planned, ranked, strict=True
            ):
                comp = crystal.to_structure().composition
                targets = {
                    p: v for p in model.config.properties if (v := cond.value(p)) is not None
                }
                out.append(
                    Candidate(
                        crystal=crystal,
                        meta={
                            "composition": comp.formula,
                            "formula_units": round(comp.get_reduced_composition_and_factor()[1]),
                            "composition_source": source,
                            "space_group_condition": cond.space_group,
                            "space_group_generated": wyck.space_group,
                            "wyckoff": [f"{o.letter}:{o.number}" for o in wyck.orbits],
                            "template_rank": cond.template_rank,
                            "targets": targets,
                            "guidance": params.guidance,
                            "coord_anneal": anneal,
                            "model": "wyckoff",
                            **ranking,
                        },
                    )
                )
            yield out
            yield Progress("generate", k + 1, total)


# FlowMM's anti-annealing for the Wyckoff generator: on 199 MP-20 test crystals in their own
# templates (CPU, benchmarks/conditional_wyckoff_ablation.py) s = 2 / 3 / 5 / 7 / 10 match
# 0.61 / 0.62 / 0.63 / 0.62 / 0.60 against 0.57 without, and s = 5 also lowers the samples'
# energy (median above the known crystal 0.16 -> 0.05 eV/atom).
WYCKOFF_COORD_ANNEAL = 5.0

# eV/atom: how far above a group's lowest-energy sample a not-yet-returned crystal may lie
# and still be preferred to repeating one (MgAl2O4 without a space group, 8 candidates, CPU:
# with no limit, unique 0.25 -> 0.88 but hits 1.00 -> 0.38 and some picks invalid).
DISTINCT_MARGIN = 0.1


def _lowest_energy_of_groups(
    pairs: list[tuple[Any, Crystal]],
    planned: list[tuple[WyckoffCondition, str]],
    k: int,
    device: str,
    chosen: list[PreparedStructure],
) -> tuple[list[tuple[Any, Crystal]], list[tuple[WyckoffCondition, str]], list[dict[str, Any]]]:
    """Of each group of ``k`` consecutive samples, the one with the lowest CHGNet energy per
    atom (an unscorable sample ranks last) that is not a crystal already ``chosen``
    (StructureMatcher) and lies within ``DISTINCT_MARGIN`` of the lowest (else the lowest),
    with what the choice was made on.
    ``chosen`` grows with the picks: without it every group of a known composition would
    return the same lowest-energy polymorph."""
    from ml.oracles.chgnet_device import chgnet_energies

    energies = chgnet_energies([c for _, c in pairs], device)
    keep_pairs, keep_planned, ranked = [], [], []
    for start in range(0, len(pairs), k):
        group = energies[start : start + k]
        order = start + np.argsort(np.where(np.isfinite(group), group, np.inf), kind="stable")
        best, pick = int(order[0]), None
        for i in order.tolist():
            if not energies[i] <= energies[order[0]] + DISTINCT_MARGIN:
                break  # the rest are too far above the lowest: repeat it rather
            prepared = PreparedStructure(pairs[i][1])
            if not any(prepared.matches(c) for c in chosen):
                best, pick = i, prepared
                break
        chosen.append(pick or PreparedStructure(pairs[best][1]))
        keep_pairs.append(pairs[best])
        keep_planned.append(planned[best])
        value = float(energies[best])
        ranked.append(
            {
                "energy_rank": {
                    "samples": len(group),
                    "chosen": best - start,
                    "chgnet_energy_per_atom": value if math.isfinite(value) else None,
                }
            }
        )
    return keep_pairs, keep_planned, ranked
