"""The Celery application: Redis broker in production, design tasks on queue ``gpu``.

Reliability settings: a task message is acknowledged only after the job finished
(``acks_late``), a worker takes one message at a time (prefetch 1), and a message whose
worker process died is handed back to the broker (``reject_on_worker_lost``). A job is also
protected independently of the broker: the runner heartbeats the job row and the sweeper
re-enqueues jobs whose heartbeat went stale (see ``workers/sweeper.py``). Each worker runs a
sweeper as well as each API process, so a deployment of workers alone still recovers jobs.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_ready, worker_shutdown

from app.settings import Settings, get_settings

RUN_JOB_TASK = "matdesign.run_job"
RUN_SHARD_TASK = "matdesign.run_job_shard"
JOIN_SHARDS_TASK = "matdesign.join_sharded_job"

celery_app = Celery("matdesign", include=["workers.tasks"])


def configure_celery(settings: Settings) -> Celery:
    # The embedded default never talks to a broker (jobs run through Task.apply on worker
    # threads), so an in-memory transport keeps Celery from trying to connect anywhere.
    broker = "memory://" if settings.embedded else settings.broker_url
    # Celery's own limits stay above the runner's cooperative limit: the runner fails the
    # job with a readable error first; these catch a step that never returns (prefork only).
    soft = int(settings.job_time_limit_s) + 120
    if celery_app.conf.broker_url not in (None, broker):
        # Another broker than before (a second app in one process, e.g. tests).
        _drop_broker_pools(celery_app)
    celery_app.conf.update(
        broker_url=broker,
        # Sharded jobs' chords count their shards in the result backend (the broker's
        # Redis); other tasks ignore results.
        result_backend=None if settings.embedded else settings.broker_url,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_pool=settings.worker_pool,
        task_default_queue=settings.queue_name,
        task_routes={
            name: {"queue": settings.queue_name}
            for name in (RUN_JOB_TASK, RUN_SHARD_TASK, JOIN_SHARDS_TASK)
        },
        task_soft_time_limit=soft,
        task_time_limit=soft + 120,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": settings.broker_visibility_timeout_s},
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_send_task_events=True,  # for flower
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
    )
    return celery_app


def _drop_broker_pools(app: Celery) -> None:
    """Forget the connection pool and the producer pool, so the next send connects to the
    broker now configured.

    ``Celery.close()`` resets only the connection pool: the producer pool (``amqp.
    _producer_pool``, one of kombu's process-wide pools keyed by the old connection) stays,
    and ``apply_async`` goes on publishing to the previous broker, raising nothing (issue 19:
    the API of the Redis-restart fault test sent every job and re-send to the Redis of the
    test before it; only the worker's own sweeper delivered them). Celery resets the same two
    attributes after a fork.
    """
    app._pool = None
    amqp = app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None


@worker_process_init.connect
def _fresh_connections(**_: object) -> None:
    # A forked pool process must not share the parent's database connections.
    from app.db import forget_databases
    from workers.warmup import start_warm_up

    forget_databases()
    start_warm_up(get_settings())  # in the pool process, where jobs run


_sweepers: list[Any] = []


@worker_ready.connect
def _start_sweeper(sender: Any = None, **_: object) -> None:
    # In the worker's main process only (pool processes never get this signal). Sweeps are
    # conditional UPDATEs, so sweepers in several workers and API replicas don't collide.
    settings = get_settings()
    if settings.worker_pool in ("solo", "threads"):
        from workers.warmup import start_warm_up

        start_warm_up(settings)  # jobs run in this process: no pool process to warm
    if settings.embedded:
        return
    _start_watchdog(sender, settings)
    if not settings.sweeper_enabled:
        return
    from app.db import get_database
    from workers.queues import CeleryQueue
    from workers.sweeper import Sweeper

    sweeper = Sweeper(get_database(settings), settings, CeleryQueue(settings).resend)
    sweeper.start()
    _sweepers.append(sweeper)


def _start_watchdog(consumer: Any, settings: Settings) -> None:
    """The consumer watchdog (``workers/consumer_watchdog.py``): Redis brokers, event-loop
    pools (prefork), unless ``consumer_stall_after_s`` is 0."""
    after = settings.consumer_stall_after_s
    if not after or getattr(consumer, "hub", None) is None:
        return
    if not settings.broker_url.startswith(("redis://", "rediss://")):
        return
    from workers.consumer_watchdog import ConsumerWatchdog, redis_queue_depth

    watchdog = ConsumerWatchdog(
        consumer,
        settings.queue_name,
        redis_queue_depth(settings.broker_url, settings.queue_name),
        after_s=after,
        interval_s=min(5.0, max(after / 4, 0.5)),
    )
    watchdog.start()
    _sweepers.append(watchdog)


@worker_shutdown.connect
def _stop_sweeper(**_: object) -> None:
    while _sweepers:
        _sweepers.pop().stop()


configure_celery(get_settings())
