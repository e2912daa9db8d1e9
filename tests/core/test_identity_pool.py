"""Uniqueness and novelty judged in pool processes equal the verdicts of the job's process."""

from __future__ import annotations

import numpy as np
import pytest

from ml.crystal import Crystal
from ml.data import load_records
from ml.evaluation.uniqueness import PreparedStructure
from ml.pipeline import identity
from ml.pipeline.identity import MIN_PARALLEL, judge_identity, start_identity_pool
from ml.pipeline.scored import _prepared


def _batch() -> tuple[list[Crystal], list[PreparedStructure]]:
    """Known MP-20 test crystals (not novel), strained copies of them (duplicates within the
    batch), a few already kept by the job (previous) and new compositions."""
    records = load_records("mp20", "test", limit=40)
    known = [r.crystal for r in records]
    strained = []
    for c in known[:20]:
        copy = c.copy()
        copy.lattice = copy.lattice * 1.01
        strained.append(copy)
    odd = []
    for k, c in enumerate(known[:10]):
        copy = c.copy()
        copy.numbers = np.where(copy.numbers == copy.numbers[0], 55 + k % 2, copy.numbers)
        odd.append(copy)
    final = known + strained + odd
    assert len(final) >= MIN_PARALLEL
    previous = [PreparedStructure(c) for c in known[30:35]]
    return final, previous


@pytest.fixture(scope="module")
def pool() -> int:
    started = start_identity_pool(2)
    yield started
    identity._drop_pool()


def test_pool_verdicts_equal_this_process(pool: int) -> None:
    assert pool == 2
    final, previous = _batch()
    in_pool = judge_identity(final, previous, processes=2)
    here = judge_identity(final, previous, processes=0)
    assert in_pool.unique == here.unique
    assert [(n.novel, n.basis, n.reference) for n in in_pool.novelty] == [
        (n.novel, n.basis, n.reference) for n in here.novelty
    ]
    # The batch really holds each kind of verdict.
    assert not all(in_pool.unique) and any(in_pool.unique)
    assert not any(in_pool.unique[30:35])  # kept by the job already
    assert any(n.novel for n in in_pool.novelty) and not all(n.novel for n in in_pool.novelty)
    # The prepared forms came back and are cached for the job's next batch.
    for crystal, p in zip(final, in_pool.prepared, strict=True):
        assert _prepared(crystal) is p or _prepared(crystal).formula == p.formula


def test_a_second_start_uses_the_running_processes(
    pool: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(identity, "_ready", lambda: pytest.fail("processes started again"))
    assert start_identity_pool(2) == 2


def test_small_batches_and_a_failed_pool_stay_in_this_process(
    pool: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    final, previous = _batch()
    expected = judge_identity(final, previous, processes=0).unique

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("pool process killed")

    monkeypatch.setattr(identity, "_judge_group", broken)  # pickled by name: fails in the pool
    assert judge_identity(final, previous, processes=2).unique == expected
    monkeypatch.setattr(identity, "_pool", lambda n: pytest.fail("small batch used the pool"))
    small = judge_identity(final[: MIN_PARALLEL - 1], previous, processes=2)
    assert small.unique == expected[: MIN_PARALLEL - 1]


def test_a_daemonic_process_judges_in_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    class CeleryPreforkChild:
        daemon = True  # multiprocessing gives such a process no children

    monkeypatch.setattr(identity, "_POOL", None)
    monkeypatch.setattr(identity, "_UNAVAILABLE", False)
    monkeypatch.setattr(identity.multiprocessing, "current_process", CeleryPreforkChild)
    final, previous = _batch()
    assert start_identity_pool(2) == 0
    got = judge_identity(final, previous, processes=2)
    assert got.unique == judge_identity(final, previous, processes=0).unique
    assert identity._UNAVAILABLE and identity._POOL is None  # not tried again per batch
