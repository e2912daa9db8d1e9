"""The lab suite's fixed requests and its known-structure check (benchmarks/lab_suite.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from ml.crystal import Crystal
from ml.request import DesignRequest
from tests.structures import rutile_tio2

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "lab_suite.py"


@pytest.fixture(scope="module")
def lab_suite():
    spec = importlib.util.spec_from_file_location("lab_suite", _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["lab_suite"] = module
    spec.loader.exec_module(module)
    return module


def test_suite_requests_validate(lab_suite) -> None:
    assert lab_suite.SUITE_VERSION
    assert len(lab_suite.SUITE) >= 10
    for name in lab_suite.SUITE:
        for method in lab_suite.METHODS:
            request = lab_suite.build_request(name, method, n=4, relax=False)
            assert isinstance(request, DesignRequest)
            assert request.num_candidates == 4 and request.method == method
    gap = lab_suite.build_request("gap1.5_eform_nontoxic", "substitution", 4, True)
    assert set(gap.constraints.elements.excluded) == {"Pb", "Cd", "Hg", "As", "Tl", "Be"}
    assert gap.hit({"band_gap": 1.6, "formation_energy": -1.0})
    assert not gap.hit({"band_gap": 1.8, "formation_energy": -1.0})
    known = {
        lab_suite.known_target(lab_suite.build_request(n, "conditional", 4, False))
        for n in lab_suite.SUITE
    }
    assert {("ZnO", 186), ("TiO2", 136), ("MgAl2O4", 227), ("LiFePO4", 62)} <= known


def test_known_structure_matcher_finds_rutile(lab_suite) -> None:
    rutile = Crystal.from_structure(rutile_tio2())
    refs = lab_suite.known_references("TiO2", 136)
    assert refs, "the reference set has rutile TiO2"
    assert lab_suite.matches_known(rutile, refs)
    # Anatase's space group holds no rutile, and a strained cell is not rutile.
    assert not lab_suite.matches_known(rutile, lab_suite.known_references("TiO2", 141))
    strained = rutile_tio2()
    strained.apply_strain([0.5, 0.0, -0.3])
    assert not lab_suite.matches_known(Crystal.from_structure(strained), refs)
