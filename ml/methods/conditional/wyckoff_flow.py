"""Flow matching on the free Wyckoff parameters and the free lattice parameters.

Paths (t = 0 prior, t = 1 data), only over free dimensions:
* orbit parameters: uniform prior on the torus, ``u_t = wrap(u0 + t d)``, ``d = min_image(u1 -
  u0)``, target ``d`` (periodic interpolation);
* lattice state (normalised log-lengths, angles): N(0, 1) prior with the crystal system's ties
  imposed, straight line, target ``l1 - l0``.

Condition dropout (space group embedding, property targets) in training; classifier-free
guidance at sampling ``v = (1 + w) v(cond) - w v(uncond)``. Everything a sample depends on is
batched, so one call generates thousands of crystals on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ml.generative.periodic import min_image
from ml.methods.conditional.flow import condition_keep_masks
from ml.methods.conditional.wyckoff_data import OrbitBatch, apply_ties
from ml.methods.conditional.wyckoff_model import WyckoffFlowModel, wrap

COORD_WEIGHT = 12.0  # ~ 1 / variance of a uniform-prior velocity target, so parts weigh alike


@dataclass(frozen=True)
class WyckoffDropout:
    p_all: float = 0.15
    p_each: float = 0.25


def drop_conditions(
    batch: OrbitBatch, cfg: WyckoffDropout, generator: torch.Generator | None = None
) -> OrbitBatch:
    keep_spg, keep_props = condition_keep_masks(
        batch.size, batch.props.shape[1], cfg.p_all, cfg.p_each, batch.wid.device, generator
    )
    return replace(
        batch, space_group=batch.space_group * keep_spg, props_given=batch.props_given & keep_props
    )


def prior_sample(
    batch: OrbitBatch, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    dev = batch.wid.device
    u0 = torch.rand(batch.xyz.shape, generator=generator, device=dev) * batch.free
    l0 = torch.randn(batch.size, 6, generator=generator, device=dev)
    return u0, apply_ties(l0, batch)


def flow_loss(
    model: WyckoffFlowModel,
    batch: OrbitBatch,
    generator: torch.Generator | None = None,
    dropout: WyckoffDropout | None = WyckoffDropout(),
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    b, dev = batch.size, batch.wid.device
    if dropout is not None:
        batch = drop_conditions(batch, dropout, generator)
    t = torch.rand(b, generator=generator, device=dev)
    free = batch.free.float()
    u0, l0 = prior_sample(batch, generator)
    d = min_image(batch.xyz - u0) * free
    ut = wrap(u0 + t[:, None, None] * d) * free
    target_l = batch.lattice - l0
    lt = l0 + t[:, None] * target_l
    v_xyz, v_lat = model(batch, ut, lt, t, batch.space_group, batch.props, batch.props_given)
    nfree = free.sum((1, 2))
    coord_err = ((v_xyz - d) ** 2 * free).sum((1, 2)) / nfree.clamp(min=1)
    lat_free = batch.lat_free.float()
    lat_err = ((v_lat - target_l) ** 2 * lat_free).sum(1) / lat_free.sum(1)
    # Crystals with no free coordinate (all special positions) have only a lattice part.
    has = (nfree > 0).float()
    loss_coord = (coord_err * has).sum() / has.sum().clamp(min=1)
    loss_lat = lat_err.mean()
    return COORD_WEIGHT * loss_coord + loss_lat, {
        "coord": loss_coord.detach(),
        "lattice": loss_lat.detach(),
    }


@dataclass(frozen=True)
class WyckoffSampleConfig:
    steps: int = 100
    guidance: float = 0.0
    # FlowMM's inference anti-annealing: the orbit parameters' velocity times 1 + s t, which
    # commits coordinates earlier and sharper than the plain ODE.
    coord_anneal: float = 0.0


def _velocity(
    model: WyckoffFlowModel,
    batch: OrbitBatch,
    u: torch.Tensor,
    lat: torch.Tensor,
    t: torch.Tensor,
    guidance: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    if guidance == 0.0:
        return model(batch, u, lat, t, batch.space_group, batch.props, batch.props_given)
    b = batch.size
    both = OrbitBatch(
        *(torch.cat([getattr(batch, f)] * 2) for f in OrbitBatch.__dataclass_fields__)
    )
    v_u, v_l = model(
        both,
        u.repeat(2, 1, 1),
        lat.repeat(2, 1),
        t.repeat(2),
        torch.cat([batch.space_group, torch.zeros_like(batch.space_group)]),
        batch.props.repeat(2, 1),
        torch.cat([batch.props_given, torch.zeros_like(batch.props_given)]),
    )
    w = guidance
    return (1 + w) * v_u[:b] - w * v_u[b:], (1 + w) * v_l[:b] - w * v_l[b:]


@torch.no_grad()
def sample(
    model: WyckoffFlowModel,
    batch: OrbitBatch,
    cfg: WyckoffSampleConfig = WyckoffSampleConfig(),
    generator: torch.Generator | None = None,
    autocast: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Euler integration from the prior to t = 1: (orbit parameters (B, O, 3) in [0, 1),
    lattice state (B, 6) with the crystal system's ties imposed)."""
    dev = batch.wid.device
    u, lat = prior_sample(batch, generator)
    free = batch.free.float()
    h = 1.0 / cfg.steps
    for i in range(cfg.steps):
        t = torch.full((batch.size,), i * h, device=dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
            v_u, v_l = _velocity(model, batch, u, lat, t, cfg.guidance)
        u = wrap(u + h * (1.0 + cfg.coord_anneal * i * h) * v_u.float()) * free
        lat = apply_ties(lat + h * v_l.float(), batch)
    return u, lat
