""":func:`evaluate_candidates`: one batch through validity, constraints, relaxation, oracles and
the evaluation flags (steps 1-6 of :mod:`ml.pipeline`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ml.constraints import composition_of, constraint_violations, neutrality_ok, space_group_number
from ml.crystal import Crystal
from ml.evaluation.metrics import (
    stability_flags,
)
from ml.evaluation.validity import check_validity
from ml.methods.base import Candidate
from ml.oracles.chgnet_device import (
    DeviceChgnetScores,
    device_graphs_enabled,
    score_on_device,
    with_stock_fallback,
)
from ml.pipeline.identity import judge_identity
from ml.pipeline.oracle_choice import (
    _GAP_KEYS,
    _hull_version,
    _reference_hull,
    oracle_plan,
    stability_oracle,
)
from ml.pipeline.ranking import apply_final_hits
from ml.pipeline.scored import (
    _FLAG_NAMES,
    EHULL_CONSTRAINT,
    STABILITY_RELAX_FMAX,
    STABILITY_RELAX_STEPS,
    OracleScore,
    ScoredCandidate,
    _prepared,
    candidate_identity,
)
from ml.request import DesignRequest


def _safe_formula(crystal: Crystal) -> str:
    try:
        return composition_of(crystal).reduced_formula
    except Exception:  # unknown atomic numbers in an invalid crystal
        return ""


def _nan_to_none(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


# Below any compound's total energy per atom in MP (PBE, the lowest near -13 eV/atom), and so
# in the energy models trained on it: a relaxed energy under it is a runaway, not a result.
RELAXED_ENERGY_FLOOR = -20.0


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
        if energy < RELAXED_ENERGY_FLOOR:
            # A potential driven outside its training data (atoms collapsing) can descend
            # without bound while the cell still passes the distance checks.
            meta["relax_error"] = (
                f"{model} relaxation ran away ({energy:.1f} eV/atom, below "
                f"{RELAXED_ENERGY_FLOOR:g})"
            )
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
    ``oracles_s``, ``hull_s``, ``uniqueness_novelty_s``), for job summaries.
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
            fingerprint=candidate_identity(cand),
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
    graphs = GraphCache(final)
    need_energy = [k for k, i in enumerate(eligible) if i not in energies]
    if need_energy:
        preds = graphs.predict(judge_oracle, need_energy)
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
            preds = graphs.predict(oracle, range(len(final)))
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
    previous_prepared = [p for p in map(_prepared, previous) if p is not None]
    identity = judge_identity(final, previous_prepared)  # final ones are valid
    unique, novelties = identity.unique, identity.novelty
    clock.lap("uniqueness_novelty_s")
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


_UNBUILT = object()


class GraphCache:
    """Input graphs of one batch's final crystals, per graph builder: oracles on one backbone
    (the CHGNet judge and the trained band-gap model share CHGNet's 6 / 3 A graphs) build
    each crystal's graph once, not once per oracle."""

    def __init__(self, crystals: Sequence[Crystal]) -> None:
        self.crystals = crystals
        self.built: dict[object, list[Any]] = {}
        self.device_scores: dict[str, DeviceChgnetScores] = {}

    def predict(self, oracle: Any, ks: Sequence[int]) -> np.ndarray:
        """``oracle``'s predictions for the crystals at positions ``ks``."""
        make = getattr(oracle, "graph_builder", None)
        if make is None or not hasattr(oracle, "predict_graphs"):
            return oracle.predict([self.crystals[k] for k in ks])
        values = self._predict_graphs(oracle, make, ks)
        # CHGNet-Eform's graphs give the backbone's energy per atom (its ``predict`` subtracts
        # the elemental references afterwards): without this, a formation-energy key read
        # through the cache held total energies (-8 eV/atom for a -3 eV/atom oxide).
        to_eform = getattr(oracle, "eform_from_energies", None)
        if to_eform is not None:
            values = to_eform([self.crystals[k] for k in ks], values)
        return values

    def _predict_graphs(self, oracle: Any, make: Any, ks: Sequence[int]) -> np.ndarray:
        field = getattr(oracle, "device_field", None)
        if field is not None and device_graphs_enabled(oracle.device):
            return self._predict_on_device(oracle, field, ks)
        builder = make()
        graphs = self.built.setdefault(builder, [_UNBUILT] * len(self.crystals))
        for k in ks:
            if graphs[k] is _UNBUILT:
                graphs[k] = builder(self.crystals[k])
        return oracle.predict_graphs([graphs[k] for k in ks])

    def _predict_on_device(self, oracle: Any, field: str, ks: Sequence[int]) -> np.ndarray:
        """One torch pass per batch and device for every CHGNet-backbone oracle (the judge's
        energies and the trained gaps together); crystals it cannot take go the stock way."""
        scores = self.device_scores.get(oracle.device)
        if scores is None:
            scores = score_on_device(self.crystals, oracle.device)
            self.device_scores[oracle.device] = scores
        ks = list(ks)
        picked = DeviceChgnetScores(scores.energy[ks], scores.band_gap[ks], scores.supported[ks])
        builder = oracle.graph_builder()
        return with_stock_fallback(
            picked,
            field,
            lambda rest: oracle.predict_graphs([builder(self.crystals[ks[r]]) for r in rest]),
        )


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
