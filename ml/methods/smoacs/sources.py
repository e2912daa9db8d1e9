"""Where a run's templates come from, and the element tables its masks use.

Data-set templates are MP-20 train structures (charge-neutral under SMOACS's oxidation states,
few sites), sampled with the request's seed; user templates are the request's CIFs; perovskite
templates are ideal cells or supercells with random lattice lengths.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from ml.crystal import Crystal
from ml.methods.base import RequestError
from ml.methods.smoacs.elements import (
    ELEMENTS,
    NUM_ELEMENTS,
    OX_MIN,
    ionic_radius_table,
    ox_allowed_table,
)
from ml.methods.smoacs.params import SmoacsParams
from ml.methods.smoacs.population import TypeTables
from ml.methods.smoacs.templates import (
    PEROVSKITE_PATTERNS,
    ROLE_A,
    ROLE_B,
    ROLE_X,
    Template,
    perovskite_template,
    template_from_crystal,
    tied,
    unmasked,
)
from ml.request import DesignRequest

__all__ = [
    "allowed_elements",
    "build_tables",
    "build_templates",
    "feasible_perovskite_patterns",
    "resolve_source",
]

_ROLES = (ROLE_A, ROLE_B, ROLE_X)
_ROLE_COORDINATION = {ROLE_A: "XII", ROLE_B: "VI", ROLE_X: "VI"}


def allowed_elements(request: DesignRequest) -> np.ndarray:
    """(K,) bool: vocabulary elements the request permits."""
    rules = request.constraints.elements
    return np.array([rules.permits(s) for s in ELEMENTS], dtype=bool)


def build_tables(request: DesignRequest, device: str | torch.device) -> TypeTables:
    """Masks and radii per (role, oxidation number); the last oxidation row is 'unmasked'."""
    allowed = allowed_elements(request)
    base = ox_allowed_table(allowed)  # (n_ox, K)
    n_ox = base.shape[0]
    tables = np.zeros((4, n_ox + 1, NUM_ELEMENTS), dtype=bool)
    radii = np.zeros((4, n_ox + 1, NUM_ELEMENTS), dtype=np.float64)
    tables[0, :n_ox] = base
    tables[:, n_ox] = allowed
    for role in _ROLES:
        r = ionic_radius_table(_ROLE_COORDINATION[role])
        known = np.isfinite(r)
        sign_ok = np.zeros((n_ox, 1), dtype=bool)
        ox_values = np.arange(n_ox) + OX_MIN
        sign_ok[:, 0] = ox_values < 0 if role == ROLE_X else ox_values > 0
        # A perovskite site admits elements whose radius for that site is tabulated.
        tables[role + 1, :n_ox] = base & known & sign_ok
        radii[role + 1, :n_ox] = np.where(known, r, 0.0)
    return TypeTables(
        allowed=torch.tensor(tables, device=device),
        radii=torch.tensor(radii, dtype=torch.float32, device=device),
    )


def resolve_source(request: DesignRequest, params: SmoacsParams) -> str:
    if params.template_source != "auto":
        return params.template_source
    if request.constraints.crystal_family == "perovskite":
        return "perovskite"
    if request.constraints.templates:
        return "user"
    return "dataset"


def feasible_perovskite_patterns(tables: TypeTables) -> list[tuple[int, int, int]]:
    """The (A, B, X) patterns whose every site admits at least one permitted element."""
    t = tables.allowed.cpu().numpy()
    return [
        p
        for p in PEROVSKITE_PATTERNS
        if all(t[role + 1, ox - OX_MIN].any() for role, ox in zip(_ROLES, p, strict=True))
    ]


def _ox_ok(tables: TypeTables) -> np.ndarray:
    """(n_ox,) bool: some permitted element takes this oxidation number (no role)."""
    t = tables.allowed.cpu().numpy()
    return t[0, :-1].any(axis=1)


@lru_cache(maxsize=4)
def _dataset_crystals(pool: int) -> tuple[Crystal, ...]:
    from ml.data.records import load_records

    return tuple(r.crystal for r in load_records("mp20", "train", limit=pool))


def user_templates(
    request: DesignRequest, params: SmoacsParams, tables: TypeTables
) -> list[Template]:
    """Templates from the request's CIFs; a CIF without a neutral pattern is a request error."""
    out = []
    for i, cif in enumerate(request.constraints.templates or []):
        crystal = Crystal.from_cif(cif)
        if crystal.num_atoms > request.constraints.max_atoms:
            raise RequestError(
                f"constraints.templates.{i}",
                f"template has {crystal.num_atoms} sites, more than max_atoms "
                f"{request.constraints.max_atoms}",
            )
        unknown = sorted({s for s in crystal.species if s not in ELEMENTS})
        if unknown:
            raise RequestError(f"constraints.templates.{i}", f"unsupported elements {unknown}")
        t = template_from_crystal(
            crystal, _ox_ok(tables), params.max_patterns, params.length_bounds, f"user-{i}"
        )
        if t is None:
            raise RequestError(
                f"constraints.templates.{i}",
                f"{crystal.formula}: no charge-neutral oxidation pattern that the permitted "
                "elements can fill",
            )
        out.append(t)
    return out


def build_templates(
    request: DesignRequest,
    params: SmoacsParams,
    tables: TypeTables,
    count: int,
    rng: np.random.Generator,
) -> list[Template]:
    """``count`` templates from the resolved source (sampled with ``rng``)."""
    source = resolve_source(request, params)
    if source == "user":
        pool = user_templates(request, params, tables)
        picks = [pool[i % len(pool)] for i in range(count)]
    elif source == "perovskite":
        patterns = feasible_perovskite_patterns(tables)
        lo, hi = params.perovskite_lengths
        picks = []
        for _ in range(count):
            a = rng.uniform(lo, hi)
            lengths = a * (1.0 + rng.uniform(-0.03, 0.03, size=3))
            picks.append(
                perovskite_template(
                    lengths,
                    params.supercell,
                    params.perovskite_coord_bound,
                    params.length_bounds,
                    params.per_cell_patterns,
                    patterns,
                )
            )
    else:
        picks = _dataset_templates(request, params, tables, count, rng)
    if not params.masks:
        picks = [unmasked(t) for t in picks]
    if params.tie_sites:
        picks = [tied(t) for t in picks]
    return picks


def _dataset_templates(
    request: DesignRequest,
    params: SmoacsParams,
    tables: TypeTables,
    count: int,
    rng: np.random.Generator,
) -> list[Template]:
    max_sites = min(params.template_max_sites, request.constraints.max_atoms)
    crystals = [
        c
        for c in _dataset_crystals(params.template_pool)
        if c.num_atoms <= max_sites and all(s in ELEMENTS for s in c.species)
    ]
    ox_ok = _ox_ok(tables)
    chosen: list[Template] = []
    for i in rng.permutation(len(crystals)):
        t = template_from_crystal(
            crystals[i], ox_ok, params.max_patterns, params.length_bounds, "mp20-train"
        )
        if t is not None:
            t.meta["template_index"] = int(i)
            chosen.append(t)
            if len(chosen) >= count:
                break
    if not chosen:
        raise RequestError(
            "constraints",
            f"no data-set template with at most {max_sites} sites has a charge-neutral "
            "oxidation pattern the permitted elements can fill",
        )
    # Fewer usable templates than candidates: reuse them (their variables start apart anyway).
    return [chosen[i % len(chosen)] for i in range(count)]
