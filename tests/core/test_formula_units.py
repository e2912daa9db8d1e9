"""Composition parsing and formula units: one validator for every composition, Wyckoff-based
numbers of formula units per space group, and requests no cell can meet."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from pydantic import ValidationError

from ml.constraints import constraint_violations
from ml.crystal import Crystal
from ml.methods.conditional.method import ConditionalMethod, ConditionalParams
from ml.request import Constraints, DesignRequest, parse_composition
from ml.symmetry import centring, compatible, formula_units_for


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("LiFeQO4", "unknown element symbols: 'Q'"),
        ("lifepo4", "symbols are case-sensitive"),
        ("Li0.5O", "whole numbers of atoms"),
        ("", "empty"),
        ("Fe-1", "unparseable"),
        ("Am2O3", "beyond Pu"),
    ],
)
def test_bad_compositions_are_rejected_naming_the_problem(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_composition(text)
    with pytest.raises(ValidationError) as err:
        Constraints(composition=text)
    assert err.value.errors()[0]["loc"] == ("composition",)


def test_composition_is_stored_reduced() -> None:
    assert Constraints(composition="Li4Fe4P4O16", max_atoms=30).composition == "LiFePO4"


def test_wyckoff_formula_units() -> None:
    lfp = {"Li": 1, "Fe": 1, "P": 1, "O": 4}
    assert formula_units_for(lfp, 62, range(1, 9)) == [4, 8]  # Pnma: sites of 4 and 8
    assert formula_units_for({"Zn": 1, "O": 1}, 186, range(1, 5)) == [2, 4]  # P6_3mc: 2b
    assert formula_units_for({"Na": 1, "Cl": 1}, 225, range(1, 3)) == [1, 2]  # F: primitive
    assert centring(225) == 4 and centring(62) == 1 and centring(166) == 3
    assert not compatible(221, [2, 2, 6])  # no 2-fold site in Pm-3m: no doubled SrTiO3


def test_formula_unit_choices_and_space_group() -> None:
    cons = Constraints(composition="LiFePO4", max_atoms=30)
    assert cons.formula_unit_choices() == [1, 2, 3, 4]
    assert cons.formula_units_in(62) == [4]
    explicit = Constraints(composition="ZnO", formula_units=[2, 3], max_atoms=20)
    assert explicit.formula_units_in(186) == [2]


@pytest.mark.parametrize(
    ("constraints", "field", "message"),
    [
        ({"composition": "LiFePO4", "space_groups": [62]}, "space_groups", "62 \\(Pnma\\) needs"),
        (
            {"composition": "LiFePO4", "space_groups": [62], "max_atoms": 30, "formula_units": [2]},
            "space_groups",
            "Z in \\[2\\]",
        ),
        ({"composition": "LiFePO4", "max_atoms": 6}, "composition", "7 atoms per formula unit"),
        ({"composition": "ZnO", "formula_units": [20]}, "formula_units", "exceed max_atoms"),
        ({"formula_units": [2]}, "formula_units", "needs a composition"),
        (
            {
                "composition": "BaTiO3",
                "elements": {"allowed": ["Ba", "Ti", "O"], "excluded": ["O"]},
            },
            "composition",
            "O is in elements.excluded",
        ),
    ],
)
def test_requests_no_cell_can_meet_say_why(
    constraints: dict[str, object], field: str, message: str
) -> None:
    with pytest.raises(ValidationError, match=message) as err:
        Constraints.model_validate(constraints)
    assert err.value.errors()[0]["loc"] == (field,)


def test_formula_units_constraint_is_checked_on_crystals() -> None:
    # Conventional rock salt: 4 formula units.
    na = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    cl = [[0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [0.5, 0.5, 0.5]]
    rocksalt = Crystal(np.eye(3) * 5.6, na + cl, [11] * 4 + [17] * 4)
    assert "composition" not in constraint_violations(rocksalt, Constraints(composition="NaCl"))
    four = Constraints(composition="NaCl", formula_units=[4])
    one = Constraints(composition="NaCl", formula_units=[1])
    assert "composition" not in constraint_violations(rocksalt, four)
    assert "composition" in constraint_violations(rocksalt, one)


def test_conditional_plans_the_cells_each_space_group_needs() -> None:
    method = ConditionalMethod()
    lfp = DesignRequest(
        method="conditional",
        constraints={"composition": "LiFePO4", "space_groups": [62], "max_atoms": 30},
    )
    cells = method._cells(lfp, ConditionalParams())
    assert [(len(n), g) for n, g, _ in cells] == [(28, 62)]
    assert Counter(cells[0][0]) == Counter({3: 4, 26: 4, 15: 4, 8: 16})
    zno = DesignRequest(
        method="conditional", constraints={"composition": "ZnO", "space_groups": [186]}
    )
    assert [(len(n), g) for n, g, _ in method._cells(zno, ConditionalParams())] == [(4, 186)]
    two = ConditionalParams(formula_unit_options=2)
    assert [len(n) for n, _, _ in method._cells(zno, two)] == [4, 8]
    free = DesignRequest(method="conditional", constraints={"composition": "ZnO"})
    assert [len(n) for n, g, _ in method._cells(free, two)] == [2, 4]


def test_methods_that_design_compositions_refuse_a_fixed_one() -> None:
    from ml.methods.base import RequestError
    from ml.methods.registry import get_method

    request = DesignRequest(
        method="cliqueflowmer",
        objectives=[{"property": "formation_energy", "goal": "minimize"}],
        constraints={"composition": "LiFePO4", "max_atoms": 20},
    )
    with pytest.raises(RequestError) as err:
        get_method("cliqueflowmer").validate(request)
    assert err.value.field == "constraints.composition"
