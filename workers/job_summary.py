"""What the runner and the shard joiner share: progress writes, phase timings, and the final
ranking + summary of a job's stored candidates."""

from __future__ import annotations

import platform
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from typing import Any

from app import __version__
from ml import pipeline
from ml.pipeline.generation import Generation
from ml.request import DesignRequest
from workers.lease import JobLease
from workers.store import StructureStore, clean_json


class ProgressReporter:
    """Writes progress to the job row at most every ``interval`` seconds (phase changes and
    forced reports always go through)."""

    def __init__(self, lease: JobLease, interval: float) -> None:
        self.lease = lease
        self.interval = interval
        self._last = 0.0
        self._phase: str | None = None
        self.current: dict[str, Any] = {}

    def report(
        self,
        phase: str,
        step: int,
        total: int,
        best: float | None,
        force: bool = False,
        detail: dict[str, Any] | None = None,
    ) -> None:
        if best is None:
            best = self.current.get("best")
        current = {**self.current, "phase": phase, "step": step, "total": total, "best": best}
        if detail is not None:
            current["detail"] = detail  # the method's latest figures, kept until replaced
        self.current = clean_json(current)
        now = time.monotonic()
        if force or phase != self._phase or now - self._last >= self.interval:
            self.lease.write(progress=self.current)
            self._last = now
            self._phase = phase

    def evaluated(self, scored: Sequence[Any], step: int, total: int) -> dict[str, Any]:
        """The progress stored with a batch of scored candidates (``pipeline`` results):
        phase "evaluating", and the lowest objective loss of the valid ones, this batch's or
        the earlier best (None when the batch has none)."""
        losses = [s.objective_loss for s in scored if s.flags.get("valid", True)]
        best = min(losses) if losses else None
        if best is not None and self.current.get("best") is not None:
            best = min(best, self.current["best"])
        progress = {"phase": "evaluating", "step": step, "total": total, "best": best}
        return clean_json({**self.current, **progress})


class PhaseTimer:
    """Seconds per phase key (``method_s``, ``scoring_s``, ...), for the summary's timings."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    def add(self, key: str, seconds: float) -> None:
        self.totals[key] = self.totals.get(key, 0.0) + seconds


def timed_events(gen: Iterator[Any], timer: PhaseTimer) -> Iterator[Any]:
    """Iterate the method's generator, charging the time spent inside it to ``method_s``."""
    while True:
        t = time.perf_counter()
        try:
            event = next(gen)
        except StopIteration:
            timer.add("method_s", time.perf_counter() - t)
            return
        timer.add("method_s", time.perf_counter() - t)
        yield event


def finish_summary(
    store: StructureStore,
    request: DesignRequest,
    reporter: ProgressReporter,
    timer: PhaseTimer,
    method_info: dict[str, Any],
    t_start: float,
    generation: Generation | None = None,
    method_summary: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Rank every stored candidate of the job and summarise; ``_ranks`` maps row id -> rank,
    ``_hits`` row id -> hit for the rows whose hit changed once judged over the whole job
    (minimize/maximize objectives: top decile of the job). ``method_summary``: what the
    method reported about its run (:attr:`MethodContext.summary`), kept as is."""
    reporter.report(
        "ranking", reporter.current.get("step", 0), request.num_candidates, None, force=True
    )
    t = time.perf_counter()
    scored, ids = store.load_scored()
    by_fp = {s.fingerprint: sid for s, sid in zip(scored, ids, strict=True)}
    hits = {ids[k]: scored[k].flags["hit"] for k in pipeline.apply_final_hits(scored, request)}
    ranked = pipeline.rank_candidates(scored)
    ranks = {by_fp[s.fingerprint]: s.rank for s in ranked}
    summary = dict(pipeline.summarize(ranked, request))
    timer.add("ranking_s", time.perf_counter() - t)
    timer.add("total_s", time.perf_counter() - t_start)
    oracles: dict[str, dict[str, str]] = {}
    for s in scored:
        for prop, sc in s.scores.items():
            oracles.setdefault(prop, {"oracle": sc.oracle, "version": sc.version})
    if generation is not None:
        summary.update(_generation_summary(request, generation, summary["n_candidates"]))
    if method_summary:
        summary["method_summary"] = method_summary
    summary.update(
        {
            "seed": request.seed,
            "timings": {k: round(v, 4) for k, v in timer.totals.items()},
            "versions": {
                "method": method_info,
                "oracles": oracles,
                "matdesign": __version__,
                "python": platform.python_version(),
                **_library_versions(),
            },
        }
    )
    out = clean_json(summary)
    out["_ranks"] = ranks
    out["_hits"] = hits
    return out


def _generation_summary(
    request: DesignRequest, generation: Generation, returned: int
) -> dict[str, Any]:
    """``n_requested``, ``generation`` counts and, when fewer than asked, ``shortfall``."""
    out: dict[str, Any] = {"n_requested": request.num_candidates, "generation": asdict(generation)}
    limit = request.constraints.max_energy_above_hull
    if limit is not None:
        out["generation"]["max_energy_above_hull"] = limit
    if returned < request.num_candidates and generation.exhausted:
        reason = (
            f"returned {returned} of {request.num_candidates} requested: the method produced "
            f"{generation.n_generated} candidates"
        )
        if limit is not None:
            reason += (
                f" (asked for {generation.budget}, {generation.oversample}x the request), of which "
                f"{generation.n_rejected} were invalid or had energy above hull above "
                f"{limit:g} eV/atom (or none could be computed)"
            )
        out["shortfall"] = reason
    return out


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "pymatgen", "matgl", "chgnet"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out
