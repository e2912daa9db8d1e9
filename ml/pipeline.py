"""The common candidate pipeline used by every method and by the job runner.

candidates -> structural validity -> constraints -> optional relaxation -> oracle scores
-> evaluation (uniqueness, novelty, energy above hull) -> ranking by the request's objectives.

The data types and signatures are fixed (the service codes against them). Steps of
:func:`evaluate_candidates`, for one batch:

1. structural validity (:mod:`ml.evaluation.validity`). Invalid candidates are kept with every
   flag False, no scores, ``meta["invalid_reason"]``.
2. constraints of the request (:func:`ml.constraints.constraint_violations`: elements,
   max_atoms, composition, charge neutrality when requested, space groups by spglib at
   symprec 0.1, perovskite family), judged on the final (relaxed, else proposed) crystal,
   and ``max_energy_above_hull`` once E_hull is known (step 4; an unscored E_hull does not
   meet it). Violators are scored like the rest but are never hits; ``meta["violations"]``
   names the broken fields and ``flags["constraints"]`` says whether all were met.
3. relaxation when ``request.relax`` (FIRE on positions and cell, fmax 0.1 eV/A, 300 steps) by
   the stability judge (``request.oracles["energy_above_hull"]``, default CHGNet), all valid
   candidates in one batch (:mod:`ml.oracles.batch_relax`). A failed relaxation (NaN
   energy, or a relaxed cell that is no longer valid) leaves ``relaxed`` None and
   ``meta["relax_error"]``; the proposed crystal is scored instead. ``space_group`` is that
   of the relaxed crystal when there is one.
4. oracle scores on the relaxed crystal (else the proposed one), each oracle called once on the
   whole batch: the default oracle of every objective property, plus always
   ``formation_energy`` (chgnet-eform), ``band_gap`` (gap-chgnet-ft), ``density`` and
   ``energy_above_hull``; ``request.oracles`` replaces a default by name. ``scores["band_gap"]``
   is at the fidelity of the first band-gap objective; when that is not PBE, the PBE gap is also
   kept as ``scores["band_gap_pbe"]``. The judge runs once per crystal: its energy per atom
   (from the relaxation, else one batched call) gives both the same model's formation energy
   (minus its elemental references) and E_hull (against its own relaxed-reference
   :class:`ml.evaluation.hull.ReferenceHull`). Band gaps are clipped at 0 (a
   regression oracle such as MEGNet can return negative gaps); the raw value is kept in
   ``meta["raw_scores"][key]``.
5. flags: ``valid``, ``charge_neutral`` (strict when the request asks for neutrality, else
   all-metal compositions pass too: see :mod:`ml.constraints`), ``unique`` (no match among
   ``previous`` and earlier kept candidates of the batch, judged on the final crystals),
   ``novel`` (:meth:`ml.evaluation.novelty.ReferenceSet.judge`: no reference structure
   matches and no MP-20 train material known only by formula could be the same;
   ``meta["novelty_basis"]`` says which, ``meta["novelty_reference"]`` names the material),
   ``stable`` (E_hull <= 0), ``metastable`` (E_hull <= 0.1 eV/atom), both with a 5 meV/atom
   tolerance (:data:`ml.evaluation.metrics.EHULL_TOLERANCE`), ``hit`` (all
   objectives and constraints met, see :func:`final_hits`), ``constraints``.
6. ``objective_loss = request.objective_loss(values)`` (inf when unscored).

Hits with minimize/maximize objectives: such an objective has no threshold, so it is met by
the top decile (``EXTREMAL_TOP_FRACTION``, at least one candidate, ties included) of the
valid, constraint-meeting candidates scored for it. :func:`evaluate_candidates` applies this
over its batch; the job runner applies it again over the whole job before ranking
(:func:`apply_final_hits`), and :func:`summarize` reports the cutoffs.

Oracles, the hull and the reference set are built once per process and reused.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any

import numpy as np

from ml.constraints import composition_of, constraint_violations, neutrality_ok, space_group_number
from ml.crystal import Crystal
from ml.evaluation.metrics import (
    EXTREMAL_TOP_FRACTION,
    count,
    msun_rate,
    rate,
    stability_flags,
    stable_sun_hit_rate,
    sun_hit_rate,
    sun_rate,
    top_cutoff,
)
from ml.evaluation.novelty import get_reference_set
from ml.evaluation.uniqueness import PreparedStructure, unique_flags
from ml.evaluation.validity import check_validity
from ml.methods.base import Candidate
from ml.request import DesignRequest


@dataclass
class OracleScore:
    value: float | None  # None when the oracle could not score the structure
    unit: str
    oracle: str
    version: str


@dataclass
class ScoredCandidate:
    crystal: Crystal
    relaxed: Crystal | None
    formula: str
    n_atoms: int
    space_group: int | None
    # property name (e.g. "formation_energy") -> score by the default oracle for it
    scores: dict[str, OracleScore]
    # valid, charge_neutral, unique, novel, stable, metastable, hit
    flags: dict[str, bool]
    energy_above_hull: float | None
    method_score: float | None
    predicted: dict[str, float] = field(default_factory=dict)
    objective_loss: float = float("inf")
    rank: int | None = None
    # Stable content hash of the unrelaxed crystal: the key that makes storage idempotent.
    fingerprint: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


STABILITY_RELAX_FMAX = 0.1  # eV/A, evaluation.md
STABILITY_RELAX_STEPS = 300
FINGERPRINT_DECIMALS = 6
_BASE_ORACLES = {
    "formation_energy": "chgnet-eform",
    "band_gap": "gap-chgnet-ft",
    "density": "density",
}
# Score keys holding band gaps: clipped at 0 (step 4 of the module docstring).
_GAP_KEYS = frozenset({"band_gap", "band_gap_pbe"})
# The violation name of the stability constraint (the request field).
EHULL_CONSTRAINT = "max_energy_above_hull"
_FLAG_NAMES = (
    "valid",
    "charge_neutral",
    "unique",
    "novel",
    "stable",
    "metastable",
    "hit",
    "constraints",
)
# Primitive cells of crystals already seen (``previous`` recurs batch after batch), by
# fingerprint; bounded so a long job cannot grow it without limit.
_PREPARED: OrderedDict[str, PreparedStructure | None] = OrderedDict()
_PREPARED_MAX = 50_000
_LOCK = threading.Lock()


def fingerprint(crystal: Crystal) -> str:
    """SHA-256 of the lattice (Å) and wrapped fractional coordinates rounded to 1e-6, and the
    atomic numbers: equal for the same cell and site order, whatever the float noise."""
    lat = np.round(crystal.lattice, FINGERPRINT_DECIMALS) + 0.0  # +0.0 turns -0.0 into 0.0
    frac = np.round(np.mod(crystal.frac_coords, 1.0), FINGERPRINT_DECIMALS)
    frac = np.mod(frac, 1.0) + 0.0  # 0.9999999 rounds to 1.0: wrap it to 0.0
    h = hashlib.sha256(b"matdesign-crystal-v1")
    h.update(np.ascontiguousarray(lat, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(frac, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(crystal.numbers, dtype=np.int64).tobytes())
    return h.hexdigest()


def _prepared(crystal: Crystal) -> PreparedStructure | None:
    """Primitive cell for matching, cached by fingerprint; None for a crystal pymatgen cannot
    even build (e.g. an invalid one passed in ``previous``)."""
    key = fingerprint(crystal)
    with _LOCK:
        if key in _PREPARED:
            _PREPARED.move_to_end(key)
            return _PREPARED[key]
    try:
        prepared: PreparedStructure | None = PreparedStructure(crystal)
    except Exception:
        prepared = None
    with _LOCK:
        _PREPARED[key] = prepared
        while len(_PREPARED) > _PREPARED_MAX:
            _PREPARED.popitem(last=False)
    return prepared


def oracle_plan(request: DesignRequest, judge: str | None = None) -> dict[str, str]:
    """Score key -> oracle name for a request (see the module docstring). With ``judge`` (the
    stability oracle), formation energy defaults to the judge's model, from the same energies."""
    from ml.oracles.registry import EFORM_OF_ENERGY, default_oracle_name

    plan = dict(_BASE_ORACLES)
    gap_set = False
    for objective in request.objectives:
        prop = objective.property
        if prop == "energy_above_hull":
            continue  # computed from CHGNet energies and the hull, not a registry oracle
        if prop == "band_gap":
            if not gap_set:
                plan["band_gap"] = default_oracle_name("band_gap", objective.fidelity)
                gap_set = True
            continue
        plan.setdefault(prop, default_oracle_name(prop))
    if plan["band_gap"] != _BASE_ORACLES["band_gap"]:
        plan["band_gap_pbe"] = _BASE_ORACLES["band_gap"]
    if judge in EFORM_OF_ENERGY and "formation_energy" not in request.oracles:
        plan["formation_energy"] = EFORM_OF_ENERGY[judge]
    # Oracles the request names replace the defaults for their property.
    plan.update({k: v for k, v in request.oracles.items() if k != "energy_above_hull"})
    return plan


def stability_oracle(request: DesignRequest, device: str | None = None) -> str:
    """The energy oracle that relaxes the candidates and judges their energy above hull: the
    request's choice, else the default for ``device`` (SevenNet-l3i5 on a GPU, CHGNet on a
    CPU)."""
    from ml.oracles.registry import default_stability_oracle

    return request.oracles.get("energy_above_hull") or default_stability_oracle(device)


@lru_cache(maxsize=4)
def _reference_hull(model: str) -> Any:
    from ml.evaluation.hull import ReferenceHull

    return ReferenceHull.load(model=model)


def warm_up(device: str | None = None) -> dict[str, float]:
    """Load what every job's evaluation needs (default oracles, CHGNet energies, the reference
    hull and the novelty reference set) into this process's caches; seconds per part.

    Workers call it when they start, so their first job does not pay these loads."""
    import time

    from ml.oracles.registry import (
        EFORM_OF_ENERGY,
        ENERGY_MODEL_OF,
        default_stability_oracle,
        get_oracle,
    )

    judge = default_stability_oracle(device)
    loads: dict[str, Callable[[], object]] = {
        name: partial(get_oracle, name, device)
        for name in (judge, EFORM_OF_ENERGY[judge], *_BASE_ORACLES.values())
    }
    model = ENERGY_MODEL_OF[judge]
    loads.update(hull=partial(_reference_hull, model), novelty=get_reference_set)
    took: dict[str, float] = {}
    for part, load in loads.items():
        t0 = time.perf_counter()
        load()
        took[part] = round(time.perf_counter() - t0, 2)
    return took


def _hull_version(hull: Any) -> str:
    return str(getattr(hull, "version", "reference hull ml/evaluation/data/reference_energies"))


def _safe_formula(crystal: Crystal) -> str:
    try:
        return composition_of(crystal).reduced_formula
    except Exception:  # unknown atomic numbers in an invalid crystal
        return ""


def _nan_to_none(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _relax(
    crystals: list[Crystal], device: str | None, model: str, steps: int = STABILITY_RELAX_STEPS
) -> list[tuple[Crystal | None, float | None, dict[str, Any]]]:
    """(relaxed crystal or None, energy per atom or None, meta) per crystal, all relaxed
    together by ``model``."""
    from ml.oracles.relax import relax_crystals

    out: list[tuple[Crystal | None, float | None, dict[str, Any]]] = []
    results = relax_crystals(
        crystals,
        fmax=STABILITY_RELAX_FMAX,
        steps=steps,
        device=device,
        model=model,
    )
    for res in results:
        meta: dict[str, Any] = {"relax_converged": res.converged, "relax_steps": res.steps}
        energy = _nan_to_none(res.energy_per_atom)
        if energy is None:
            meta["relax_error"] = f"{model} relaxation failed (no finite energy)"
            out.append((None, None, meta))
            continue
        validity = check_validity(res.crystal)
        if not validity:
            meta["relax_error"] = f"relaxed crystal is invalid: {validity.reason}"
            out.append((None, None, meta))
            continue
        out.append((res.crystal, energy, meta))
    return out


def evaluate_candidates(
    candidates: Sequence[Candidate],
    request: DesignRequest,
    *,
    previous: Sequence[Crystal] = (),
    device: str | None = None,
    timings: dict[str, float] | None = None,
    relax_steps: int = STABILITY_RELAX_STEPS,
) -> list[ScoredCandidate]:
    """Check, (optionally) relax, score and evaluate one batch of candidates.

    ``timings``: when given, seconds per phase are added to it (``validity_s``, ``relax_s``,
    ``oracles_s``, ``hull_s``, ``uniqueness_s``, ``novelty_s``), for job summaries.
    ``relax_steps``: FIRE steps at most (the job's protocol is ``STABILITY_RELAX_STEPS``; a
    method screening many crystals itself may bound them lower, and says so).

    ``previous`` holds the crystals already kept by the same job (uniqueness is judged against
    them and against earlier candidates of this batch). Ranks are not assigned here.
    Uniqueness compares final crystals, so pass each kept candidate's ``relaxed or crystal``.
    """
    from ml.oracles.references import energy_correction
    from ml.oracles.registry import ENERGY_MODEL_OF, get_oracle

    clock = _PhaseClock(timings)
    constraints = request.constraints
    judge = stability_oracle(request, device)
    energy_model = ENERGY_MODEL_OF[judge]
    out: list[ScoredCandidate] = []
    eligible: list[int] = []
    for cand in candidates:
        crystal = cand.crystal
        flags = dict.fromkeys(_FLAG_NAMES, False)
        sc = ScoredCandidate(
            crystal=crystal,
            relaxed=None,
            formula=_safe_formula(crystal),
            n_atoms=crystal.num_atoms,
            space_group=None,
            scores={},
            flags=flags,
            energy_above_hull=None,
            method_score=cand.method_score,
            predicted=dict(cand.predicted),
            fingerprint=fingerprint(crystal),
            meta=dict(cand.meta),
        )
        out.append(sc)
        validity = check_validity(crystal)
        if not validity:
            sc.meta["invalid_reason"] = validity.reason
            continue
        flags["valid"] = True
        sc.space_group = space_group_number(crystal)
        flags["charge_neutral"] = neutrality_ok(crystal, requested=constraints.charge_neutral)
        eligible.append(len(out) - 1)

    clock.lap("validity_s")
    if not eligible:
        return out

    # Relaxation (optional), then the crystal each candidate is scored and judged on.
    energies: dict[int, float | None] = {}
    if request.relax:
        relaxed = _relax([out[i].crystal for i in eligible], device, energy_model, relax_steps)
        for i, (crystal, energy, meta) in zip(eligible, relaxed, strict=True):
            out[i].relaxed = crystal
            out[i].meta.update(meta)
            if crystal is not None:
                energies[i] = energy
                out[i].space_group = space_group_number(crystal)
    final = [out[i].relaxed or out[i].crystal for i in eligible]
    clock.lap("relax_s")

    # Constraints are judged on the final crystal (a relaxation may reach the requested
    # space group). Violators are still scored, since the user sees their properties, but
    # are never hits.
    meets: dict[int, bool] = {}
    for k, i in enumerate(eligible):
        violations = constraint_violations(final[k], constraints, space_group=out[i].space_group)
        if violations:
            out[i].meta["violations"] = violations
        out[i].flags["constraints"] = meets[i] = not violations

    # The judge's energy per atom of each final crystal: from the relaxation, else one batched
    # call. It feeds E_hull and (through the elemental references) the same model's formation
    # energy, so the model runs once per crystal, not once per property.
    judge_oracle = get_oracle(judge, device)
    need_energy = [k for k, i in enumerate(eligible) if i not in energies]
    if need_energy:
        energy_oracle = judge_oracle
        preds = energy_oracle.predict([final[k] for k in need_energy])
        for k, v in zip(need_energy, preds, strict=True):
            energies[eligible[k]] = _nan_to_none(float(v))
    energy_array = np.array(
        [math.nan if energies.get(i) is None else energies[i] for i in eligible], dtype=np.float64
    )

    # Oracle scores, each oracle once over the whole batch.
    plan = oracle_plan(request, judge)
    values: dict[int, dict[str, float | None]] = {i: {} for i in eligible}
    for key, name in plan.items():
        oracle = get_oracle(name, device)
        if name == judge:
            preds = energy_array
        elif ENERGY_MODEL_OF.get(name) == energy_model and hasattr(oracle, "eform_from_energies"):
            preds = oracle.eform_from_energies(final, energy_array)
        else:
            preds = oracle.predict(final)
        for i, v in zip(eligible, preds, strict=True):
            value = _nan_to_none(float(v))
            if key in _GAP_KEYS and value is not None and value < 0.0:
                out[i].meta.setdefault("raw_scores", {})[key] = value
                value = 0.0
            values[i][key] = value
            out[i].scores[key] = OracleScore(value, oracle.unit, oracle.name, oracle.version)

    clock.lap("oracles_s")
    # Energy above hull from the same energies, against the model's own relaxed-reference hull.
    hull = _reference_hull(energy_model)
    protocol = (
        f"relaxed (FIRE, fmax {STABILITY_RELAX_FMAX} eV/A, <= {relax_steps} steps)"
        if request.relax
        else "unrelaxed"
    )
    ehull_version = f"{judge_oracle.version}; {_hull_version(hull)}; {protocol}"
    for k, i in enumerate(eligible):
        energy = energies.get(i)
        e_hull = None
        if energy is not None:
            comp = composition_of(final[k])
            corrected = energy + energy_correction(energy_model, comp)
            e_hull = _nan_to_none(hull.e_above_hull(comp, corrected))
        out[i].energy_above_hull = e_hull
        out[i].meta["energy_per_atom"] = energy
        out[i].meta["energy_model"] = energy_model
        values[i]["energy_above_hull"] = e_hull
        out[i].scores["energy_above_hull"] = OracleScore(e_hull, "eV/atom", judge, ehull_version)
        limit = constraints.max_energy_above_hull
        if limit is not None and (e_hull is None or e_hull > limit):
            out[i].meta["violations"] = [*out[i].meta.get("violations", []), EHULL_CONSTRAINT]
            out[i].flags["constraints"] = meets[i] = False

    clock.lap("hull_s")
    # Evaluation flags on the final crystals.
    prepared = [_prepared(c) or PreparedStructure(c) for c in final]  # final ones are valid
    previous_prepared = [p for p in map(_prepared, previous) if p is not None]
    unique = unique_flags(prepared, previous_prepared)
    clock.lap("uniqueness_s")
    refs = get_reference_set()
    novelties = [refs.judge(p) for p in prepared]
    clock.lap("novelty_s")
    for k, i in enumerate(eligible):
        sc = out[i]
        sc.flags["unique"] = unique[k]
        novelty = novelties[k]
        sc.flags["novel"] = novelty.novel
        sc.meta["novelty_basis"] = novelty.basis
        if novelty.reference is not None:
            sc.meta["novelty_reference"] = novelty.reference.material_id
        sc.flags["stable"], sc.flags["metastable"] = stability_flags(sc.energy_above_hull)
        sc.flags["hit"] = meets[i] and request.hit(values[i])
        sc.objective_loss = request.objective_loss(values[i])
    apply_final_hits(out, request)
    return out


class _PhaseClock:
    """Adds the seconds since the previous lap to ``timings[phase]`` (no-op without one)."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        import time

        self.timings = timings
        self._t = time.perf_counter()

    def lap(self, phase: str) -> None:
        import time

        now = time.perf_counter()
        if self.timings is not None:
            self.timings[phase] = self.timings.get(phase, 0.0) + now - self._t
        self._t = now


def _score_values(sc: ScoredCandidate) -> dict[str, float | None]:
    return {key: score.value for key, score in sc.scores.items()}


def _ranked_pool(sc: ScoredCandidate) -> bool:
    return bool(sc.flags.get("valid", False) and sc.flags.get("constraints", True))


def extremal_cutoffs(
    scored: Sequence[ScoredCandidate], request: DesignRequest
) -> list[dict[str, Any]]:
    """For each minimize/maximize objective: the value a candidate must reach to be in the
    top decile of ``scored`` (among valid, constraint-meeting candidates scored for it), with
    ``n_ranked`` (that pool) and ``n_top``; ``cutoff`` None when nobody is scored."""
    out: list[dict[str, Any]] = []
    for objective in request.objectives:
        if not objective.extremal:
            continue
        prop = objective.property
        pool = [
            float(v)
            for sc in scored
            if _ranked_pool(sc) and (v := _score_values(sc).get(prop)) is not None
        ]
        top = top_cutoff(pool, maximize=objective.goal == "maximize")
        out.append(
            {
                "property": prop,
                "goal": objective.goal,
                "top_fraction": EXTREMAL_TOP_FRACTION,
                "cutoff": top[0] if top else None,
                "n_ranked": len(pool),
                "n_top": top[1] if top else 0,
            }
        )
    return out


def final_hits(scored: Sequence[ScoredCandidate], request: DesignRequest) -> list[bool]:
    """Each candidate's hit over the set ``scored`` (a batch or a whole job): every
    target/threshold objective and constraint met, and every minimize/maximize objective in
    the set's top decile (:func:`extremal_cutoffs`). Without min/max objectives these are the
    ``hit`` flags as they stand. Computed from the stored scores, so it can be re-applied."""
    cutoffs = extremal_cutoffs(scored, request)
    if not cutoffs:
        return [bool(sc.flags.get("hit", False)) for sc in scored]
    hits: list[bool] = []
    for sc in scored:
        values = _score_values(sc)
        ok = _ranked_pool(sc) and request.hit(values)
        for c in cutoffs:
            v, cutoff = values.get(c["property"]), c["cutoff"]
            if not ok or v is None or cutoff is None:
                ok = False
                break
            ok = v >= cutoff if c["goal"] == "maximize" else v <= cutoff
        hits.append(ok)
    return hits


def apply_final_hits(scored: Sequence[ScoredCandidate], request: DesignRequest) -> list[int]:
    """Set each candidate's ``hit`` flag to :func:`final_hits`; indices of those changed."""
    changed: list[int] = []
    for k, (sc, hit) in enumerate(zip(scored, final_hits(scored, request), strict=True)):
        if sc.flags.get("hit", False) != hit:
            sc.flags["hit"] = hit
            changed.append(k)
    return changed


def within_stability_limit(
    scored: Sequence[ScoredCandidate], remaining: int
) -> tuple[list[ScoredCandidate], int]:
    """The valid candidates of a batch that meet ``constraints.max_energy_above_hull``, best
    first (ranking order), at most ``remaining`` of them; and how many were rejected."""
    meeting = [
        s
        for s in scored
        if s.flags.get("valid") and EHULL_CONSTRAINT not in s.meta.get("violations", [])
    ]
    return rank_candidates(meeting)[:remaining], len(scored) - len(meeting)


def _sort_key(sc: ScoredCandidate) -> tuple[bool, bool, bool, float, bool, float]:
    loss = sc.objective_loss if sc.objective_loss == sc.objective_loss else math.inf
    ms = sc.method_score
    has_ms = ms is not None and ms == ms
    return (
        not sc.flags.get("valid", False),
        not sc.flags.get("hit", False),
        not sc.flags.get("constraints", False),
        loss,
        not has_ms,
        float(ms) if has_ms else 0.0,  # type: ignore[arg-type]
    )


def rank_candidates(scored: Sequence[ScoredCandidate]) -> list[ScoredCandidate]:
    """Order by (valid, hit, constraints met, objective loss, method score); set ``rank``.

    Valid before invalid, hits before misses, constraint-abiding before violators, lower
    objective loss first, then lower method
    score first (a method's score is a loss; None last); ties keep the input order.
    """
    ranked = sorted(scored, key=_sort_key)
    for r, sc in enumerate(ranked, start=1):
        sc.rank = r
    return ranked


def _best(scored: Sequence[ScoredCandidate], request: DesignRequest) -> dict[str, dict[str, Any]]:
    best: dict[str, dict[str, Any]] = {}
    pool = [s for s in scored if s.flags.get("valid") and s.flags.get("constraints")]
    for objective in request.objectives:
        prop = objective.property
        if prop in best:
            continue
        scored_here = [
            (s, s.scores[prop].value)
            for s in pool
            if prop in s.scores and s.scores[prop].value is not None
        ]
        if not scored_here:
            continue
        s, v = min(scored_here, key=lambda sv: objective.loss(float(sv[1])))
        best[prop] = {
            "value": v,
            "formula": s.formula,
            "fingerprint": s.fingerprint,
            "rank": s.rank,
        }
    return best


def summarize(scored: Sequence[ScoredCandidate], request: DesignRequest) -> dict[str, Any]:
    """Counts and rates for a job summary: n_candidates, n_valid, n_unique, n_novel, n_stable,
    n_metastable, n_hits, hit_rate, sun_rate, msun_rate, the S.U.N.-hit figures, best (per
    objective property) and the min/max objectives' cutoffs.

    Rates are fractions of all candidates. Hits are :func:`final_hits` over ``scored``.
    ``sun_hit_rate`` (the headline): metastable (E_hull <= 0.1 eV/atom), unique, novel and a
    hit; ``stable_sun_hit_rate`` the same with E_hull <= 0. ``stability_basis`` says whether
    stability was judged after relaxation or, with ``relax`` false, on the unrelaxed crystals
    (then ``stability_note`` says so in words). ``best[property]`` is the value with the
    lowest objective loss among valid candidates meeting the constraints (with its formula,
    fingerprint and rank).
    """
    hits = final_hits(scored, request)
    flags = [{**s.flags, "hit": h} for s, h in zip(scored, hits, strict=True)]
    n = len(scored)
    out: dict[str, Any] = {
        "n_candidates": n,
        "n_valid": count(flags, "valid"),
        "n_constraints_ok": count(flags, "constraints"),
        "n_charge_neutral": count(flags, "charge_neutral"),
        "n_unique": count(flags, "unique"),
        "n_novel": count(flags, "novel"),
        "n_stable": count(flags, "stable"),
        "n_metastable": count(flags, "metastable"),
        "n_hits": count(flags, "hit"),
        "n_sun": count(flags, "stable", "unique", "novel"),
        "n_msun": count(flags, "metastable", "unique", "novel"),
        "n_sun_hit": count(flags, "metastable", "unique", "novel", "hit"),
        "n_stable_sun_hit": count(flags, "stable", "unique", "novel", "hit"),
        "hit_rate": rate(flags, "hit"),
        "sun_rate": sun_rate(flags),
        "msun_rate": msun_rate(flags),
        "sun_hit_rate": sun_hit_rate(flags),
        "stable_sun_hit_rate": stable_sun_hit_rate(flags),
        "valid_rate": rate(flags, "valid"),
        "stability_basis": "relaxed" if request.relax else "unrelaxed",
        "extremal_objectives": extremal_cutoffs(scored, request),
        "best": _best(scored, request),
    }
    if request.relax:
        # Candidates whose relaxation failed are judged on the proposed crystal.
        out["n_relax_failed"] = sum(1 for s in scored if "relax_error" in s.meta)
    else:
        out["stability_note"] = (
            "relax is false: stable, metastable, S.U.N. and S.U.N.-hit figures are judged on "
            "the unrelaxed (proposed) crystals"
        )
    return out
