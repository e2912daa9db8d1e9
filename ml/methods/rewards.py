"""A request's objectives as a reward in [0, 1], for methods that learn from a scalar
(MatInvent's RL fine-tuning; usable by any reward-driven method).

Per objective: ``target`` is 1 inside ``value ± tolerance`` and falls off as a Gaussian of the
distance past the band edge; ``below`` / ``above`` are 1 past the threshold and fall off the same
way on the wrong side; ``minimize`` / ``maximize`` have no threshold, so a logistic curve around
a typical value of the property ranks them. The falloff width is the property's scale (or the
target's tolerance when that is wider), so a miss by one scale keeps ~0.6 of the reward and
the learner still sees which way to move. Several objectives combine by their weighted mean,
their minimum, or their weighted geometric mean (``product``); an unscored property gives 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

from ml.request import Objective

__all__ = ["COMBINE_MODES", "PROPERTY_SCALES", "objective_reward", "request_reward"]

Combine = Literal["mean", "min", "product"]
COMBINE_MODES: tuple[str, ...] = ("mean", "min", "product")

# property -> (scale of the falloff, typical value the logistic of min/max goals is centred
# on), in the property's unit; rough MP-20 spreads and medians.
PROPERTY_SCALES: dict[str, tuple[float, float]] = {
    "formation_energy": (0.5, -1.5),
    "band_gap": (1.0, 1.0),
    "energy_above_hull": (0.05, 0.05),
    "density": (2.0, 5.0),
    "hhi": (1500.0, 3000.0),
    "tolerance_factor": (0.05, 0.9),
}
DEFAULT_SCALE = (1.0, 0.0)


def _falloff(distance: float, width: float) -> float:
    """1 at distance <= 0, a half-Gaussian of the distance past it."""
    if distance <= 0.0:
        return 1.0
    return math.exp(-0.5 * (distance / width) ** 2)


def objective_reward(objective: Objective, value: float | None) -> float:
    """Reward in [0, 1] of one property value for one objective (0 when unscored)."""
    if value is None or not math.isfinite(value):
        return 0.0
    scale, centre = PROPERTY_SCALES.get(objective.property, DEFAULT_SCALE)
    goal = objective.goal
    if goal == "target":
        assert objective.value is not None
        tol = objective.tolerance or 0.0
        return _falloff(abs(value - objective.value) - tol, max(scale, tol))
    if goal == "below":
        assert objective.value is not None
        return _falloff(value - objective.value, scale)
    if goal == "above":
        assert objective.value is not None
        return _falloff(objective.value - value, scale)
    z = (value - centre) / scale
    z = -z if goal == "minimize" else z
    return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))


def request_reward(
    objectives: Sequence[Objective],
    values: Mapping[str, float | None],
    combine: Combine = "mean",
) -> float:
    """Combined reward of a crystal's property values; 0 without objectives."""
    if not objectives:
        return 0.0
    parts = [objective_reward(o, values.get(o.property)) for o in objectives]
    weights = [o.weight for o in objectives]
    if combine == "min":
        return min(parts)
    total = sum(weights)
    if combine == "product":
        if min(parts) <= 0.0:
            return 0.0
        return math.exp(sum(w * math.log(p) for w, p in zip(weights, parts, strict=True)) / total)
    return sum(w * p for w, p in zip(weights, parts, strict=True)) / total
