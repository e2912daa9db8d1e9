"""Rewards of Crystal-GFN from the request's objectives.

``log R = sum_i w_i * r_i`` over the objectives the GFlowNet can evaluate without atomic
positions:

* ``formation_energy`` and ``band_gap``: the proxy (:mod:`.proxy`);
* ``density``: exact from the composition and the sampled lattice;
* ``hhi``: exact from the composition (pymatgen's element table, mass-weighted).

Per objective, in units of the property's scale (1 eV/atom, 1 eV, 1 g/cm^3, 1000):
minimize ``-beta y``, maximize ``+beta y`` (the paper's Boltzmann reward ``exp(-beta E)``),
and below / above / target a smooth band: ``-beta * h(d)`` with ``d`` the distance outside
the allowed side or band and ``h`` 0 inside, quadratic over the first ``tau`` outside, then
linear, so every sample inside the band has the same reward and the GFlowNet spreads over
it. ``energy_above_hull`` has no position-free model: its objective is served by minimising
the proxy formation energy (a surrogate, noted in each candidate's meta). Objectives on other
properties are left to the pipeline's ranking. Without any evaluable objective the reward is
the paper's, ``exp(-beta E_form)``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch

from ml.methods.crystal_gfn.chemistry import hhi_table, mass_table
from ml.methods.crystal_gfn.proxy import ProxyModel
from ml.request import DesignRequest

__all__ = ["MODELLED", "Reward", "RewardTerm", "terms_from_request"]

SCALES = {"formation_energy": 1.0, "band_gap": 1.0, "density": 1.0, "hhi": 1000.0}
MODELLED = frozenset(SCALES)
SURROGATES = {"energy_above_hull": "formation_energy"}
BAND_SOFTNESS = 0.1  # tau, in scale units: how sharply a band's edge falls off
AMU_PER_A3_TO_G_PER_CM3 = 1.66053906660


@dataclass(frozen=True)
class RewardTerm:
    property: str
    goal: str
    value: float | None = None
    tolerance: float | None = None
    weight: float = 1.0
    surrogate_for: str | None = None


def terms_from_request(request: DesignRequest) -> tuple[list[RewardTerm], list[str]]:
    """(reward terms, properties of objectives the reward does not model)."""
    terms: list[RewardTerm] = []
    ignored: list[str] = []
    for obj in request.objectives:
        if obj.property in MODELLED:
            terms.append(RewardTerm(obj.property, obj.goal, obj.value, obj.tolerance, obj.weight))
        elif obj.property in SURROGATES:
            terms.append(
                RewardTerm(
                    SURROGATES[obj.property], "minimize", None, None, obj.weight, obj.property
                )
            )
        else:
            ignored.append(obj.property)
    if not terms:
        terms.append(RewardTerm("formation_energy", "minimize"))
    return terms, ignored


def _soft_hinge(x: torch.Tensor) -> torch.Tensor:
    """0 for x <= 0, quadratic up to ``BAND_SOFTNESS``, then linear (Huber-like): flat inside
    the band, a continuous slope at its edge."""
    tau = BAND_SOFTNESS
    x = x.clamp(min=0.0)
    return torch.where(x < tau, x * x / (2 * tau), x - tau / 2)


class Reward:
    """Log-rewards and the values they come from, for batches of (group, composition,
    lattice); ``dead_log_reward`` for trajectories that ended without a crystal."""

    def __init__(
        self,
        terms: list[RewardTerm],
        proxy: ProxyModel,
        beta: float,
        dead_log_reward: float = -40.0,
    ) -> None:
        self.terms = terms
        self.proxy = proxy
        self.beta = float(beta)
        self.dead_log_reward = float(dead_log_reward)
        dev = next(proxy.parameters()).device
        self._mass = torch.tensor(mass_table(), dtype=torch.float32, device=dev)
        self._hhi = torch.tensor(hhi_table(), dtype=torch.float32, device=dev)

    def key(self) -> str:
        return json.dumps(
            {"terms": [asdict(t) for t in self.terms], "beta": self.beta}, sort_keys=True
        )

    @torch.no_grad()
    def values(
        self,
        space_group: torch.Tensor,
        z: torch.Tensor,
        count: torch.Tensor,
        lattice: torch.Tensor,
        conv_atoms: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Proxy formation energy and band gap, exact density and HHI (NaN where an element
        has no HHI value), each (B,)."""
        pred = self.proxy.predict(space_group, z, count, lattice)
        count = count.float()
        mass = (self._mass[z] * count).sum(1)
        centring = conv_atoms.float() / count.sum(1).clamp(min=1.0)
        volume = _volume(lattice)
        element_hhi = self._hhi[z]
        weights = self._mass[z] * count / mass.clamp(min=1e-9)[:, None]  # mass fractions
        hhi = (torch.nan_to_num(element_hhi) * weights).sum(1)
        missing = (torch.isnan(element_hhi) & (count > 0)).any(1)
        hhi = torch.where(missing, torch.full_like(hhi, float("nan")), hhi)
        return {
            "formation_energy": pred[:, 0],
            "band_gap": pred[:, 1],
            "density": mass * centring * AMU_PER_A3_TO_G_PER_CM3 / volume,
            "hhi": hhi,
        }

    def log_reward(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        total = torch.zeros_like(values["formation_energy"])
        for t in self.terms:
            y = values[t.property] / SCALES[t.property]
            v = None if t.value is None else t.value / SCALES[t.property]
            if t.goal == "minimize":
                r = -y
            elif t.goal == "maximize":
                r = y
            elif t.goal == "below":
                r = -_soft_hinge(y - v)
            elif t.goal == "above":
                r = -_soft_hinge(v - y)
            else:  # target
                tol = (t.tolerance or 0.0) / SCALES[t.property]
                r = -_soft_hinge((y - v).abs() - tol)
            # A value the reward cannot compute (e.g. HHI of an element without data) is
            # treated as far outside the band.
            r = torch.nan_to_num(r, nan=-10.0)
            total = total + self.beta * t.weight * r
        return total


def _volume(lattice: torch.Tensor) -> torch.Tensor:
    a, b, c = lattice[:, 0], lattice[:, 1], lattice[:, 2]
    ca, cb, cg = (torch.cos(torch.deg2rad(lattice[:, i])) for i in (3, 4, 5))
    factor = (1 - ca**2 - cb**2 - cg**2 + 2 * ca * cb * cg).clamp(min=1e-6)
    return a * b * c * torch.sqrt(factor)
