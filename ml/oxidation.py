"""Oxidation states, from one source (SMACT's ICSD-24 list, cross-checked with pymatgen for the
confident subset): the charge-neutrality check uses the broad list, SMOACS the confident one
(it assigns states by gradient descent, where a rare state is more often a wrong one)."""

from __future__ import annotations

import warnings
from functools import cache


def _smact_states(symbol: str) -> tuple[set[int], set[int]] | None:
    """(SMACT default, SMACT ICSD-24) states; None for an element SMACT does not know."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # smact warns about missing data for heavy elements
        import smact

        try:
            sm = smact.Element(symbol)
            return set(sm.oxidation_states or ()), set(sm.oxidation_states_icsd24 or ())
        except (NameError, KeyError, ValueError):
            return None


@cache
def oxidation_states(symbol: str) -> tuple[int, ...]:
    """Non-zero ICSD oxidation states of an element (SMACT's icsd24 list)."""
    states = _smact_states(symbol)
    if states is None:
        return ()
    return tuple(sorted(int(s) for s in states[1] if s != 0))


@cache
def confident_oxidation_states(symbol: str) -> tuple[int, ...]:
    """Non-zero states in all four lists: SMACT default and ICSD-24, pymatgen's ICSD and
    common states."""
    from pymatgen.core import Element

    states = _smact_states(symbol)
    if states is None:
        return ()
    el = Element(symbol)
    both = states[0] & states[1] & set(el.icsd_oxidation_states) & set(el.common_oxidation_states)
    return tuple(sorted(int(s) for s in both if s != 0))
