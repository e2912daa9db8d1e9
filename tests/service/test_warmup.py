"""Worker warm-up: the real caches get filled, and the setting turns it off."""

from __future__ import annotations

import pytest

import ml.pipeline
from app.settings import Settings
from workers.warmup import start_warm_up


def test_warm_up_fills_the_caches_a_job_uses() -> None:
    from ml.oracles.registry import _CACHE

    took = ml.pipeline.warm_up("cpu")
    assert set(took) == {
        "chgnet-energy",
        "chgnet-eform",
        "gap-chgnet-ft",
        "density",
        "hull",
        "novelty",
        "first_calls",
        "identity_pool",
    }
    assert ("gap-chgnet-ft", "cpu") in _CACHE and ("chgnet-energy", "cpu") in _CACHE
    again = ml.pipeline.warm_up("cpu")
    assert max(again.values()) < 0.05  # everything now comes from the caches


def test_start_warm_up_runs_on_a_thread_unless_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(ml.pipeline, "warm_up", lambda device=None: calls.append("warm") or {})
    assert start_warm_up(Settings(worker_warm_up=False)) is None
    thread = start_warm_up(Settings(worker_warm_up=True))
    assert thread is not None
    thread.join(timeout=10)
    assert calls == ["warm"]
