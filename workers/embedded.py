"""The embedded worker of ``matdesign serve``: threads that run the Celery task in-process.

Each thread takes job ids from an in-process queue and executes the *same* Celery task,
``run_design_job``, through ``Task.apply`` (Celery's own local execution path: same task
body, same signals, no broker). The queue itself needs no durability: the jobs table is the
record, and the sweeper re-enqueues queued jobs after a restart and jobs whose heartbeat
stopped.
"""

from __future__ import annotations

import logging
import queue
import threading

from app.db import Database
from app.settings import Settings
from workers.warmup import start_warm_up

log = logging.getLogger(__name__)

_STOP = object()


class EmbeddedWorker:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.n_threads = settings.embedded_workers
        self._queue: queue.Queue[object] = queue.Queue()
        self._threads: list[threading.Thread] = []
        # Set on shutdown: a running job stops at its next checkpoint without finishing, and
        # the sweeper of the next start resumes it.
        self.stopping = threading.Event()
        self._pending: set[str] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        start_warm_up(self.settings)
        for i in range(self.n_threads):
            t = threading.Thread(target=self._loop, name=f"embedded-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        for _ in self._threads:
            self._queue.put(_STOP)
        for t in self._threads:
            t.join(timeout=timeout)

    def alive(self) -> int:
        return sum(t.is_alive() for t in self._threads)

    def enqueue(self, job_id: str) -> None:
        with self._lock:
            if job_id in self._pending:  # already waiting here: one message is enough
                return
            self._pending.add(job_id)
        self._queue.put(job_id)

    def _loop(self) -> None:
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
                run_design_job.apply(args=[job_id], throw=False)
            except Exception:  # the task records failures on the job; never kill the thread
                log.exception("embedded worker: job %s", job_id)
