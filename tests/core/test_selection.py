"""Over-generation and selection (issue 12: "over-generates then returns the best
num_candidates"), on hand-built scored candidates: S.U.N. hits are kept as they come, the rest
wait and fill the places left best first, a stability limit rejects, and oversample 1 keeps
the first ones as before. No models: only the pipeline's bookkeeping."""

from __future__ import annotations

from ml.pipeline import rank_candidates
from ml.pipeline.generation import (
    EHULL_OVERSAMPLE,
    Selection,
    generation_request,
    oversample_factor,
)
from ml.pipeline.scored import EHULL_CONSTRAINT

from .test_summary import GAP_REQUEST, _candidate


def _request(n: int, oversample: int, limit: float | None = None):  # type: ignore[no-untyped-def]
    cons = GAP_REQUEST.constraints.model_copy(update={"max_energy_above_hull": limit})
    return GAP_REQUEST.model_copy(
        update={"num_candidates": n, "oversample": oversample, "constraints": cons}
    )


def _sun_hit():  # type: ignore[no-untyped-def]
    return _candidate(hit=True, metastable=True, scores={"band_gap": 1.5})


def _plain_hit():  # type: ignore[no-untyped-def]
    return _candidate(hit=True, metastable=False, scores={"band_gap": 1.5})


def _miss(gap: float):  # type: ignore[no-untyped-def]
    sc = _candidate(hit=False, metastable=True, scores={"band_gap": gap})
    sc.objective_loss = GAP_REQUEST.objective_loss({"band_gap": gap})
    return sc


def _ids(scored: list) -> list[int]:  # type: ignore[type-arg]
    return [id(s) for s in scored]


def test_the_method_is_asked_for_oversample_times_the_request() -> None:
    assert generation_request(_request(8, 4)).num_candidates == 32
    assert generation_request(_request(8, 1)).num_candidates == 8
    # A stability limit over-generates at least EHULL_OVERSAMPLE times.
    assert oversample_factor(_request(8, 1, limit=0.1)) == EHULL_OVERSAMPLE
    assert oversample_factor(_request(8, 8, limit=0.1)) == 8


def test_oversample_one_keeps_the_first_candidates_as_they_come() -> None:
    sel = Selection(_request(3, 1))
    batch = [_miss(0.1), _sun_hit(), _miss(0.2), _sun_hit()]
    admitted = sel.admit(batch)
    assert admitted == batch[:3]
    now, rejected = sel.take(admitted)
    assert now == batch[:3] and rejected == 0 and sel.full
    assert sel.flush() == ([], 0)


def test_sun_hits_are_kept_at_once_and_the_rest_fill_best_first() -> None:
    sel = Selection(_request(3, 4))
    first = [_miss(3.0), _sun_hit(), _plain_hit(), _miss(1.8)]
    assert sel.admit(first) == first  # over-generating: the whole batch is scored
    now, _ = sel.take(first)
    assert now == [first[1]] and sel.kept == 1 and not sel.full
    second = [_miss(2.5), _sun_hit()]
    now, _ = sel.take(second)
    assert now == [second[1]] and sel.kept == 2
    # The method is done: one place left, the plain hit ranks before every miss.
    now, not_selected = sel.flush()
    assert now == [first[2]] and not_selected == 3 and sel.full
    assert all(s.rank is None for s in now)  # ranks are the job's, set at the end
    # With two places the closer miss (1.8 eV for a 1.5 eV target) comes next.
    sel = Selection(_request(4, 4))
    sel.take(first)
    sel.take(second)
    now, _ = sel.flush()
    assert _ids(now) == _ids([first[2], first[3]])


def test_a_full_job_scores_nothing_more() -> None:
    sel = Selection(_request(1, 4))
    sel.take([_sun_hit()])
    assert sel.full and sel.admit([_sun_hit()]) == []


def test_a_stability_limit_rejects_and_never_returns_the_violators() -> None:
    sel = Selection(_request(2, 1, limit=0.1))
    over = _sun_hit()
    over.meta["violations"] = [EHULL_CONSTRAINT]
    invalid = _candidate(valid=False)
    ok = _miss(1.0)
    now, rejected = sel.take([over, invalid, ok])
    assert now == [] and rejected == 2
    now, not_selected = sel.flush()
    assert now == [ok] and not_selected == 0 and not sel.full


def test_ranking_puts_sun_hits_before_other_hits() -> None:
    plain, sun, miss = _plain_hit(), _sun_hit(), _miss(1.5)
    assert rank_candidates([miss, plain, sun]) == [sun, plain, miss]


def test_server_default_oversample_fits_the_deployment() -> None:
    from app.settings import EMBEDDED_BROKER, Settings

    embedded = Settings(broker_url=EMBEDDED_BROKER)
    celery = Settings(broker_url="redis://127.0.0.1:6379/0")
    assert embedded.embedded and embedded.oversample_default(8) == 1
    assert celery.oversample_default(64) == 4
    # Larger jobs over-generate only up to one GPU pass (a 1,024 job stays ~2 minutes).
    assert [celery.oversample_default(n) for n in (256, 300, 512, 1024, 1500)] == [4, 3, 2, 1, 1]
    # A screening-size job (sharded) returns what it generates.
    assert celery.oversample_default(celery.shard_min_candidates) == 1
    assert Settings(default_oversample=2).oversample_default(8) == 2
