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

from ml.pipeline.evaluation import evaluate_candidates
from ml.pipeline.oracle_choice import oracle_plan, stability_oracle, warm_up
from ml.pipeline.ranking import (
    apply_final_hits,
    extremal_cutoffs,
    final_hits,
    rank_candidates,
    summarize,
    within_stability_limit,
)
from ml.pipeline.scored import (
    EHULL_CONSTRAINT,
    FINGERPRINT_DECIMALS,
    STABILITY_RELAX_FMAX,
    STABILITY_RELAX_STEPS,
    OracleScore,
    ScoredCandidate,
    candidate_identity,
    fingerprint,
)

__all__ = [
    "EHULL_CONSTRAINT",
    "FINGERPRINT_DECIMALS",
    "STABILITY_RELAX_FMAX",
    "STABILITY_RELAX_STEPS",
    "OracleScore",
    "ScoredCandidate",
    "apply_final_hits",
    "candidate_identity",
    "evaluate_candidates",
    "extremal_cutoffs",
    "final_hits",
    "fingerprint",
    "oracle_plan",
    "rank_candidates",
    "stability_oracle",
    "summarize",
    "warm_up",
    "within_stability_limit",
]
