"""The embedded worker of ``matdesign serve``: threads that run the Celery task in-process.

Each thread takes job ids from an in-process queue and executes the *same* Celery task,
``run_design_job``, through ``Task.apply`` (Celery's own local execution path: same task
body, same signals, no broker). The queue itself needs no durability: the jobs table is the
record, and the sweeper re-enqueues queued jobs after a restart and jobs whose heartbeat
stopped.

The threads are supervised: a thread that died (an error outside the task, e.g. an import
that failed) is logged and restarted with a growing delay, and ``/readyz`` reports the
restarts and the last error. A job whose message the task handed back (database
unreachable) is queued again here.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from app.db import Database
from app.settings import Settings
from workers.warmup import start_warm_up

log = logging.getLogger(__name__)

_STOP = object()
SUPERVISE_INTERVAL_S = 1.0
RESTART_DELAY_MAX_S = 60.0


class EmbeddedWorker:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.n_threads = settings.embedded_workers
        self._queue: queue.Queue[object] = queue.Queue()
        self._threads: list[threading.Thread | None] = []
        # Set on shutdown: a running job stops at its next checkpoint without finishing, and
        # the sweeper of the next start resumes it.
        self.stopping = threading.Event()
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self.restarts = 0
        self.last_error: str | None = None
        self._next_restart = 0.0
        self._supervisor: threading.Thread | None = None

    def start(self) -> None:
        start_warm_up(self.settings)
        self._threads = [self._spawn(i) for i in range(self.n_threads)]
        self._supervisor = threading.Thread(
            target=self._supervise, name="embedded-supervisor", daemon=True
        )
        self._supervisor.start()

    def _spawn(self, i: int) -> threading.Thread:
        t = threading.Thread(target=self._guarded_loop, name=f"embedded-worker-{i}", daemon=True)
        t.start()
        return t

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        for _ in self._threads:
            self._queue.put(_STOP)
        for t in self._threads:
            if t is not None:
                t.join(timeout=timeout)
        if self._supervisor is not None:
            self._supervisor.join(timeout=timeout)

    def alive(self) -> int:
        return sum(t is not None and t.is_alive() for t in self._threads)

    def status(self) -> tuple[bool, str]:
        n = self.alive()
        detail = f"{n} of {self.n_threads} embedded worker thread(s) alive"
        if self.restarts:
            detail += f"; restarted {self.restarts} time(s), last error: {self.last_error}"
        return n > 0, detail

    def enqueue(self, job_id: str) -> None:
        with self._lock:
            if job_id in self._pending:  # already waiting here: one message is enough
                return
            self._pending.add(job_id)
        self._queue.put(job_id)

    # --- supervision ------------------------------------------------------------------------
    def _supervise(self) -> None:
        delay = SUPERVISE_INTERVAL_S
        while not self.stopping.wait(SUPERVISE_INTERVAL_S):
            dead = [i for i, t in enumerate(self._threads) if t is None or not t.is_alive()]
            if not dead or time.monotonic() < self._next_restart:
                continue
            for i in dead:
                log.error("embedded worker thread %d died (%s); restarting it", i, self.last_error)
                self.restarts += 1
                self._threads[i] = self._spawn(i)
            # A thread that keeps dying is restarted less and less often.
            self._next_restart = time.monotonic() + delay
            delay = min(delay * 2, RESTART_DELAY_MAX_S)

    def _guarded_loop(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"[:500]
            log.critical("embedded worker thread died", exc_info=True)

    def _fail_job(self, job_id: str, exc: BaseException) -> None:
        """The job this dying thread held fails with the error instead of staying queued."""
        from workers.lease import fail_unstarted

        try:
            fail_unstarted(self.db, job_id, f"{type(exc).__name__}: {exc}")
        except Exception:
            log.exception("could not fail job %s", job_id)

    def _loop(self) -> None:
        from celery import states

        from workers.runtime import bind_thread
        from workers.tasks import run_design_job

        bind_thread(self.settings, self.db, self.stopping)
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            job_id = str(item)
            with self._lock:
                self._pending.discard(job_id)
            try:
                result = run_design_job.apply(args=[job_id], throw=False)
            except Exception:  # the task records failures on the job; never kill the thread
                log.exception("embedded worker: job %s", job_id)
                continue
            except BaseException as exc:  # the thread dies (the supervisor restarts it)
                self._fail_job(job_id, exc)
                raise
            if result.state == states.REJECTED and not self.stopping.is_set():
                self.enqueue(job_id)  # database was unreachable; the task already waited
