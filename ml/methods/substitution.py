"""Substitution baseline: data-mined ion exchange on known structures.

Hautier et al. (Inorg. Chem. 2011) fitted, from the ICSD, how likely one ion replaces another
in the same structure type; pymatgen ships that model (``SubstitutionProbability``). This
method takes reference structures from the data sets (or the request's templates) whose size
fits ``max_atoms``, guesses their ions, and replaces every ion by one of the allowed species:

    P(new structure | reference) = prod over ions i of P(new_i | old_i)   (cond_prob)

restricted to the allowed elements, distinct new elements per ion (no merged sites), the
required elements, an exact composition if asked, and charge neutrality (sum of new charges
times site counts is zero). The most probable substitutions become candidates: species are
swapped in the reference cell and the volume rescaled by ionic radii (reference lattice
scaling, pymatgen's ``RLSVolumePredictor``). The oracles rank them afterwards.

With an exact ``constraints.composition`` (a polymorph search: "ZnO in P6_3mc") only
references of the same prototype formula (AB, AB2C4, ...) are examined, only the composition's
ions are substituted in, and known formulas are not skipped: the user asked for that one.

Deterministic: the seed picks which references are examined (when there are more than
``max_references``) and breaks probability ties; ``temperature > 0`` samples instead of
taking the most probable.
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Literal

import numpy as np
from pydantic import Field
from pymatgen.core import Composition, Element, Species, Structure

from ml.crystal import Crystal
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
from ml.pipeline.prescreen import predicted_losses, prescreen_properties
from ml.request import DesignRequest, ElementConstraints

Dataset = Literal["mp20", "mp2018", "perov5"]
# Splits used as references: MP-20 test is kept out (it is the evaluation split).
_SPLITS: dict[str, tuple[str, ...]] = {
    "mp20": ("train", "val"),
    "mp2018": ("extra",),
    "perov5": ("val", "test"),
}


# Candidates per batch by device. On the H200 a 256-candidate job in 16-candidate batches
# spent 119.8 s of 130.8 s relaxing (small batches stay on the CPU-graph path, see
# ml.oracles.device_relax.MIN_CRYSTALS_AUTO).
CPU_BATCH, GPU_BATCH = 16, 256


class SubstitutionParams(MethodParams):
    datasets: list[Dataset] = Field(
        default_factory=lambda: ["mp20"],
        min_length=1,
        description="Data sets whose structures serve as references (ignored with templates). "
        "Unset with a fixed constraints.composition: mp20 and mp2018 (the larger cells of "
        "mp2018 hold prototypes such as olivine that MP-20's 20-atom limit leaves out).",
    )
    max_references: int = Field(
        default=3000, ge=1, le=100_000, description="References examined (seeded sample)."
    )
    species_per_ion: int = Field(
        default=4, ge=1, le=20, description="Most probable replacements tried for each ion."
    )
    min_probability: float = Field(
        default=1e-6, gt=0, le=1, description="Smallest joint substitution probability kept."
    )
    max_per_formula: int = Field(
        default=2,
        ge=1,
        le=1000,
        description="At most this many candidates per new formula (not applied with a fixed "
        "constraints.composition).",
    )
    skip_known: bool = Field(
        default=True,
        description="Skip substitutions whose formula already occurs in the reference data "
        "(any data set, not only the references: they would rediscover known materials). "
        "Not applied when the request fixes constraints.composition.",
    )
    temperature: float = Field(
        default=0.0,
        ge=0,
        le=10,
        description="0: most probable first; >0: seeded sampling, weights p^(1/T).",
    )
    parent_max_e_hull: float | None = Field(
        default=0.05,
        ge=0,
        le=10,
        description="Only references whose CHGNet energy lies at most this far above the "
        "reference hull (eV/atom, static): a substitution into a stable structure type is the "
        "cheapest route to a near-hull candidate. None: any reference.",
    )
    parent_property_weight: float = Field(
        default=1.0,
        ge=0,
        le=100,
        description="Preference for references whose DFT band gap and formation energy already "
        "meet the request's objectives (log-weight added to the substitution probability; 0: "
        "probability alone).",
    )
    batch_size: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="Candidates per batch (default: 16 on a CPU, where small batches show "
        "results early; 256 on a GPU, where the job relaxes a batch in one device pass).",
    )
    prescreen: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Crystals built per candidate passed on when the request has property "
        "objectives: the service's oracles score them unrelaxed, and those predicted closest "
        "to the objectives (a target's centre) go to the pipeline first. 1: off, most "
        "probable substitution first.",
    )
    step_delay_s: float = Field(
        default=0.0,
        ge=0,
        le=60,
        description="Pause before each batch (throttling, demos and cancellation tests).",
    )

    def batch_on(self, device: str) -> int:
        """Candidates per batch on ``device``."""
        return batch_on(self.batch_size, device, CPU_BATCH, GPU_BATCH)


@dataclass(frozen=True)
class _Reference:
    key: str  # dataset/split/row, or template/<i>
    material_id: str
    formula: str
    n_atoms: int
    space_group: int | None
    fit: float = 0.0  # log-weight: how well the reference's DFT labels meet the objectives


@dataclass(frozen=True)
class _Proposal:
    reference: _Reference
    ions: tuple[tuple[str, int], ...]  # (element, oxidation state) of the reference
    new_ions: tuple[tuple[str, int], ...]
    probability: float


@cache
def _probability_model() -> object:
    from pymatgen.core.structure_prediction.substitution_probability import (
        SubstitutionProbability,
    )

    return SubstitutionProbability()


@lru_cache(maxsize=200_000)
def _ions_of(formula: str) -> tuple[tuple[str, int], ...] | None:
    """One ion per element that balances the charge of ``formula``, or None.

    Among the charge-balanced assignments of ions known to the substitution model, the one
    whose ions are most common in its ICSD statistics (largest product of their marginal
    frequencies) is taken: the same idea as pymatgen's ``oxi_state_guesses``, at a fraction
    of its cost, which matters when thousands of references are scanned per job.
    """
    counts = _counts(formula)
    if len(counts) < 2:
        return None
    by_element = _ions_by_element()
    options = []
    for el in sorted(counts):
        ions = by_element.get(el)
        if not ions:
            return None
        options.append([(el, q, logpx) for q, logpx in ions])
    if math.prod(len(o) for o in options) > 20_000:
        return None
    best: tuple[float, tuple[tuple[str, int], ...]] | None = None
    for combo in itertools.product(*options):
        if abs(sum(counts[el] * q for el, q, _ in combo)) > 1e-6:
            continue
        score = sum(lp for _, _, lp in combo)
        if best is None or score > best[0]:
            best = (score, tuple((el, q) for el, q, _ in combo))
    return best[1] if best else None


@cache
def _ions_by_element() -> dict[str, list[tuple[int, float]]]:
    """Element -> [(oxidation state, log marginal frequency)] of the model's ions."""
    model = _probability_model()
    out: dict[str, list[tuple[int, float]]] = {}
    for sp in model.species:  # type: ignore[attr-defined]
        q = int(sp.oxi_state)
        if q == 0:
            continue
        out.setdefault(sp.symbol, []).append((q, math.log(model.get_px(sp))))  # type: ignore[attr-defined]
    return {el: sorted(v) for el, v in out.items()}


def _target_species(usable: list[str]) -> list[Species]:
    """Ions of the allowed elements that the substitution model knows."""
    model = _probability_model()
    allowed = set(usable)
    return sorted(
        (s for s in model.species if s.symbol in allowed),  # type: ignore[attr-defined]
        key=lambda s: (s.symbol, s.oxi_state),
    )


def _missing_ion(elements: ElementConstraints, ion: str, sign: int) -> RequestError:
    """Why no usable element gives the cation or anion neutrality needs, in the input's terms:
    an exclusion that removed them is named as such."""
    before = elements.allowed if elements.allowed is not None else elements.usable()
    removed = sorted(
        {s.symbol for s in _target_species(before) if s.oxi_state * sign > 0}
        & set(elements.excluded)
    )
    if removed:
        return RequestError(
            "constraints.elements.excluded",
            f"charge neutrality needs an {ion}: excluding {removed} leaves no usable element "
            f"that forms one",
        )
    example = "e.g. O, S, N, F, Cl" if sign < 0 else "e.g. Li, Na, Mg, Ti, Fe"
    where = "allowed" if elements.allowed is not None else "usable"
    return RequestError(
        "constraints.elements.allowed",
        f"charge neutrality needs an {ion}: no {where} element forms one ({example}), "
        "or set constraints.charge_neutral to false",
    )


@lru_cache(maxsize=200_000)
def _counts(formula: str) -> dict[str, float]:
    return {str(el): amt for el, amt in Composition(formula).reduced_composition.items()}


@lru_cache(maxsize=200_000)
def _prototype(formula: str) -> str:
    """The anonymous reduced formula (ZnO -> AB, MgAl2O4 -> AB2C4): what an exchange of ions,
    one new element per old one, keeps."""
    return str(Composition(formula).reduced_composition.anonymized_formula)


class SubstitutionMethod(DesignMethod):
    name = "substitution"
    version = "1.0"
    description = (
        "Baseline: ion exchange on known structures with pymatgen's data-mined substitution "
        "probabilities (Hautier et al. 2011), restricted to the allowed elements and charge "
        "neutrality; the oracles rank the results."
    )
    Params = SubstitutionParams

    # --- validation -------------------------------------------------------------------
    def validate(self, request: DesignRequest) -> SubstitutionParams:
        params = SubstitutionParams.model_validate(request.params)
        usable = request.constraints.elements.usable()
        species = _target_species(usable)
        if not species:
            raise RequestError(
                "constraints.elements.allowed",
                "none of the allowed elements forms an ion the substitution model knows",
            )
        if request.constraints.charge_neutral:
            for sign, ion in ((1, "cation"), (-1, "anion")):
                if not any(s.oxi_state * sign > 0 for s in species):
                    raise _missing_ion(request.constraints.elements, ion, sign)
        return params

    # --- design -----------------------------------------------------------------------
    def run(
        self, request: DesignRequest, params: MethodParams, ctx: MethodContext
    ) -> Iterator[MethodEvent]:
        assert isinstance(params, SubstitutionParams)
        rng = np.random.default_rng(request.seed)
        templates = request.constraints.templates
        references, known = self._references(request, params, rng)
        yield Progress("scanning references", 0, len(references))
        # A fixed composition is asked for by name, known or not.
        skip = params.skip_known and request.constraints.composition is None
        proposals = yield from self._propose(
            request, params, references, known if skip else set(), ctx
        )
        total = request.num_candidates
        # With property objectives, build `prescreen` crystals per place and offer the ones the
        # service's oracles predict closest (unrelaxed) first; the rest wait in the pool.
        screen = params.prescreen > 1 and bool(prescreen_properties(request))
        factor = params.prescreen if screen else 1
        # Enough proposals for every crystal built (the emitted ones plus a full pool's
        # leftovers), twice over for structures that cannot be built.
        size = params.batch_on(ctx.device)
        needed = total + (factor - 1) * min(size, total)
        chosen = iter(self._choose(proposals, request, params, rng, 2 * needed + 16))
        yield Progress("substituting", 0, total)
        pool: list[tuple[float, int, Candidate]] = []
        built = made = 0
        exhausted = False
        while made < total:
            # Sized by what this batch emits, so a short last batch (or prescreen 1) builds no
            # more crystals than it needs.
            pool_size = factor * min(size, total - made)
            fresh: list[Candidate] = []
            while not exhausted and len(pool) + len(fresh) < pool_size:
                proposal = next(chosen, None)
                if proposal is None:
                    exhausted = True
                    break
                ctx.check_cancelled()
                crystal = self._build(proposal, params, templates)
                if crystal is not None:
                    fresh.append(_candidate(proposal, crystal))
            losses = (
                predicted_losses([c.crystal for c in fresh], request, ctx.device)
                if screen
                else np.zeros(len(fresh))
            )
            for cand, loss in zip(fresh, losses, strict=True):
                if screen:
                    cand.meta["prescreen_loss"] = float(loss)
                pool.append((float(loss), built, cand))
                built += 1
            if not pool:
                break
            pool.sort(key=lambda item: item[:2])
            n = min(size, total - made)
            batch = [cand for _, _, cand in pool[:n]]
            del pool[:n]
            made += len(batch)
            yield from self._emit(batch, made, total, params, ctx)

    def _emit(
        self,
        batch: list[Candidate],
        made: int,
        total: int,
        params: SubstitutionParams,
        ctx: MethodContext,
    ) -> Iterator[MethodEvent]:
        _pause(params.step_delay_s, ctx)
        yield Progress("substituting", made, total)
        yield list(batch)

    # --- references ---------------------------------------------------------------------
    def _references(
        self, request: DesignRequest, params: SubstitutionParams, rng: np.random.Generator
    ) -> tuple[list[_Reference], set[str]]:
        """References that fit the request (a seeded sample of at most ``max_references``)
        and the reduced formulas of every data-set entry (to recognise known materials)."""
        c = request.constraints
        if c.templates:
            refs = []
            for i, cif in enumerate(c.templates):
                crystal = Crystal.from_cif(cif)
                refs.append(
                    _Reference(
                        f"template/{i}", f"template-{i}", crystal.formula, crystal.num_atoms, None
                    )
                )
            return refs, set()

        from ml.data.records import load_table, reduced_formula

        n_usable = len(c.elements.usable())
        datasets = list(params.datasets)
        if c.composition and "datasets" not in params.model_fields_set:
            datasets = ["mp20", "mp2018"]
        space_groups = set(c.space_groups) if c.space_groups else None
        prototype = _prototype(c.composition) if c.composition else None
        refs = []
        known: set[str] = set()
        for dataset in datasets:
            for split in _SPLITS[dataset]:
                table = load_table(dataset, split)
                sgs = (
                    table["spacegroup_number"].to_numpy()
                    if "spacegroup_number" in table.columns
                    else None
                )
                ids = table["material_id"].astype(str).to_numpy()
                formulas = table["pretty_formula"].astype(str).to_numpy()
                fits = _label_fit(table, request)
                e_hull = _parent_e_hull(dataset, split, ids)
                known.update(reduced_formula(f) for f in formulas)
                sizes = table["n_atoms"].to_numpy()
                for row in np.flatnonzero(sizes <= c.max_atoms):
                    sg = int(sgs[row]) if sgs is not None and sgs[row] == sgs[row] else None
                    if space_groups is not None and sg not in space_groups:
                        continue
                    formula = reduced_formula(formulas[row])
                    if len(_counts(formula)) > n_usable:
                        continue  # more ions than allowed elements: no injective exchange
                    if prototype is not None and _prototype(formula) != prototype:
                        continue  # no exchange of ions turns it into the composition
                    if c.crystal_family == "perovskite" and not _is_perovskite(formula):
                        continue
                    if params.parent_max_e_hull is not None and not (
                        e_hull[row] <= params.parent_max_e_hull  # NaN (unknown) is excluded
                    ):
                        continue
                    refs.append(
                        _Reference(
                            f"{dataset}/{split}/{row}",
                            ids[row],
                            formula,
                            int(sizes[row]),
                            sg,
                            float(fits[row]),
                        )
                    )
        if params.skip_known:
            # Every formula of the novelty reference set (all data sets; the pipeline loads the
            # same index) plus the MP-20 train materials whose coordinates are missing here.
            from ml.data.reference import known_formulas

            known.update(known_formulas())
        if len(refs) > params.max_references:
            pick = np.sort(rng.choice(len(refs), size=params.max_references, replace=False))
            refs = [refs[i] for i in pick]
        return refs, known

    # --- proposals ----------------------------------------------------------------------
    def _propose(
        self,
        request: DesignRequest,
        params: SubstitutionParams,
        references: list[_Reference],
        known_formulas: set[str],
        ctx: MethodContext,
    ) -> Iterator[MethodEvent]:
        """Every allowed, charge-balanced exchange on every reference (a generator that
        yields progress and returns the proposals)."""
        c = request.constraints
        wanted = Composition(c.composition).reduced_formula if c.composition else None
        usable = c.elements.usable()
        if wanted is not None:
            # Only the composition's ions can reach it; ranking all others first would push
            # them out of the species_per_ion most probable replacements.
            usable = [el for el in usable if el in _counts(wanted)]
        targets = tuple((sp.symbol, int(sp.oxi_state)) for sp in _target_species(usable))
        known = _known_ions()
        required = set(c.elements.required)
        zs = set(c.formula_units or ())
        n_per_fu = round(Composition(wanted).num_atoms) if wanted else 1
        seen: set[tuple[object, ...]] = set()
        proposals: list[_Proposal] = []
        last = time.monotonic()
        for i, ref in enumerate(references):
            if i % 50 == 0:
                ctx.check_cancelled()
                if time.monotonic() - last > 1.0:
                    last = time.monotonic()
                    yield Progress("scanning references", i, len(references))
            ions = _ions_of(ref.formula)
            if ions is None or any(ion not in known for ion in ions):
                continue  # not ionic, or an ion the substitution model never saw
            counts = _counts(ref.formula)
            options = [_replacements(el, q, targets, params.species_per_ion) for el, q in ions]
            for combo in itertools.product(*options):
                new_ions = tuple(ion for _, ion in combo)
                symbols = {sym for sym, _ in new_ions}
                if len(symbols) != len(new_ions):
                    continue  # two ions onto one element would merge sites
                if new_ions == ions:
                    continue  # the reference itself is not a design
                if not required <= symbols:
                    continue
                if c.charge_neutral:
                    charge = sum(
                        counts[el] * nq for (el, _), (_, nq) in zip(ions, new_ions, strict=True)
                    )
                    if abs(charge) > 1e-6:
                        continue
                prob = math.prod(p for p, _ in combo)
                if prob < params.min_probability:
                    continue
                new_formula = _formula_after(counts, ions, new_ions)
                if wanted is not None and new_formula != wanted:
                    continue
                if zs and ref.n_atoms // n_per_fu not in zs:
                    continue  # not one of the requested numbers of formula units
                if new_formula in known_formulas:
                    continue
                key = (ref.formula, ref.space_group, new_ions)
                if key in seen:
                    continue  # same structure type from another entry: one is enough
                seen.add(key)
                proposals.append(_Proposal(ref, ions, new_ions, prob))
        yield Progress("scanning references", len(references), len(references))
        return proposals

    def _choose(
        self,
        proposals: list[_Proposal],
        request: DesignRequest,
        params: SubstitutionParams,
        rng: np.random.Generator,
        limit: int,
    ) -> list[_Proposal]:
        """Order proposals: by probability (seeded ties), or seeded sampling; cap per formula.

        Returns at most ``limit``, more than the crystals wanted, so that a structure that
        cannot be built is replaced by the next proposal.
        """
        if not proposals:
            return []
        logp = np.log(np.array([p.probability for p in proposals]))
        logp = logp + params.parent_property_weight * np.array([p.reference.fit for p in proposals])
        noise = rng.gumbel(size=len(proposals))
        # Gumbel-top-k: a sample without replacement with weights p^(1/T); T = 0 keeps the
        # probability order (the noise only breaks ties).
        t = params.temperature
        keys = logp / t + noise if t > 0 else logp + 1e-9 * noise
        order = np.argsort(-keys, kind="stable")
        cap: float = params.max_per_formula
        if request.constraints.composition:
            # Every proposal has the one formula; they differ by structure type. Many
            # references share one (wurtzite CoO, CdO, ZnS, ... for ZnO): the best of each
            # (space group, cell size) comes first, then the second best of each, and so on.
            cap = math.inf
            seen_types: dict[tuple[int | None, int], int] = {}
            round_of = []
            for i in order:
                ref = proposals[int(i)].reference
                kind = (ref.space_group, ref.n_atoms)
                seen_types[kind] = seen_types.get(kind, 0) + 1
                round_of.append(seen_types[kind])
            order = order[np.argsort(round_of, kind="stable")]
        per_formula: dict[str, int] = {}
        out = []
        for i in order:
            p = proposals[int(i)]
            formula = _formula_after(_counts(p.reference.formula), p.ions, p.new_ions)
            if per_formula.get(formula, 0) >= cap:
                continue
            per_formula[formula] = per_formula.get(formula, 0) + 1
            out.append(p)
            if len(out) >= limit:
                break
        return out

    # --- structures ---------------------------------------------------------------------
    def _build(
        self, proposal: _Proposal, params: SubstitutionParams, templates: list[str] | None
    ) -> Crystal | None:
        ref = proposal.reference
        crystal = _reference_crystal(ref.key, templates)
        if crystal is None:
            return None
        structure = crystal.to_structure()
        old_oxi = {el: q for el, q in proposal.ions}
        mapping = {
            Element(el): Element(nel)
            for (el, _), (nel, _) in zip(proposal.ions, proposal.new_ions, strict=True)
        }
        new_oxi = {nel: nq for nel, nq in proposal.new_ions}
        new = structure.copy()
        new.replace_species(mapping)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ref_ox = structure.copy()
                ref_ox.add_oxidation_state_by_element(old_oxi)
                new_ox = new.copy()
                new_ox.add_oxidation_state_by_element(new_oxi)
            except Exception:  # an ion pymatgen cannot build: keep the reference volume
                return Crystal.from_structure(new)
        volume = ionic_volume(ref_ox, new_ox)
        if volume is not None:
            new.scale_lattice(volume)
        return Crystal.from_structure(new)


# DFT labels of the reference tables, by objective property (perov5 has none comparable).
_LABELS = {"band_gap": "band_gap", "formation_energy": "formation_energy_per_atom"}
_FIT_SCALE = 0.25  # eV or eV/atom: misses smaller than this barely lower the preference


def _label_fit(table, request: DesignRequest) -> np.ndarray:
    """Per row, a Gaussian log-weight of how far its DFT labels miss the request's
    target/below/above objectives (0 where met or unlabelled; minimise/maximise: the value in
    units of 1 eV, signed). Substitution keeps the structure type and mostly the chemistry
    class, so parents that already meet the request pass it on more often than not."""
    fit = np.zeros(len(table))
    for obj in request.objectives:
        column = _LABELS.get(obj.property)
        if column is None or column not in table.columns:
            continue
        if obj.property == "band_gap" and obj.fidelity not in (None, "pbe"):
            continue  # the tables hold PBE gaps
        x = table[column].to_numpy(dtype=float)
        if obj.goal == "target":
            scale = max(obj.tolerance or 0.0, _FIT_SCALE)
            miss = np.maximum(np.abs(x - obj.value) - (obj.tolerance or 0.0), 0.0) / scale
        elif obj.goal == "below":
            miss = np.maximum(x - obj.value, 0.0) / _FIT_SCALE
        elif obj.goal == "above":
            miss = np.maximum(obj.value - x, 0.0) / _FIT_SCALE
        else:
            sign = 1.0 if obj.goal == "minimize" else -1.0
            fit -= np.nan_to_num(sign * x)
            continue
        fit -= obj.weight * np.nan_to_num(miss) ** 2 / 2
    return fit


@cache
def _static_e_hull_index() -> dict[tuple[str, str, str], float]:
    """(dataset, split, material_id) -> CHGNet static E_hull (eV/atom) of the reference hull."""
    import pandas as pd

    from ml.evaluation.hull import hull_table_path

    path = hull_table_path("chgnet")
    if not path.is_file():
        return {}
    t = pd.read_csv(path, usecols=["dataset", "split", "material_id", "e_hull_static"])
    return {
        (d, sp, str(m)): float(e)
        for d, sp, m, e in zip(
            t["dataset"], t["split"], t["material_id"], t["e_hull_static"], strict=True
        )
    }


def _parent_e_hull(dataset: str, split: str, ids: np.ndarray) -> np.ndarray:
    index = _static_e_hull_index()
    if not index:  # no table: no stability filter rather than no references
        return np.zeros(len(ids))
    return np.array([index.get((dataset, split, i), math.nan) for i in ids])


def _candidate(proposal: _Proposal, crystal: Crystal) -> Candidate:
    return Candidate(
        crystal=crystal,
        # A loss, as the ranking expects: lower is more probable.
        method_score=-math.log10(proposal.probability),
        meta={
            "reference": proposal.reference.material_id,
            "reference_formula": proposal.reference.formula,
            "reference_space_group": proposal.reference.space_group,
            "substitutions": {
                f"{Species(el, q)}": f"{Species(nel, nq)}"
                for (el, q), (nel, nq) in zip(proposal.ions, proposal.new_ions, strict=True)
            },
            "probability": proposal.probability,
        },
    )


@cache
def _known_ions() -> frozenset[tuple[str, int]]:
    """(element, charge) of every ion the substitution model has data for."""
    model = _probability_model()
    return frozenset((sp.symbol, int(sp.oxi_state)) for sp in model.species)  # type: ignore[attr-defined]


@lru_cache(maxsize=4096)
def _replacements(
    el: str, q: int, targets: tuple[tuple[str, int], ...], k: int
) -> list[tuple[float, tuple[str, int]]]:
    """The ``k`` most probable replacements of ion ``el``^``q`` among ``targets`` (same sign),
    as plain (probability, (symbol, charge)) pairs: a scan combines them in a tight loop, and
    pymatgen's Species attributes are slow to read."""
    model = _probability_model()
    old = Species(el, q)
    ranked = sorted(
        (
            (model.cond_prob(Species(*new), old), new)  # type: ignore[attr-defined]
            for new in targets
            if (new[1] > 0) == (q > 0)
        ),
        key=lambda t: (-t[0], str(Species(*t[1]))),
    )
    return ranked[:k]


def likely_replacements(
    el: str, q: int, targets: tuple[tuple[str, int], ...], k: int
) -> list[tuple[float, tuple[str, int]]]:
    """The ``k`` ions of ``targets`` (same sign as ``q``) most likely to replace ``el``^``q``
    in a known structure by the data-mined model, most probable first: (probability, ion).
    Ions the model never saw are left out of ``targets``; when it never saw ``el``^``q``
    itself, the targets rank by how common each ion is (its marginal probability)."""
    known = _known_ions()
    targets = tuple(t for t in targets if t in known)
    if (el, q) in known:
        return _replacements(el, q, targets, k)
    model = _probability_model()
    ranked = sorted(
        (
            (model.get_px(Species(*new)), new)  # type: ignore[attr-defined]
            for new in targets
            if (new[1] > 0) == (q > 0)
        ),
        key=lambda t: (-t[0], str(Species(*t[1]))),
    )
    return ranked[:k]


def ionic_volume(reference: Structure, substituted: Structure) -> float | None:
    """The volume of ``substituted`` (``reference``'s cell with some species exchanged; both
    with oxidation states) scaled from ``reference``'s by ionic radii (pymatgen's reference
    lattice scaling, ``RLSVolumePredictor``); None where a radius is missing."""
    from pymatgen.core.structure_prediction.volume_predictor import RLSVolumePredictor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            volume = RLSVolumePredictor(check_isostructural=False, use_bv=False).predict(
                substituted, reference
            )
        except Exception:  # no radii for an exotic ion
            return None
    return float(volume) if math.isfinite(volume) and volume > 0 else None


def _formula_after(
    counts: dict[str, float],
    ions: tuple[tuple[str, int], ...],
    new_ions: tuple[tuple[str, int], ...],
) -> str:
    amounts = ((nel, counts[el]) for (el, _), (nel, _) in zip(ions, new_ions, strict=True))
    return _reduced_formula(tuple(sorted(amounts)))


@lru_cache(maxsize=1 << 16)
def _reduced_formula(amounts: tuple[tuple[str, float], ...]) -> str:
    # Many references share a formula, so a scan meets the same exchange many times.
    return Composition(dict(amounts)).reduced_formula


def _is_perovskite(formula: str) -> bool:
    from ml.constraints import is_perovskite

    return bool(is_perovskite(formula))


def _reference_crystal(key: str, templates: list[str] | None) -> Crystal | None:
    kind, _, rest = key.partition("/")
    if kind == "template":
        assert templates is not None
        return Crystal.from_cif(templates[int(rest)])
    from ml.data.cache import get_store

    split, _, row = rest.partition("/")
    return get_store(kind, split).crystal_at(int(row))


def _pause(seconds: float, ctx: MethodContext) -> None:
    """Sleep in short slices so a cancel request is seen promptly."""
    end = time.monotonic() + seconds
    while True:
        ctx.check_cancelled()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.1))


def substituted_compositions(request: DesignRequest, count: int) -> list[tuple[str, int]]:
    """Up to ``count`` (new reduced formula, atoms per cell of its parent), most probable
    first: the formulas this baseline proposes for ``request`` (default parameters: stable,
    property-matched parents; known formulas skipped), without building structures. This is
    the method's output order with ``prescreen`` 1; its default pre-screen reorders the
    built crystals by their oracle-predicted properties, which needs structures. Other
    methods use them as novel compositions with a data-mined chance of being stable; [] when
    the request's elements give the substitution model nothing to work with."""
    method = SubstitutionMethod()
    try:
        params = method.validate(request.model_copy(update={"params": {}}))
    except RequestError:
        return []
    rng = np.random.default_rng(request.seed)
    references, known = method._references(request, params, rng)
    scan = method._propose(request, params, references, known, MethodContext())
    while True:
        try:
            next(scan)  # progress events: nobody is watching
        except StopIteration as done:
            proposals: list[_Proposal] = done.value
            break
    out: dict[str, int] = {}
    for p in method._choose(proposals, request, params, rng, 2 * count + 16):
        formula = _formula_after(_counts(p.reference.formula), p.ions, p.new_ions)
        out.setdefault(formula, p.reference.n_atoms)
    return list(out.items())[:count]
