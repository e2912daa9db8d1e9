"""Uniqueness and novelty of one batch of final crystals, in worker processes when it is large.

Both are StructureMatcher work: pure Python that holds the GIL, about 8 ms per crystal (H200
box: 8.5 s of a 1,024-candidate SMOACS job). A crystal is only ever compared with crystals of
its own reduced formula (earlier ones of the batch, the job's kept ones, the reference set), so
a batch splits by formula into independent tasks. Batches of at least ``MIN_PARALLEL`` crystals
go to a process pool of ``MATDESIGN_EVAL_PROCESSES`` processes (default: half the cores, at most
8, none below 8 cores). The pool uses forkserver: the job's process holds CUDA and threads,
which a forked child must not inherit. Each process loads its own reference set once (at worker
warm-up, :func:`start_identity_pool`), and ends itself when the job's process ends, however it
ends. A pool that cannot start or breaks mid-batch leaves the batch to this process: the
verdicts are the same either way.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ml.constraints import composition_of
from ml.crystal import Crystal
from ml.evaluation.novelty import Novelty, get_reference_set
from ml.evaluation.uniqueness import PreparedStructure, unique_flags
from ml.pipeline.scored import _prepared, remember_prepared
from ml.settings import get_ml_settings

__all__ = ["MIN_PARALLEL", "IdentityVerdicts", "identity_processes", "judge_identity"]

log = logging.getLogger(__name__)

# Below this many crystals the pool's pickling and hand-off cost more than they save.
MIN_PARALLEL = 64


@dataclass
class IdentityVerdicts:
    """Per final crystal, in order: its prepared form, unique within the job, novelty."""

    prepared: list[PreparedStructure]
    unique: list[bool]
    novelty: list[Novelty]


def identity_processes() -> int:
    """Processes for large batches: the setting, else half the cores (at most 8) on machines
    of 8 cores or more, else 0 (this process)."""
    configured = get_ml_settings().eval_processes
    if configured is not None:
        return configured
    cores = os.cpu_count() or 1
    return min(8, cores // 2) if cores >= 8 else 0


def judge_identity(
    final: Sequence[Crystal],
    previous: Sequence[PreparedStructure] = (),
    processes: int | None = None,
) -> IdentityVerdicts:
    """Uniqueness (against ``previous`` and earlier crystals of ``final``) and novelty of each
    crystal of ``final`` (all valid)."""
    processes = identity_processes() if processes is None else processes
    if processes > 0 and len(final) >= MIN_PARALLEL:
        verdicts = _in_pool(final, previous, processes)
        if verdicts is not None:
            return verdicts
    prepared = [_prepared(c) or PreparedStructure(c) for c in final]
    unique = unique_flags(prepared, previous)
    refs = get_reference_set()
    return IdentityVerdicts(prepared, unique, [refs.judge(p) for p in prepared])


def _judge_group(
    crystals: list[Crystal], previous: list[PreparedStructure]
) -> tuple[list[PreparedStructure], list[bool], list[Novelty]]:
    """One formula's crystals, in a pool process."""
    prepared = [PreparedStructure(c) for c in crystals]
    refs = get_reference_set()
    return prepared, unique_flags(prepared, previous), [refs.judge(p) for p in prepared]


def _in_pool(
    final: Sequence[Crystal], previous: Sequence[PreparedStructure], processes: int
) -> IdentityVerdicts | None:
    pool = _pool(processes)
    if pool is None:
        return None
    groups: dict[str, list[int]] = {}
    for k, crystal in enumerate(final):
        groups.setdefault(composition_of(crystal).reduced_formula, []).append(k)
    before: dict[str, list[PreparedStructure]] = {}
    for p in previous:
        before.setdefault(p.formula, []).append(p)
    # Largest groups first, so a big formula does not start last and finish alone.
    order = sorted(groups, key=lambda f: -len(groups[f]))
    try:
        futures: list[tuple[list[int], Future]] = [
            (
                groups[f],
                _submit(pool, _judge_group, [final[k] for k in groups[f]], before.get(f, [])),
            )
            for f in order
        ]
        prepared: list[PreparedStructure | None] = [None] * len(final)
        unique = [False] * len(final)
        novelty: list[Novelty | None] = [None] * len(final)
        for index, future in futures:
            got_p, got_u, got_n = future.result()
            for j, k in enumerate(index):
                prepared[k], unique[k], novelty[k] = got_p[j], got_u[j], got_n[j]
    except Exception:  # a broken pool (a process killed, say): this process does the batch
        log.warning("identity pool failed; judging the batch in this process", exc_info=True)
        _drop_pool()
        return None
    for crystal, p in zip(final, prepared, strict=True):
        assert p is not None
        remember_prepared(crystal, p)  # the job's next batch compares against it
    return IdentityVerdicts(prepared, unique, novelty)  # type: ignore[arg-type]


_POOL: ProcessPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_LOCK = threading.Lock()
_UNAVAILABLE = False  # a pool could not start here: judge in this process from now on


def _start_pool_process(service_pid: int) -> None:
    """Initializer of each pool process: watch the job's process, then load the references."""
    threading.Thread(target=_exit_with, args=(service_pid,), daemon=True).start()
    get_reference_set()


def _exit_with(service_pid: int) -> None:
    # A pool process outlives a job process killed with SIGKILL (OOM, a crashed worker): it
    # waits on its task queue forever and keeps the forkserver, memory and the parent's stdout
    # open. It ends itself within a second of the job's process.
    while _alive(service_pid):
        time.sleep(1.0)
    os._exit(0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # dead but not yet reaped (a zombie) counts as gone
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _ready() -> None:
    time.sleep(0.2)  # held a while, so that the next task submitted spawns another process


def _pool(processes: int) -> ProcessPoolExecutor | None:
    global _POOL, _POOL_SIZE, _UNAVAILABLE
    with _POOL_LOCK:
        if _POOL is not None and processes == _POOL_SIZE:
            return _POOL
        if _UNAVAILABLE:
            return None
        if _POOL is not None:
            _POOL.shutdown(wait=False, cancel_futures=True)
        try:
            context = multiprocessing.get_context("forkserver")
            _POOL = ProcessPoolExecutor(
                processes,
                mp_context=context,
                initializer=_start_pool_process,
                initargs=(os.getpid(),),
            )
        except Exception:
            log.warning("no identity pool; judging batches in this process", exc_info=True)
            _POOL, _UNAVAILABLE = None, True
            return None
        _POOL_SIZE = processes
        return _POOL


def _submit(pool: ProcessPoolExecutor, fn: Callable[..., Any], *args: Any) -> Future:
    """``pool.submit``, which starts a pool process when fewer than its size run; also in a
    Celery prefork child."""
    with _as_plain_process():
        return pool.submit(fn, *args)


@contextmanager
def _as_plain_process() -> Iterator[None]:
    """While starting pool processes, this process looks like a plain multiprocessing one.

    A Celery prefork child is a billiard process, which billiard also makes multiprocessing's
    current process: daemonic (multiprocessing refuses daemons children lest they outlive
    them; ours end with it, :func:`_exit_with`) and with an authkey multiprocessing cannot
    hand to a child.
    """
    me = multiprocessing.current_process()
    config: dict[str, Any] = me._config  # type: ignore[attr-defined]
    plain = multiprocessing.process.AuthenticationString
    if not config.get("daemon") and isinstance(config.get("authkey"), plain):
        yield
        return
    saved = dict(config)
    config["daemon"] = False
    config["authkey"] = plain(bytes(config["authkey"]))
    try:
        yield
    finally:
        config.update(saved)


def _drop_pool() -> None:
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None:
            _POOL.shutdown(wait=False, cancel_futures=True)
        _POOL = None


def start_identity_pool(processes: int | None = None) -> int:
    """Start the pool's processes and load their reference sets now (worker warm-up); the
    number of processes started."""
    processes = identity_processes() if processes is None else processes
    if processes <= 0:
        return 0
    pool = _pool(processes)
    if pool is None:
        return 0
    started = len(getattr(pool, "_processes", None) or {})
    if started >= processes:
        return started  # started before (a second warm-up)
    try:
        for future in [_submit(pool, _ready) for _ in range(processes)]:
            future.result()
    except Exception:
        log.warning("identity pool failed to start", exc_info=True)
        _drop_pool()
        return 0
    return len(getattr(pool, "_processes", None) or {})
