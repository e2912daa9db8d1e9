"""Set-level rates over per-candidate flags.

Every rate is a fraction of *all* candidates (invalid ones included, counting as failures), so
a method cannot raise its rates by emitting broken structures. Flags are the pipeline's
(``valid``, ``charge_neutral``, ``unique``, ``novel``, ``stable``, ``metastable``, ``hit``).

- S.U.N. rate: stable (E_hull <= 0, up to 1e-6 eV/atom of float noise) and unique and novel;
- metastable S.U.N. rate: E_hull <= 0.1 eV/atom and unique and novel;
- hit rate: meets every objective of the request and every constraint (the ``hit`` flag).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = [
    "EHULL_TOLERANCE",
    "METASTABLE_EHULL",
    "STABLE_EHULL",
    "count",
    "hit_rate",
    "msun_rate",
    "rate",
    "stability_flags",
    "sun_rate",
]

STABLE_EHULL = 0.0  # eV/atom
METASTABLE_EHULL = 0.1  # eV/atom
# Float noise of the hull construction: a reference structure scored against a hull that
# contains it comes out at +-1e-16, which must still count as on the hull.
EHULL_TOLERANCE = 1e-6  # eV/atom

Flags = Mapping[str, bool]


def stability_flags(e_above_hull: float | None) -> tuple[bool, bool]:
    """(stable, metastable) for an energy above hull; unknown (None/NaN) is neither."""
    if e_above_hull is None or e_above_hull != e_above_hull:
        return False, False
    return (
        e_above_hull <= STABLE_EHULL + EHULL_TOLERANCE,
        e_above_hull <= METASTABLE_EHULL + EHULL_TOLERANCE,
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
