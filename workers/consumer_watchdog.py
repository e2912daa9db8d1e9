"""Restart a Celery worker's broker consumer that stopped taking messages.

After a Redis restart the worker reconnects, yet kombu's Redis transport can come back
without the new socket in the worker's event loop (a family of races, e.g. celery/celery
#8030, #8091, kombu #2492, #2629): the worker answers pings and its sweeper runs, but it
never takes a message again, so every job, and every re-send of it, stays queued.

The watchdog runs on a thread of the worker's main process and watches what the worker can
see from outside its event loop: the queue holds messages while this worker has a free pool
slot and is connected. That cannot last in a healthy worker (it fetches at once), so after
``consumer_stall_after_s`` it schedules, on the event loop, a re-subscription to the queue
and a connection error: Celery then rebuilds the connection, the channel and the consumer
exactly as after a real broker loss.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from workers.periodic import PeriodicThread

log = logging.getLogger(__name__)

# kombu's Redis transport keeps priority levels in separate lists: "<queue>", then
# "<queue>\x06\x16<priority>" for the non-zero steps.
_REDIS_PRIORITY_STEPS = (0, 3, 6, 9)
_REDIS_SEP = "\x06\x16"


class ConsumerStalled(Exception):
    """Raised on the worker's event loop to make Celery reconnect its consumer."""


def redis_queue_depth(broker_url: str, queue: str) -> Callable[[], int]:
    """A probe: how many messages wait in ``queue`` on a Redis broker (all priorities)."""
    import redis

    client = redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)
    keys = [queue if p == 0 else f"{queue}{_REDIS_SEP}{p}" for p in _REDIS_PRIORITY_STEPS]

    def depth() -> int:
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.llen(key)
            return int(sum(pipe.execute()))

    return depth


class StallDetector:
    """Decides, from periodic observations, when a consumer has stalled.

    Stalled: connected, the queue non-empty and a free slot, continuously for ``after_s``.
    Anything else (busy, empty queue, disconnected: Celery is reconnecting by itself) resets
    the clock.
    """

    def __init__(self, after_s: float) -> None:
        self.after_s = after_s
        self._since: float | None = None

    def observe(self, now: float, connected: bool, waiting: int, free_slots: int) -> bool:
        if not connected or waiting <= 0 or free_slots <= 0:
            self._since = None
            return False
        if self._since is None:
            self._since = now
        if now - self._since >= self.after_s:
            self._since = None  # a fresh period before the next restart
            return True
        return False


class ConsumerWatchdog:
    """The thread that applies :class:`StallDetector` to a running Celery consumer."""

    def __init__(
        self,
        consumer: object,
        queue: str,
        depth: Callable[[], int],
        after_s: float,
        interval_s: float,
    ) -> None:
        self.consumer = consumer
        self.queue = queue
        self.depth = depth
        self.detector = StallDetector(after_s)
        self.interval_s = interval_s
        self.restarts = 0
        self._thread = PeriodicThread("consumer-watchdog", interval_s, self.check)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._thread.stop()

    def _free_slots(self) -> int:
        from celery.worker import state

        controller = getattr(self.consumer, "controller", None)
        capacity = getattr(controller, "concurrency", None) or 1
        return int(capacity) - len(state.reserved_requests)

    def _connected(self) -> bool:
        # Celery sets ``connection`` to None on a loss and back once it reconnected (while
        # it retries, messages wait in the queue without any stall).
        return getattr(self.consumer, "connection", None) is not None

    def check(self) -> bool:
        """One observation; True if a restart was scheduled."""
        try:
            waiting = self.depth()
        except Exception:  # broker down: Celery's own reconnect handles that
            log.debug("queue depth unavailable", exc_info=True)
            waiting = 0
        stalled = self.detector.observe(
            time.monotonic(), self._connected(), waiting, self._free_slots()
        )
        if stalled:
            self.restarts += 1
            log.error(
                "consumer stalled: %d message(s) wait in queue %r while this worker has a "
                "free slot; reconnecting the consumer (restart %d)",
                waiting,
                self.queue,
                self.restarts,
            )
            self.consumer.hub.call_soon(self._restart_on_loop)  # type: ignore[attr-defined]
        return stalled

    def _restart_on_loop(self) -> None:
        # On the event loop thread. Select the queue again (in case it was deselected) and
        # raise one of the consumer's connection errors: Celery handles it as a broker loss.
        consumer = self.consumer
        queues = consumer.app.amqp.queues  # type: ignore[attr-defined]
        queues.select_add(queues[self.queue])
        errors = tuple(consumer.connection_errors)  # type: ignore[attr-defined]
        error = next((e for e in errors if issubclass(e, Exception)), ConnectionError)
        raise error(f"consumer stalled on queue {self.queue!r}")
