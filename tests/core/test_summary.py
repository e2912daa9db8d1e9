"""Job summaries on hand-built scored candidates: the S.U.N.-hit figures (issue 12) and hits for
minimize/maximize objectives (issue 11, fix 5). No models: only the pipeline's bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest

from ml.crystal import Crystal
from ml.evaluation.metrics import EXTREMAL_TOP_FRACTION, top_cutoff
from ml.pipeline import (
    OracleScore,
    ScoredCandidate,
    apply_final_hits,
    extremal_cutoffs,
    final_hits,
    rank_candidates,
    summarize,
)
from ml.request import DesignRequest, Objective


def _candidate(
    *,
    valid: bool = True,
    stable: bool = False,
    metastable: bool = False,
    unique: bool = True,
    novel: bool = True,
    hit: bool = False,
    constraints: bool = True,
    scores: dict[str, float | None] | None = None,
) -> ScoredCandidate:
    crystal = Crystal(np.eye(3) * 4.0, [[0, 0, 0], [0.5, 0.5, 0.5]], [11, 17])
    return ScoredCandidate(
        crystal=crystal,
        relaxed=None,
        formula="NaCl",
        n_atoms=2,
        space_group=221,
        scores={k: OracleScore(v, "x", "hand", "0") for k, v in (scores or {}).items()},
        flags={
            "valid": valid,
            "charge_neutral": valid,
            "unique": unique,
            "novel": novel,
            "stable": stable,
            "metastable": metastable or stable,
            "hit": hit,
            "constraints": constraints,
        },
        energy_above_hull=None,
        method_score=None,
    )


GAP_REQUEST = DesignRequest(
    method="x",
    objectives=[Objective(property="band_gap", goal="target", value=1.5, tolerance=0.2)],
)


def test_sun_hit_counts_need_every_condition() -> None:
    scored = [
        _candidate(stable=True, hit=True),  # stable S.U.N.-hit (and metastable)
        _candidate(metastable=True, hit=True),  # metastable S.U.N.-hit only
        _candidate(metastable=True, hit=True),  # another
        _candidate(metastable=True, hit=False),  # not a hit
        _candidate(stable=True, hit=True, novel=False),  # known material
        _candidate(stable=True, hit=True, unique=False),  # duplicate
        _candidate(hit=True),  # above 0.1 eV/atom
        _candidate(valid=False),
    ]
    s = summarize(scored, GAP_REQUEST)
    assert s["n_candidates"] == 8
    assert s["n_sun_hit"] == 3 and s["sun_hit_rate"] == pytest.approx(3 / 8)
    assert s["n_stable_sun_hit"] == 1 and s["stable_sun_hit_rate"] == pytest.approx(1 / 8)
    assert s["n_hits"] == 6 and s["n_msun"] == 4 and s["n_sun"] == 1
    # relax is true by default: no "unrelaxed" wording
    assert s["stability_basis"] == "relaxed" and "stability_note" not in s
    assert s["n_relax_failed"] == 0
    assert s["extremal_objectives"] == []


def test_sun_hit_on_unrelaxed_crystals_says_so() -> None:
    request = GAP_REQUEST.model_copy(update={"relax": False})
    s = summarize([_candidate(stable=True, hit=True)], request)
    assert s["n_sun_hit"] == 1 and s["sun_hit_rate"] == 1.0
    assert s["stability_basis"] == "unrelaxed"
    assert "unrelaxed" in s["stability_note"] and "S.U.N.-hit" in s["stability_note"]
    empty = summarize([], request)
    assert empty["sun_hit_rate"] == 0.0 and empty["n_sun_hit"] == 0


def _hhi_job(values: list[float | None]) -> list[ScoredCandidate]:
    # The per-candidate step scores a min/max objective as met whenever it is scored.
    return [_candidate(scores={"hhi": v}, hit=v is not None) for v in values]


def test_minimize_only_job_hits_are_the_top_decile() -> None:
    """Before the fix every scored candidate of a min/max-only job was a hit (hit rate =
    scored fraction); now only the job's best tenth is."""
    request = DesignRequest(method="x", objectives=[Objective(property="hhi", goal="minimize")])
    values: list[float | None] = [float(v) for v in range(100, 2100, 100)]  # 20 scored
    scored = _hhi_job([*values, None, None])  # two unscored
    scored.append(_candidate(scores={"hhi": 1.0}, constraints=False))  # violator: not ranked
    scored.append(_candidate(scores={"hhi": 2.0}, valid=False))
    s = summarize(scored, request)
    assert s["n_hits"] == 2 and s["hit_rate"] == pytest.approx(2 / 24)
    [cut] = s["extremal_objectives"]
    assert cut == {
        "property": "hhi",
        "goal": "minimize",
        "top_fraction": EXTREMAL_TOP_FRACTION,
        "cutoff": 200.0,
        "n_ranked": 20,
        "n_top": 2,
    }
    # summarize does not change the flags; apply_final_hits does, for the two best only.
    assert sum(sc.flags["hit"] for sc in scored) == 20
    changed = apply_final_hits(scored, request)
    assert len(changed) == 18
    assert [sc.scores["hhi"].value for sc in scored if sc.flags["hit"]] == [100.0, 200.0]
    assert apply_final_hits(scored, request) == []  # idempotent
    ranked = rank_candidates(scored)
    assert [sc.scores["hhi"].value for sc in ranked[:2]] == [100.0, 200.0]


def test_maximize_with_a_threshold_objective() -> None:
    request = DesignRequest(
        method="x",
        objectives=[
            Objective(property="density", goal="maximize"),
            Objective(property="band_gap", goal="above", value=1.0),
        ],
    )
    # Ten ranked candidates: the top decile is the single densest (9.0), which misses the gap.
    scored = [
        _candidate(scores={"density": float(d), "band_gap": g})
        for d, g in zip(range(10), [2.0] * 9 + [0.5], strict=True)
    ]
    assert extremal_cutoffs(scored, request)[0]["cutoff"] == 9.0
    assert final_hits(scored, request) == [False] * 10
    # Ties at the cutoff count: a second 9.0 with a gap is a hit.
    scored.append(_candidate(scores={"density": 9.0, "band_gap": 3.0}))
    assert extremal_cutoffs(scored, request)[0]["n_top"] == 2
    assert final_hits(scored, request) == [False] * 10 + [True]


def test_top_cutoff() -> None:
    assert top_cutoff([], maximize=False) is None
    assert top_cutoff([3.0, 1.0, 2.0], maximize=False) == (1.0, 1)
    assert top_cutoff([float(v) for v in range(25)], maximize=True) == (22.0, 3)
