"""The two implementations of the API's queue port (:class:`app.queue.JobQueue`): threads in
the API process (the embedded default) or Celery on a broker."""

from __future__ import annotations

from app.db import Database
from app.queue import JobQueue
from app.settings import Settings


class EmbeddedQueue:
    def __init__(self, settings: Settings, db: Database) -> None:
        from workers.embedded import EmbeddedWorker

        self.worker = EmbeddedWorker(settings, db)

    def enqueue(self, job_id: str) -> None:
        self.worker.enqueue(job_id)

    def resend(self, job_id: str) -> None:
        self.worker.enqueue(job_id)

    def broker_ok(self) -> tuple[bool, str]:
        return True, "embedded"

    def workers_ok(self) -> tuple[bool, str]:
        return self.worker.status()

    def start(self) -> None:
        self.worker.start()

    def stop(self) -> None:
        self.worker.stop()


class CeleryQueue:
    def __init__(self, settings: Settings) -> None:
        from workers.celery_app import configure_celery  # embedded servers never load Celery

        self.settings = settings
        self.app = configure_celery(settings)

    def enqueue(self, job_id: str) -> None:
        from workers.tasks import run_design_job

        # Bounded retries: a broker outage must not hang the request; the job row is already
        # committed and the sweeper enqueues it again later.
        run_design_job.apply_async(
            args=[job_id],
            queue=self.settings.queue_name,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )

    def resend(self, job_id: str) -> None:
        """The sweeper's send: as :meth:`enqueue`, on a connection of its own that is closed
        afterwards, so a re-send never goes through a pooled connection that may have been
        left in a bad state by a broker restart. Raises if the broker did not take it."""
        from workers.tasks import run_design_job

        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=5)
            run_design_job.apply_async(
                args=[job_id],
                queue=self.settings.queue_name,
                connection=conn,
                retry=True,
                retry_policy={"max_retries": 1, "interval_start": 0.2},
            )

    def broker_ok(self) -> tuple[bool, str]:
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
        except Exception as exc:
            return False, f"broker unreachable: {exc}"
        return True, "broker reachable"

    def workers_ok(self) -> tuple[bool, str]:
        """At least one worker answers and consumes this server's queue (workers of other
        queues on the same broker do not count)."""
        timeout = self.settings.readyz_worker_timeout_s
        try:
            replies = self.app.control.inspect(timeout=timeout).active_queues() or {}
        except Exception as exc:
            return False, f"worker inspection failed: {exc}"
        mine = sorted(
            name
            for name, queues in replies.items()
            if any(q.get("name") == self.settings.queue_name for q in queues or [])
        )
        if not mine:
            return False, f"no worker consumes queue {self.settings.queue_name!r}"
        return True, f"{len(mine)} worker(s) on {self.settings.queue_name!r}: {', '.join(mine)}"

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def make_queue(settings: Settings, db: Database) -> JobQueue:
    return EmbeddedQueue(settings, db) if settings.embedded else CeleryQueue(settings)
