"""Uniqueness and novelty judged in pool processes equal the verdicts of the job's process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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


def test_small_batches_and_a_killed_pool_stay_in_this_process(
    pool: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    final, previous = _batch()
    expected = judge_identity(final, previous, processes=0).unique
    running = identity._POOL
    assert running is not None
    for process in list(running._processes.values()):  # the pool breaks as in an OOM kill
        process.kill()
        process.join()
    assert judge_identity(final, previous, processes=2).unique == expected
    assert identity._POOL is None  # dropped: the next warm-up or batch starts a new one
    monkeypatch.setattr(identity, "_pool", lambda n: pytest.fail("small batch used the pool"))
    small = judge_identity(final[: MIN_PARALLEL - 1], previous, processes=2)
    assert small.unique == expected[: MIN_PARALLEL - 1]


# A Celery prefork child: a daemonic billiard process (billiard makes it multiprocessing's
# current process too), which starts the pool at warm-up and judges a batch in it.
_PREFORK_CHILD = """
import os, time
import billiard
import multiprocessing
from ml.data import load_records
from ml.pipeline import identity

def job_process():
    assert multiprocessing.current_process().daemon
    assert identity.start_identity_pool(1) == 1
    final = [r.crystal for r in load_records("mp20", "test", limit=identity.MIN_PARALLEL)]
    in_pool = identity.judge_identity(final, processes=1)
    assert identity._POOL is not None  # the batch was judged there, not after a failure
    here = identity.judge_identity(final, processes=0)
    assert in_pool.unique == here.unique
    assert [n.novel for n in in_pool.novelty] == [n.novel for n in here.novelty]
    print(os.getpid(), *identity._POOL._processes, flush=True)
    time.sleep(600)

if __name__ == "__main__":
    child = billiard.Process(target=job_process, daemon=True)
    child.start()
    child.join()
"""


def test_a_prefork_child_gets_a_pool_whose_processes_end_when_it_is_killed(
    tmp_path: Path,
) -> None:
    script = tmp_path / "celery_child.py"
    script.write_text(_PREFORK_CHILD)
    parent = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        pids = [int(pid) for pid in line.split()]
        assert len(pids) == 2, line  # the job's process and its one pool process
        job, worker = pids
        assert identity._alive(worker)
        os.kill(job, signal.SIGKILL)  # as an OOM kill or a crashed job would
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and identity._alive(worker):
            time.sleep(0.2)
        assert not identity._alive(worker)
    finally:
        parent.kill()
        parent.wait()
