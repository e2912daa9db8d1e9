"""Issue 13: the v2 Wyckoff-assignment ranking (letters per element, electronegativity-ordered
templates, known templates added to the bounded search) against v1."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from ml.generative.assignment import (
    ELEMENT_STATS_PATH,
    TemplateStats,
    enumerate_assignments,
    ordered_key,
)
from ml.methods.conditional.checkpoint import find_weights, load_wyckoff_release

# GdFeO3-type CaTiO3 (Pnma, 20 atoms): Ti 4b, Ca 4c, O 4c + 8d.
CATIO3_PNMA = sorted([("b", 22), ("c", 20), ("c", 8), ("d", 8)])
CATIO3_COUNTS = {22: 4, 20: 4, 8: 12}


def _rank(stats: TemplateStats, sg: int, counts: dict[int, int], orbits: list) -> int:
    found = enumerate_assignments(sg, counts, stats, keep=16)
    return next((i for i, a in enumerate(found) if sorted(a.orbits) == orbits), -1)


def test_release_ranks_the_orthorhombic_perovskite_first() -> None:
    assert ELEMENT_STATS_PATH.exists()
    _, stats, _ = load_wyckoff_release(find_weights("wyckoff"))
    assert stats.ranking == "v2" and stats.element_letters
    assert _rank(stats, 62, CATIO3_COUNTS, CATIO3_PNMA) == 0
    # v1 (letters per space group only) puts Ca and Ti the other way round first.
    assert _rank(replace(stats, ranking="v1"), 62, CATIO3_COUNTS, CATIO3_PNMA) > 0


def test_letters_follow_the_element() -> None:
    """Same anonymised template, elements swapped: only the per-element letters tell."""
    stats = TemplateStats()
    stats.letters.update({(221, "a"): 10, (221, "b"): 10, (221, "c"): 10, (221, "d"): 10})
    stats.element_letters.update({(221, "a", 22): 5, (221, "b", 20): 5, (221, "d", 8): 5})
    counts = {22: 1, 20: 1, 8: 3}
    found = enumerate_assignments(221, counts, stats)
    assert sorted(found[0].orbits) == [("a", 22), ("b", 20), ("d", 8)]
    v1 = enumerate_assignments(221, counts, replace(stats, ranking="v1"))
    assert v1[0].score == v1[1].score  # v1 cannot tell Ca on 1a from Ti on 1a


def test_known_templates_join_the_bounded_search() -> None:
    """A template seen in training is a candidate even where the bounded search stops early."""
    letters = (("b",), ("c",), ("c", "d"))
    stats = TemplateStats(templates=Counter({(62, letters): 3}))
    found = enumerate_assignments(62, CATIO3_COUNTS, stats, limit=1)
    assert CATIO3_PNMA in [sorted(a.orbits) for a in found]
    assert CATIO3_PNMA not in [
        sorted(a.orbits)
        for a in enumerate_assignments(62, CATIO3_COUNTS, replace(stats, ranking="v1"), limit=1)
    ]


def test_element_statistics_round_trip_and_fill_old_checkpoints() -> None:
    stats = TemplateStats()
    stats.element_letters[(62, "c", 8)] = 4
    stats.ordered_templates[ordered_key(62, CATIO3_PNMA)] = 2
    back = TemplateStats.from_dict(stats.to_dict())
    assert back.element_letters == stats.element_letters
    assert back.ordered_templates == stats.ordered_templates
    assert back.with_elements() is back  # has its own: the MP-20 file is not loaded
    old = {
        k: v
        for k, v in stats.to_dict().items()
        if k not in ("element_letters", "ordered_templates")
    }
    filled = TemplateStats.from_dict(old).with_elements()
    assert sum(filled.element_letters.values()) > 10_000
