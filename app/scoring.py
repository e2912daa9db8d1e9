"""``POST /v1/score`` off the API process: a bounded pool of worker processes with a timeout.

Parsing CIFs and running oracles takes memory and CPU in proportion to the atoms; here it
happens in separate processes (spawned, so no threads or CUDA state are forked), at most
``score_processes`` at once with ``score_max_waiting`` requests waiting, each killed after
``score_timeout_s`` (pebble replaces the killed process). The API's event loop and memory
stay free for other keys' requests.
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from pebble import ProcessExpired, ProcessPool

from app.availability import Unavailable
from app.settings import Settings


class ScoreInputError(Exception):
    """A CIF that cannot be scored: ``loc`` under ``body`` and a message (picklable)."""

    def __init__(self, loc: list[str | int], message: str) -> None:
        super().__init__(loc, message)
        self.loc = loc
        self.message = message


class ScoreBusy(Unavailable):
    """503: the pool is full, the request ran past the timeout, or its process died."""

    def __init__(self, why: str) -> None:
        super().__init__("scoring", detail=why)


def score_cifs(
    cifs: list[str], names: list[str], max_atoms_per_cif: int, max_atoms_per_request: int
) -> list[dict[str, Any]]:
    """Runs in a pool process: parse, check atom limits, predict; returns the response items."""
    from ml.crystal import Crystal
    from ml.oracles.registry import get_oracle, list_oracles
    from ml.settings import get_ml_settings

    infos = {info.name: info for info in list_oracles()}
    crystals = []
    total = 0
    for i, cif in enumerate(cifs):
        try:
            c = Crystal.from_cif(cif)
        except ValueError as exc:
            raise ScoreInputError(["body", "cifs", i], str(exc)) from None
        if c.num_atoms > max_atoms_per_cif:
            raise ScoreInputError(
                ["body", "cifs", i],
                f"{c.num_atoms} atoms; at most {max_atoms_per_cif} per CIF on this server",
            )
        total += c.num_atoms
        if total > max_atoms_per_request:
            raise ScoreInputError(
                ["body", "cifs"], f"at most {max_atoms_per_request} atoms per request in all"
            )
        crystals.append(c)
    device = get_ml_settings().torch_device()
    values = {
        name: [float(v) for v in get_oracle(name, device).predict(crystals)]
        for name in dict.fromkeys(names)
    }
    items = []
    for i, c in enumerate(crystals):
        scores = {}
        for name, vals in values.items():
            v = vals[i]
            scores[name] = {
                "value": v if v == v and abs(v) != float("inf") else None,
                "unit": infos[name].unit,
                "oracle": name,
                "version": infos[name].version,
            }
        items.append({"index": i, "formula": c.formula, "n_atoms": c.num_atoms, "scores": scores})
    return items


class ScorePool:
    """The process pool, started on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool: Any = None
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(
            settings.score_processes + settings.score_max_waiting
        )

    def _get(self) -> Any:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPool(
                    max_workers=self.settings.score_processes,
                    context=multiprocessing.get_context("spawn"),
                )
            return self._pool

    def score(self, cifs: list[str], names: list[str]) -> list[dict[str, Any]]:
        s = self.settings
        if not self._slots.acquire(blocking=False):
            raise ScoreBusy("scoring is busy with other requests; retry later")
        try:
            future = self._get().schedule(
                score_cifs,
                args=(cifs, names, s.score_max_atoms_per_cif, s.score_max_atoms_per_request),
                timeout=s.score_timeout_s,
            )
            try:
                return future.result()  # type: ignore[no-any-return]
            except FutureTimeout:
                raise ScoreBusy(
                    f"scoring took longer than {s.score_timeout_s:g} s and was stopped; "
                    "send fewer or smaller CIFs"
                ) from None
            except ProcessExpired as exc:
                raise ScoreBusy(f"the scoring process died ({exc}); retry later") from None
        finally:
            self._slots.release()

    def stop(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.stop()
                self._pool.join(timeout=10)
                self._pool = None
