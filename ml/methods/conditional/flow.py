"""Conditional flow matching: training loss with condition dropout, and the guided ODE sampler.

Paths (t = 0 prior, t = 1 data):
* coordinates, uniform prior: ``x_t = wrap(x0 + t * d)`` with ``d = min_image(x1 - x0)``
  minus its mean over the crystal's atoms (a global shift is the same crystal), target ``d``;
* coordinates, normal prior (the paper's comparison): ``x_t = (1 - t) x0 + t x1``,
  target ``x1 - x0``;
* lattice state (normalised log-lengths and angles): straight line, target ``l1 - l0``.

Classifier-free guidance at sampling: ``v = (1 + w) v(cond) - w v(uncond)``, where the
unconditional branch keeps the composition and drops space group and property targets.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ml.generative.periodic import min_image, wrap
from ml.methods.conditional.geometry import (
    CoordPrior,
    sample_coord_prior,
    sample_lattice_prior,
)
from ml.methods.conditional.model import MASK_TOKEN, ConditionalFlowModel


@dataclass
class FlowBatch:
    """Padded batch: ``types`` (B, N) atomic numbers, ``mask`` (B, N) real atoms,
    ``coords`` (B, N, 3) data coordinates in [0, 1), ``lattice`` (B, 6) normalised lattice
    state, ``space_group`` (B,) 0 = not given, ``props`` (B, P), ``props_given`` (B, P)."""

    types: torch.Tensor
    mask: torch.Tensor
    coords: torch.Tensor
    lattice: torch.Tensor
    space_group: torch.Tensor
    props: torch.Tensor
    props_given: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.types.shape[0])


@dataclass(frozen=True)
class DropoutConfig:
    """Condition dropout: all optional conditions at once, each one alone, the composition."""

    p_all: float = 0.15
    p_each: float = 0.25
    p_composition: float = 0.05


def condition_keep_masks(
    b: int,
    nprop: int,
    p_all: float,
    p_each: float,
    device: torch.device | str,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which space groups (b,) and properties (b, nprop) stay given: all optional conditions
    are dropped together with ``p_all``, each one alone with ``p_each``."""

    def coin(p: float, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=device) < p

    drop_all = coin(p_all, b)
    keep_spg = ~(drop_all | coin(p_each, b))
    keep_props = ~(drop_all[:, None] | coin(p_each, b, nprop))
    return keep_spg, keep_props


def drop_conditions(
    batch: FlowBatch, cfg: DropoutConfig, generator: torch.Generator | None = None
) -> FlowBatch:
    keep_spg, keep_props = condition_keep_masks(
        batch.size, batch.props.shape[1], cfg.p_all, cfg.p_each, batch.types.device, generator
    )
    drop_comp = torch.rand(batch.size, generator=generator, device=batch.types.device) < (
        cfg.p_composition
    )
    types = torch.where(drop_comp[:, None], torch.full_like(batch.types, MASK_TOKEN), batch.types)
    return replace(
        batch,
        types=types,
        space_group=batch.space_group * keep_spg,
        props_given=batch.props_given & keep_props,
    )


def coordinate_weight(prior: CoordPrior) -> float:
    """Loss weight ~ 1 / variance of the coordinate velocity target, so parts weigh alike."""
    return 12.0 if prior == "uniform" else 1.0


def flow_loss(
    model: ConditionalFlowModel,
    batch: FlowBatch,
    generator: torch.Generator | None = None,
    dropout: DropoutConfig | None = DropoutConfig(),
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Conditional flow-matching loss (per-structure mean over atoms, then batch mean).

    Also returns the detached coordinate and lattice parts (tensors: no device sync here)."""
    prior = model.config.coord_prior
    b, dev = batch.size, batch.types.device
    if dropout is not None:
        batch = drop_conditions(batch, dropout, generator)
    t = torch.rand(b, generator=generator, device=dev)
    mask = batch.mask
    maskf = mask[..., None].float()
    n = mask.sum(1).clamp(min=1).float()

    l0 = sample_lattice_prior(b, generator, dev)
    x0 = sample_coord_prior(tuple(batch.coords.shape), prior, generator, dev)
    if prior == "uniform":
        d = min_image(batch.coords - x0) * maskf
        d = (d - d.sum(1, keepdim=True) / n[:, None, None]) * maskf
        xt = wrap(x0 + t[:, None, None] * d)
    else:
        d = (batch.coords - x0) * maskf
        xt = x0 + t[:, None, None] * d
    xt = xt * maskf
    target_l = batch.lattice - l0
    lt = l0 + t[:, None] * target_l

    v_coord, v_lat = model(
        batch.types, mask, xt, lt, t, batch.space_group, batch.props, batch.props_given
    )
    coord_err = ((v_coord - d) ** 2 * maskf).sum((1, 2)) / (3.0 * n)
    lat_err = ((v_lat - target_l) ** 2).mean(1)
    loss_coord = coord_err.mean()
    loss_lat = lat_err.mean()
    loss = coordinate_weight(prior) * loss_coord + loss_lat
    return loss, {"coord": loss_coord.detach(), "lattice": loss_lat.detach()}


@dataclass(frozen=True)
class SampleConfig:
    steps: int = 100
    guidance: float = 0.0
    # Optional speed-up of the coordinate velocity late in the path, v * (1 + s * t); 0 = off.
    coord_anneal: float = 0.0


def guided_velocity(
    model: ConditionalFlowModel,
    types: torch.Tensor,
    mask: torch.Tensor,
    coords: torch.Tensor,
    lattice: torch.Tensor,
    t: torch.Tensor,
    space_group: torch.Tensor,
    props: torch.Tensor,
    props_given: torch.Tensor,
    guidance: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1 + w) v(cond) - w v(uncond)``; w = 0 is exactly the conditional field."""
    if guidance == 0.0:
        return model(types, mask, coords, lattice, t, space_group, props, props_given)
    b = types.shape[0]
    v_coord, v_lat = model(
        types.repeat(2, 1),
        mask.repeat(2, 1),
        coords.repeat(2, 1, 1),
        lattice.repeat(2, 1),
        t.repeat(2),
        torch.cat([space_group, torch.zeros_like(space_group)]),
        props.repeat(2, 1),
        torch.cat([props_given, torch.zeros_like(props_given)]),
    )
    w = guidance
    return (1 + w) * v_coord[:b] - w * v_coord[b:], (1 + w) * v_lat[:b] - w * v_lat[b:]


@torch.no_grad()
def sample(
    model: ConditionalFlowModel,
    types: torch.Tensor,
    mask: torch.Tensor,
    space_group: torch.Tensor,
    props: torch.Tensor,
    props_given: torch.Tensor,
    cfg: SampleConfig = SampleConfig(),
    generator: torch.Generator | None = None,
    autocast: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Euler integration from the prior to t = 1. Returns (lattice state, coords in [0, 1))."""
    prior = model.config.coord_prior
    b, n = types.shape
    dev = types.device
    maskf = mask[..., None].float()
    lat = sample_lattice_prior(b, generator, dev)
    x = sample_coord_prior((b, n, 3), prior, generator, dev) * maskf
    h = 1.0 / cfg.steps
    for i in range(cfg.steps):
        t = torch.full((b,), i * h, device=dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
            v_coord, v_lat = guided_velocity(
                model, types, mask, x, lat, t, space_group, props, props_given, cfg.guidance
            )
        v_coord = v_coord.float() * (1.0 + cfg.coord_anneal * i * h)
        x = (x + h * v_coord) * maskf
        if prior == "uniform":
            x = wrap(x)
        lat = lat + h * v_lat.float()
    return lat, wrap(x) * maskf
