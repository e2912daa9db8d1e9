"""Loss terms from the request's objectives, and the exact differentiable properties.

Each objective becomes a per-candidate term (methods.md §3): target -> |y - value| (the paper's
form, it keeps pushing to the centre of the band); below/above -> hinge at the threshold moved
inward by ``margin`` (the argmax rounding at the end shifts predictions a little);
minimize/maximize -> the signed value. Terms are weighted and summed per candidate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ml.methods.smoacs.elements import masses
from ml.methods.smoacs.population import Population, SoftTypes, TypeTables
from ml.methods.smoacs.templates import ROLE_A, ROLE_B, ROLE_X
from ml.request import DesignRequest, Objective

__all__ = [
    "DIFFERENTIABLE_PROPERTIES",
    "LossTerm",
    "density",
    "terms_from_request",
    "tolerance_factor",
]

# Properties SMOACS can put in its loss (MEGNet predictors or exact functions).
DIFFERENTIABLE_PROPERTIES = ("band_gap", "formation_energy", "density", "tolerance_factor")
_AMU_PER_A3_TO_G_PER_CM3 = 1.66053906660


@dataclass(frozen=True)
class LossTerm:
    """One loss term on one property (``key`` names the prediction it reads)."""

    key: str
    goal: str
    value: float | None
    tolerance: float | None
    weight: float
    margin: float = 0.0
    # Success window used by mutation and reporting (inclusive), None: always met.
    window: tuple[float, float] | None = None

    def loss(self, y: torch.Tensor) -> torch.Tensor:
        if self.goal == "minimize":
            out = y
        elif self.goal == "maximize":
            out = -y
        elif self.goal == "target":
            assert self.value is not None
            out = (y - self.value).abs()
        elif self.goal == "below":
            assert self.value is not None
            out = torch.relu(y - (self.value - self.margin))
        elif self.goal == "above":
            assert self.value is not None
            out = torch.relu((self.value + self.margin) - y)
        elif self.goal == "window":
            assert self.window is not None
            lo, hi = self.window
            out = torch.relu(lo + self.margin - y) + torch.relu(y - (hi - self.margin))
        else:  # pragma: no cover - goals are validated upstream
            raise ValueError(self.goal)
        return self.weight * out

    def met(self, y: torch.Tensor) -> torch.Tensor:
        ok = torch.isfinite(y)
        if self.goal == "window":
            assert self.window is not None
            return ok & (y >= self.window[0]) & (y <= self.window[1])
        if self.goal in ("minimize", "maximize"):
            return ok
        obj = Objective.model_construct(
            property="x", goal=self.goal, value=self.value, tolerance=self.tolerance
        )
        return torch.tensor(
            [obj.satisfied(float(v)) for v in y.detach().cpu().tolist()], device=y.device
        )


def prediction_key(objective: Objective) -> str:
    if objective.property == "band_gap":
        return f"band_gap:{objective.fidelity or 'pbe'}"
    return objective.property


def terms_from_request(
    request: DesignRequest,
    margin: float,
    tolerance_window: tuple[float, float] | None,
    tolerance_weight: float = 1.0,
) -> list[LossTerm]:
    """Loss terms of the request; ``tolerance_window`` adds the perovskite tolerance term
    unless the request already has a tolerance-factor objective."""
    terms = [
        LossTerm(
            key=prediction_key(o),
            goal=o.goal,
            value=o.value,
            tolerance=o.tolerance,
            weight=o.weight,
            margin=margin if o.goal in ("below", "above") else 0.0,
        )
        for o in request.objectives
    ]
    if tolerance_window is not None and not any(t.key == "tolerance_factor" for t in terms):
        terms.append(
            LossTerm(
                key="tolerance_factor",
                goal="window",
                value=None,
                tolerance=None,
                weight=tolerance_weight,
                margin=0.02,
                window=tolerance_window,
            )
        )
    return terms


def density(pop: Population, types: torch.Tensor, lattice: torch.Tensor) -> torch.Tensor:
    """Mass density (g/cm^3) per candidate from the soft types."""
    mass_site = types @ masses(types.device)
    mass = torch.zeros(pop.num_candidates, device=types.device).index_add(
        0, pop.site_batch, mass_site
    )
    volume = torch.linalg.det(lattice).abs().clamp_min(1e-3)
    return mass / volume * _AMU_PER_A3_TO_G_PER_CM3


def tolerance_factor(pop: Population, soft: SoftTypes, tables: TypeTables) -> torch.Tensor:
    """Goldschmidt t = (r_A + r_X) / (sqrt(2) (r_B + r_X)) per candidate (NaN without roles).

    Site radii are the expected radius over the site's pattern-wise distributions (A XII-fold,
    B and X VI-fold, as the tolerance-factor oracle); r_A, r_B, r_X are averaged over the
    candidate's sites of each role (the paper averages the three X sites).
    """
    role = pop.site["role"]
    radii = tables.radii[(role + 1)[:, None], pop.site["ox_idx"]]  # (S, P, K)
    r_site = (soft.pattern_probs * (soft.per_pattern * radii).sum(-1)).sum(-1)  # (S,)
    b = pop.num_candidates
    batch = pop.site_batch
    means = []
    for r in (ROLE_A, ROLE_B, ROLE_X):
        sel = (role == r).float()
        total = torch.zeros(b, device=r_site.device).index_add(0, batch, r_site * sel)
        count = torch.zeros(b, device=r_site.device).index_add(0, batch, sel)
        means.append(torch.where(count > 0, total / count.clamp_min(1.0), math.nan))
    r_a, r_b, r_x = means
    return (r_a + r_x) / (math.sqrt(2.0) * (r_b + r_x))
