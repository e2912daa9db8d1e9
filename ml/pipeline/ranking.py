"""Hits over a whole job, ranking by the request's objectives, and the job summary."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ml.evaluation.metrics import (
    EXTREMAL_TOP_FRACTION,
    count,
    msun_rate,
    rate,
    stable_sun_hit_rate,
    sun_hit_rate,
    sun_rate,
    top_cutoff,
)
from ml.pipeline.scored import EHULL_CONSTRAINT, ScoredCandidate
from ml.request import DesignRequest


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


def is_sun_hit(sc: ScoredCandidate) -> bool:
    """A hit that is metastable, unique and novel: what the lab can use."""
    return all(sc.flags.get(k, False) for k in ("hit", "metastable", "unique", "novel"))


def _sort_key(sc: ScoredCandidate) -> tuple[bool, bool, bool, bool, float, bool, float]:
    loss = sc.objective_loss if sc.objective_loss == sc.objective_loss else math.inf
    ms = sc.method_score
    has_ms = ms is not None and ms == ms
    return (
        not sc.flags.get("valid", False),
        not sc.flags.get("hit", False),
        not is_sun_hit(sc),  # among hits, those a lab can use come first
        not sc.flags.get("constraints", False),
        loss,
        not has_ms,
        float(ms) if has_ms else 0.0,  # type: ignore[arg-type]
    )


def rank_candidates(scored: Sequence[ScoredCandidate]) -> list[ScoredCandidate]:
    """Order by (valid, hit, S.U.N. hit, constraints met, objective loss, method score); set
    ``rank``.

    Valid before invalid, hits before misses, hits that are metastable, unique and novel
    before other hits, constraint-abiding before violators, lower
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
