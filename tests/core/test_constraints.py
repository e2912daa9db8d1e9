"""Charge neutrality, perovskite family and request-constraint checks."""

from __future__ import annotations

import numpy as np
import pytest

from ml.constraints import (
    constraint_violations,
    is_charge_neutral,
    is_perovskite,
    neutrality_ok,
    snap_to_space_group,
    space_group_number,
)
from ml.crystal import Crystal
from ml.request import Constraints, ElementConstraints


def rocksalt(a: float = 5.64) -> Crystal:
    lattice = np.array([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])
    return Crystal(lattice, [[0, 0, 0], [0.5, 0.5, 0.5]], [11, 17])


@pytest.mark.parametrize(
    ("formula", "neutral"),
    [
        ("NaCl", True),
        ("NaCl2", False),
        ("BaTiO3", True),
        ("Fe3O4", True),  # mixed valence Fe2+/Fe3+
        ("Cu2O", True),
        ("NaCl3", False),  # would need Cl+ beside Cl-
        ("Na", False),  # a single element is never ionic
        ("AlNi3", False),
    ],
)
def test_strict_charge_neutrality(formula: str, neutral: bool) -> None:
    assert is_charge_neutral(formula) is neutral


def test_crystal_input_and_formula_units() -> None:
    assert is_charge_neutral(rocksalt())
    assert is_charge_neutral("Na4Cl4")


def test_metals_exempt_only_when_neutrality_not_requested() -> None:
    assert neutrality_ok("AlNi3", requested=False)
    assert neutrality_ok("Cu", requested=False)
    assert not neutrality_ok("AlNi3", requested=True)
    assert not neutrality_ok("Cu", requested=True)
    assert not neutrality_ok("NaCl2", requested=False)  # not a metal: no exemption


def test_perovskite_stoichiometry() -> None:
    assert is_perovskite("BaTiO3")
    assert is_perovskite("CsPbI3")
    assert is_perovskite("VTeO3")  # Te on a cation site
    assert is_perovskite("TiOsNOF")  # mixed anions
    assert not is_perovskite("TiO2")
    assert not is_perovskite("NaCl")
    assert is_perovskite("Ba2FeMoO6")  # double perovskite
    assert not is_perovskite("P2Se3") and not is_perovskite("Mn2O3")  # one cation: not ABX3


def test_constraint_violations_name_the_field() -> None:
    nacl = rocksalt()
    assert space_group_number(nacl) == 225
    assert constraint_violations(nacl, Constraints()) == []
    double = Crystal(
        nacl.lattice * np.array([[2.0], [1.0], [1.0]]),
        [[0, 0, 0], [0.25, 0.5, 0.5], [0.5, 0, 0], [0.75, 0.5, 0.5]],
        [11, 17, 11, 17],
    )
    assert space_group_number(double) == 225
    bad = Constraints(
        elements=ElementConstraints(allowed=["K", "Cl"]),
        max_atoms=3,
        composition="KCl",
        space_groups=[221],
        crystal_family="perovskite",
    )
    assert constraint_violations(double, bad) == [
        "elements",
        "max_atoms",
        "composition",
        "space_groups",
        "crystal_family",
    ]
    needs_o = Constraints(elements=ElementConstraints(required=["O"]))
    assert constraint_violations(nacl, needs_o) == ["elements"]
    na2 = Crystal(np.eye(3) * 4.2, [[0, 0, 0], [0.5, 0.5, 0.5]], [11, 11])
    assert constraint_violations(na2, Constraints(charge_neutral=True)) == ["charge_neutral"]
    assert constraint_violations(na2, Constraints(charge_neutral=False)) == []


def test_snap_to_space_group_idealises_a_nearly_cubic_perovskite() -> None:
    rng = np.random.default_rng(1)
    frac = np.array([[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    # Atoms up to ~0.14 A off their sites: P1 at spglib's default 0.1 A, Pm-3m only at 0.5 A.
    noisy = Crystal(
        np.eye(3) * 3.9, frac + rng.uniform(-0.035, 0.035, frac.shape), [38, 22, 8, 8, 8]
    )
    assert space_group_number(noisy) != 221

    snapped = snap_to_space_group(noisy, 221)
    assert snapped is not None
    assert space_group_number(snapped, symprec=1e-3) == 221
    assert snapped.formula == "SrTiO3" and snapped.num_atoms == 5
    # A group the structure is nowhere near is not forced on it.
    assert snap_to_space_group(noisy, 194) is None
