"""Constraint checks on one crystal: elements, size, composition, charge neutrality, space group
and crystal family. Used by the pipeline (against a request) and by data filters.

Charge neutrality (:func:`is_charge_neutral`), strict form: some assignment of oxidation states
to the atoms of the reduced formula sums to zero, each atom taking one of its element's
non-zero oxidation states observed in the ICSD (SMACT's ``oxidation_states_icsd24`` list).
Mixed valence is allowed (Fe3O4 = Fe2+ + 2 Fe3+), but all atoms of one element share the
sign of their state (so NaCl3 is not made neutral by Cl+ next to Cl-). Consequences:

- a single-element composition is never neutral (its only charge-balanced state is 0);
- intermetallics (every element a metal) are usually not neutral.

:func:`neutrality_ok` applies the request's rule: when the request asks for neutrality
(``constraints.charge_neutral``, the default) only strict neutrality passes; when it does not,
all-metal compositions (pure metals and intermetallics, as SMACT's validity check does) also
pass, while other non-neutral compositions (e.g. NaCl2) still fail.
On MP-20 test, 95.4% of the formulas that are not all-metal are strictly neutral.

Space groups are spglib numbers at symprec 0.1 (as in the data sets). The perovskite family is
judged by stoichiometry: ABX3 per formula unit, i.e. ``n_atoms`` is a multiple of 5 and some
set of anion-capable elements (N, O, S, Se, Te, F, Cl, Br, I) makes 3/5 of the atoms. Relaxed
perovskites (perov5) are often too distorted for a coordination test, so none is made.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from fractions import Fraction
from functools import lru_cache

import numpy as np
from pymatgen.core import Composition, Element

from ml.crystal import Crystal
from ml.oxidation import oxidation_states
from ml.request import Constraints, ElementConstraints

__all__ = [
    "PEROVSKITE_ANIONS",
    "composition_of",
    "constraint_violations",
    "elements_ok",
    "is_all_metal",
    "is_charge_neutral",
    "is_perovskite",
    "matches_composition",
    "neutrality_ok",
    "oxidation_states",
    "space_group_number",
]

PEROVSKITE_ANIONS = frozenset({"N", "O", "S", "Se", "Te", "F", "Cl", "Br", "I"})


def composition_of(item: Crystal | Composition | str) -> Composition:
    if isinstance(item, Composition):
        return item
    if isinstance(item, Crystal):
        counts = Counter(int(z) for z in item.numbers)
        return Composition({Element.from_Z(z): n for z, n in counts.items()})
    try:
        return Composition(item)
    except Exception as exc:
        raise ValueError(f"unparseable composition {item!r}") from exc


def elements_ok(elements: Iterable[str], constraints: ElementConstraints) -> bool:
    """All elements permitted (allowed minus excluded) and every required element present."""
    present = set(elements)
    if not all(constraints.permits(e) for e in present):
        return False
    return all(e in present for e in constraints.required)


def _integer_amounts(comp: Composition) -> dict[str, int]:
    reduced = comp.reduced_composition
    fracs = {el.symbol: Fraction(float(a)).limit_denominator(1000) for el, a in reduced.items()}
    denom = int(np.lcm.reduce([f.denominator for f in fracs.values()]))
    return {s: int(f * denom) for s, f in fracs.items()}


def _charge_sums(n: int, states: tuple[int, ...]) -> set[int]:
    """Total charges reachable by n atoms each taking one of ``states``."""
    sums = {0}
    for _ in range(n):
        sums = {a + s for a in sums for s in states}
    return sums


@lru_cache(maxsize=65536)
def _neutral_reduced(formula: str) -> bool:
    amounts = _integer_amounts(Composition(formula))
    if len(amounts) < 2:
        return False
    totals = {0}
    for symbol, n in amounts.items():
        states = oxidation_states(symbol)
        pos = tuple(s for s in states if s > 0)
        neg = tuple(s for s in states if s < 0)
        reach = (_charge_sums(n, pos) if pos else set()) | (_charge_sums(n, neg) if neg else set())
        if not reach:
            return False
        totals = {t + r for t in totals for r in reach}
    return 0 in totals


def is_charge_neutral(item: Crystal | Composition | str) -> bool:
    """Strict charge neutrality of the reduced composition (cached per reduced formula)."""
    comp = composition_of(item)
    if comp.num_atoms <= 0:
        return False
    return _neutral_reduced(comp.reduced_formula)


def is_all_metal(item: Crystal | Composition | str) -> bool:
    """Every element a metal (pure metals and intermetallics)."""
    comp = composition_of(item)
    return len(comp) > 0 and all(el.is_metal for el in comp.elements)


def neutrality_ok(item: Crystal | Composition | str, *, requested: bool) -> bool:
    """The request's neutrality rule: strict when requested, all-metal exempt otherwise."""
    if is_charge_neutral(item):
        return True
    return not requested and is_all_metal(item)


def space_group_number(crystal: Crystal, symprec: float = 0.1) -> int | None:
    """spglib space group number, None when spglib finds no symmetry (degenerate cell)."""
    import warnings

    import spglib

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # spglib's error-handling notice
            dataset = spglib.get_symmetry_dataset(
                (crystal.lattice, crystal.frac_coords, crystal.numbers), symprec=symprec
            )
    except Exception:  # spglib raises on degenerate input in some versions
        return None
    if dataset is None:
        return None
    number = getattr(dataset, "number", None)
    if number is None:  # older spglib returns a dict
        number = dataset["number"]  # type: ignore[index]
    return int(number)


SNAP_TOLERANCES = (0.1, 0.2, 0.3, 0.5)


def snap_to_space_group(
    crystal: Crystal, wanted: int, tolerances: tuple[float, ...] = SNAP_TOLERANCES
) -> Crystal | None:
    """The ideal primitive cell of ``wanted`` when ``crystal`` has that symmetry within some
    tolerance (Å), else None.

    Generative models place atoms only near symmetric sites; a user who asked for a space
    group wants the idealised structure (as spglib would report it at symprec 0.1).
    """
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    structure = crystal.to_structure()
    for tol in tolerances:
        if space_group_number(crystal, symprec=tol) != wanted:
            continue
        try:
            ideal = SpacegroupAnalyzer(structure, symprec=tol).get_primitive_standard_structure()
        except Exception:  # spglib can fail on a degenerate cell at a loose tolerance
            continue
        snapped = Crystal.from_structure(ideal)
        if space_group_number(snapped) == wanted:
            return snapped
    return None


def is_perovskite(item: Crystal | Composition | str) -> bool:
    """ABX3 stoichiometry: a multiple of 5 atoms, of which some set of anion-capable elements
    (PEROVSKITE_ANIONS) makes exactly 3/5 and the other elements split into an A and a B site
    of 1/5 each, with different elements on them (so Te or S may sit on a cation site, as in
    perov5's VTeO3, double perovskites Ba2FeMoO6 pass, and P2Se3 or Mn2O3 do not; perov5's
    enumeration also holds A = B entries such as Sc2O3, 1.6 % of it, which this rejects)."""
    comp = composition_of(item)
    n = comp.num_atoms
    if n < 5 or abs(n / 5 - round(n / 5)) > 1e-8:
        return False
    amounts = [(el.symbol, a) for el, a in comp.items()]
    candidates = [i for i, (el, _) in enumerate(amounts) if el in PEROVSKITE_ANIONS]
    for mask in range(1, 2 ** len(candidates)):
        anions = {candidates[j] for j in range(len(candidates)) if mask >> j & 1}
        if abs(sum(amounts[i][1] for i in anions) - 3 * n / 5) > 1e-8:
            continue
        cations = [a for i, (_, a) in enumerate(amounts) if i not in anions]
        if _splits_in_two(cations, n / 5):
            return True
    return False


def _splits_in_two(amounts: list[float], half: float) -> bool:
    """Some non-empty proper subset of ``amounts`` sums to ``half`` (the rest to the other)."""
    k = len(amounts)
    return any(
        abs(sum(a for i, a in enumerate(amounts) if mask >> i & 1) - half) < 1e-8
        for mask in range(1, 2**k - 1)
    )


def matches_composition(item: Crystal | Composition | str, composition: str) -> bool:
    """Same reduced composition as ``composition`` (any number of formula units)."""
    return composition_of(item).reduced_formula == Composition(composition).reduced_formula


def _formula_units_ok(comp: Composition, constraints: Constraints) -> bool:
    """The cell holds one of the requested numbers of formula units (any, when not given)."""
    if not constraints.formula_units:
        return True
    _, z = comp.get_reduced_composition_and_factor()
    return round(z) in constraints.formula_units


def constraint_violations(
    crystal: Crystal, constraints: Constraints, *, space_group: int | None = None
) -> list[str]:
    """Names of the request constraints the crystal breaks ([] when it satisfies all).

    Names are the request fields: ``elements``, ``max_atoms``, ``composition`` (the reduced
    formula, and the number of formula units when ``formula_units`` is given),
    ``charge_neutral``, ``space_groups``, ``crystal_family``. ``space_group`` may pass a
    number already computed (spglib, symprec 0.1).
    """
    out: list[str] = []
    comp = composition_of(crystal)
    if not elements_ok((el.symbol for el in comp.elements), constraints.elements):
        out.append("elements")
    if crystal.num_atoms > constraints.max_atoms:
        out.append("max_atoms")
    if constraints.composition is not None and not (
        matches_composition(comp, constraints.composition) and _formula_units_ok(comp, constraints)
    ):
        out.append("composition")
    # Neutrality is a constraint only when asked for; otherwise it is just a reported flag.
    if constraints.charge_neutral and not is_charge_neutral(comp):
        out.append("charge_neutral")
    if constraints.space_groups is not None:
        sg = space_group if space_group is not None else space_group_number(crystal)
        if sg not in constraints.space_groups:
            out.append("space_groups")
    if constraints.crystal_family == "perovskite" and not is_perovskite(comp):
        out.append("crystal_family")
    return out
