"""Set-level rates over per-candidate flags.

Every rate is a fraction of *all* candidates (invalid ones included, counting as failures), so
a method cannot raise its rates by emitting broken structures. Flags are the pipeline's
(``valid``, ``charge_neutral``, ``unique``, ``novel``, ``stable``, ``metastable``, ``hit``).

- S.U.N. rate: stable (E_hull <= 0, up to 1e-6 eV/atom of float noise) and unique and novel;
- metastable S.U.N. rate: E_hull <= 0.1 eV/atom and unique and novel;
- hit rate: meets every objective of the request and every constraint (the ``hit`` flag);
  a minimize/maximize objective is met by the top decile of the job
  (:data:`EXTREMAL_TOP_FRACTION`, :func:`top_cutoff`);
- S.U.N.-hit rate (the headline for a lab): metastable and unique and novel and a hit; the
  stable variant asks E_hull <= 0 instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = [
    "EHULL_TOLERANCE",
    "EXTREMAL_TOP_FRACTION",
    "METASTABLE_EHULL",
    "STABLE_EHULL",
    "count",
    "hit_rate",
    "msun_rate",
    "rate",
    "stability_flags",
    "stable_sun_hit_rate",
    "sun_hit_rate",
    "sun_rate",
    "top_cutoff",
]

STABLE_EHULL = 0.0  # eV/atom
METASTABLE_EHULL = 0.1  # eV/atom
# A relaxation stopped at fmax 0.1 eV/A leaves a crystal a few meV/atom above the minimum the
# references reached (relaxed bcc Fe came out +0.5 meV/atom above its own reference), so "on
# the hull" allows 5 meV/atom: well inside the oracles' ~40 meV/atom error against DFT.
EHULL_TOLERANCE = 0.005  # eV/atom
# A minimize/maximize objective has no threshold: the best tenth of the job's ranked values
# (at least one candidate) meets it, so a min/max-only job's hit rate is about 0.1 of the
# scored candidates rather than all of them.
EXTREMAL_TOP_FRACTION = 0.1

Flags = Mapping[str, bool]


def stability_flags(e_above_hull: float | None) -> tuple[bool, bool]:
    """(stable, metastable) for an energy above hull; unknown (None/NaN) is neither."""
    if e_above_hull is None or e_above_hull != e_above_hull:
        return False, False
    return (
        e_above_hull <= STABLE_EHULL + EHULL_TOLERANCE,
        e_above_hull <= METASTABLE_EHULL + 1e-9,  # 0.1 is itself a tolerance: no extra
    )


def count(flags: Sequence[Flags], *keys: str) -> int:
    """Candidates whose flags are all True for ``keys``."""
    return sum(1 for f in flags if all(f.get(k, False) for k in keys))


def rate(flags: Sequence[Flags], *keys: str) -> float:
    """Fraction of candidates with all ``keys`` True (0.0 for an empty set)."""
    return count(flags, *keys) / len(flags) if flags else 0.0


def sun_rate(flags: Sequence[Flags]) -> float:
    return rate(flags, "stable", "unique", "novel")


def msun_rate(flags: Sequence[Flags]) -> float:
    return rate(flags, "metastable", "unique", "novel")


def hit_rate(flags: Sequence[Flags]) -> float:
    return rate(flags, "hit")


def sun_hit_rate(flags: Sequence[Flags]) -> float:
    return rate(flags, "metastable", "unique", "novel", "hit")


def stable_sun_hit_rate(flags: Sequence[Flags]) -> float:
    return rate(flags, "stable", "unique", "novel", "hit")


def top_cutoff(values: Sequence[float], *, maximize: bool) -> tuple[float, int] | None:
    """(cutoff, n_top) of the best :data:`EXTREMAL_TOP_FRACTION` of ``values`` (at least one):
    a value at least as good as the cutoff is in the top (ties at the cutoff included).
    None for no values."""
    if not values:
        return None
    n_top = max(1, math.ceil(EXTREMAL_TOP_FRACTION * len(values)))
    ordered = sorted(values, reverse=maximize)
    return float(ordered[n_top - 1]), n_top
