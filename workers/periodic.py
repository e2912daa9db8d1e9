"""A daemon thread that calls a function every few seconds until stopped: the sweeper, the
consumer watchdog and a job's heartbeat all run on one."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Final

log = logging.getLogger(__name__)


class PeriodicThread:
    """Calls ``tick`` every ``interval_s`` (first call after one interval). An exception is
    logged and the loop goes on (a database or broker hiccup heals by the next tick);
    ``tick`` returning :attr:`STOP` ends the loop (any other value is ignored, so a
    tick may return what it likes, e.g. the watchdog's "restarted" flag)."""

    STOP: Final = "stop"

    def __init__(
        self,
        name: str,
        interval_s: float,
        tick: Callable[[], object],
        join_timeout_s: float = 10.0,
    ) -> None:
        self.name = name
        self.interval_s = interval_s
        self.tick = tick
        self.join_timeout_s = join_timeout_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.join_timeout_s)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if self.tick() == self.STOP:
                    return
            except Exception:
                log.exception("%s: periodic call failed", self.name)
