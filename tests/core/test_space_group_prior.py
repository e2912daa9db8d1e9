"""P(sg | composition): the chemistry back-off between the prototype and the formula."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from ml.generative.assignment import TemplateStats, chemistry_key


def test_chemistry_key_groups_analogues_and_reduces_amounts() -> None:
    assert chemistry_key({"Sr": 1, "Ti": 1, "O": 3}, "class") == chemistry_key(
        {"Ba": 2, "Zr": 2, "O": 6}, "class"
    )
    assert chemistry_key({"Na": 1, "Cl": 1}, "group") == chemistry_key({"K": 1, "Br": 1}, "group")
    # Same prototype, other chemistry: an oxide and an intermetallic differ.
    assert chemistry_key({"Sr": 1, "Ti": 1, "O": 3}, "class") != chemistry_key(
        {"Cu": 1, "Au": 1, "Al": 3}, "class"
    )


def _stats() -> TemplateStats:
    # ABX3: mostly Pnma among the (fluoride) formulas, but the oxide perovskites are cubic.
    by_formula = {
        "KMgF3": Counter({62: 4}),
        "NaMgF3": Counter({62: 4}),
        "CsCaF3": Counter({62: 2}),
        "SrTiO3": Counter({221: 3}),
    }
    proto: Counter[int] = Counter()
    for c in by_formula.values():
        proto.update(c)
    return TemplateStats(
        by_formula=by_formula,
        by_prototype={(1, 1, 3): proto},
        by_nelements={3: proto},
        groups=Counter(proto),
    )


def top_group(stats: TemplateStats, amounts: dict[str, int]) -> int:
    probs = stats.space_group_probs(amounts)
    return max(probs, key=lambda g: probs[g])


def test_an_unseen_formula_takes_its_chemical_analogues_group() -> None:
    stats = _stats()
    bazro3 = {"Ba": 1, "Zr": 1, "O": 3}  # not in the counts: like SrTiO3, not like the fluorides
    assert top_group(stats, bazro3) == 221
    assert top_group(replace(stats, space_group_prior="v1"), bazro3) == 62  # the prototype's
    # A seen formula keeps its own counts, and probabilities stay normalised.
    assert top_group(stats, {"K": 1, "Mg": 1, "F": 3}) == 62
    assert abs(sum(stats.space_group_probs(bazro3).values()) - 1.0) < 1e-9
