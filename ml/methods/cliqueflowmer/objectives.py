"""Request objectives -> the latent objective g(z) that the search minimises.

Each objective whose property has a predictor in the searched latent space (the checkpoint's
own predictor or a head) becomes one term, weighted as the request weights it, so g mirrors
``DesignRequest.objective_loss`` with predictors in place of oracles:

- minimize: f;  maximize: -f;  target: |f - value| (the centre of the band);
- below: max(0, f - (value - m));  above: max(0, value + m - f), with the margin m the
  default target band (10 % of |value|, at least 0.1), so predictor error leaves room.

Objectives on properties with no predictor here are left to the pipeline's oracles (they are
listed in ``Target.unmapped``). No term is added that the request did not ask for: the
formation-energy penalty of the paper's regularised gap applies only through the
``band_gap_regularized`` predictor (``params.property``) or a formation_energy objective.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from ml.request import Goal, default_tolerance

Predictor = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Term:
    property: str  # predictor name in the latent space
    goal: Goal
    value: float | None
    weight: float
    objective_index: int | None  # None: the default goal of a params.property with no objective


@dataclass
class Target:
    space: str  # CHECKPOINT_FILES key: which latent space is searched
    terms: list[Term]
    unmapped: list[str] = field(default_factory=list)

    @property
    def primary(self) -> Term:
        return self.terms[0]


def term_loss(term: Term, f: torch.Tensor) -> torch.Tensor:
    """Badness of predicted values ``f`` for one term (lower is better)."""
    if term.goal == "minimize":
        return f
    if term.goal == "maximize":
        return -f
    assert term.value is not None
    if term.goal == "target":
        return (f - term.value).abs()
    margin = default_tolerance(term.value)
    if term.goal == "below":
        return torch.relu(f - (term.value - margin))
    return torch.relu(term.value + margin - f)


def latent_objective(
    terms: list[Term], predictors: Mapping[str, Predictor]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """g(z) = sum of weight * term loss; every term's predictor must be in ``predictors``."""
    missing = [t.property for t in terms if t.property not in predictors]
    if missing:
        raise KeyError(f"no predictor for {missing}")

    def g(z: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(z.shape[:-1], device=z.device)
        for t in terms:
            total = total + t.weight * term_loss(t, predictors[t.property](z).float())
        return total

    return g
