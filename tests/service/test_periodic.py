"""The periodic thread under the sweeper, the consumer watchdog and the job heartbeat."""

from __future__ import annotations

import threading

from workers.periodic import PeriodicThread


def test_an_error_is_logged_and_the_loop_goes_on_until_stop() -> None:
    calls: list[int] = []
    done = threading.Event()

    def tick() -> object:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("database hiccup")
        if len(calls) == 4:
            done.set()
            return PeriodicThread.STOP
        return False  # e.g. the watchdog's "no restart": not a stop

    t = PeriodicThread("test", 0.01, tick)
    t.start()
    assert done.wait(5)
    t.stop()
    assert len(calls) == 4  # neither the error at 2 nor False at 1 and 3 ended it; STOP did


def test_stop_ends_the_loop() -> None:
    calls: list[int] = []
    t = PeriodicThread("test", 0.01, lambda: calls.append(1))
    t.start()
    while len(calls) < 3:
        threading.Event().wait(0.01)
    t.stop()
    n = len(calls)
    threading.Event().wait(0.1)
    assert len(calls) == n
