"""Set-level rates over flags."""

from __future__ import annotations

import pytest

from ml.evaluation.metrics import hit_rate, msun_rate, stability_flags, sun_rate


def _f(stable: bool, meta: bool, unique: bool, novel: bool, hit: bool) -> dict[str, bool]:
    return {"stable": stable, "metastable": meta, "unique": unique, "novel": novel, "hit": hit}


def test_rates_count_all_candidates() -> None:
    flags = [
        _f(True, True, True, True, True),  # S.U.N.
        _f(False, True, True, True, False),  # metastable S.U.N. only
        _f(True, True, False, True, True),  # duplicate
        _f(True, True, True, False, False),  # known
        {"valid": False},  # invalid: counts in the denominator
    ]
    assert sun_rate(flags) == pytest.approx(1 / 5)
    assert msun_rate(flags) == pytest.approx(2 / 5)
    assert hit_rate(flags) == pytest.approx(2 / 5)
    assert sun_rate([]) == 0.0


def test_stability_thresholds() -> None:
    assert stability_flags(0.0) == (True, True)
    assert stability_flags(-0.01) == (True, True)
    assert stability_flags(1e-16) == (True, True)  # float noise of a hull member
    # On the hull within 5 meV/atom: a relaxation stopped at fmax 0.1 eV/A leaves that much.
    assert stability_flags(1e-4) == (True, True)
    assert stability_flags(0.0049) == (True, True)
    assert stability_flags(0.0051) == (False, True)
    assert stability_flags(0.05) == (False, True)
    assert stability_flags(0.1) == (False, True)
    assert stability_flags(0.1001) == (False, False)
    assert stability_flags(None) == (False, False)
    assert stability_flags(float("nan")) == (False, False)
