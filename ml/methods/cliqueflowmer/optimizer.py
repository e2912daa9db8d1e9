"""Latent-space optimisation: rank-based antithetic evolution strategies with AdamW.

For every latent z (all N at once) and P antithetic pairs eps_1..eps_P ~ N(0, I):
evaluate g(z + s eps_i) and g(z - s eps_i) in one batched forward pass, rank the 2P values
ascending, standardise the ranks to zero mean and unit variance (R+_i, R-_i) and step AdamW
along grad = sum_i (R+_i - R-_i) eps_i / (2 s P). The weight decay pulls z towards the origin,
where the Gaussian prior keeps the decoder in distribution. Back-propagation through g is the
comparison baseline (``method="backprop"``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

Goal = Literal["minimize", "maximize", "target"]


def objective_fn(
    predict: Callable[[torch.Tensor], torch.Tensor], goal: Goal, value: float | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The function to minimise: f, -f, or |f - value|."""
    if goal == "minimize":
        return predict
    if goal == "maximize":
        return lambda z: -predict(z)
    if value is None:
        raise ValueError("a target goal needs a value")
    return lambda z: (predict(z) - value).abs()


def standardised_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks along the last axis (0 = smallest), standardised to mean 0 and variance 1."""
    ranks = values.argsort(dim=-1).argsort(dim=-1).to(torch.float32)
    n = values.shape[-1]
    mean = (n - 1) / 2.0
    std = ((n * n - 1) / 12.0) ** 0.5  # population std of 0..n-1
    return (ranks - mean) / std


def es_gradient(
    g: Callable[[torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    pairs: int,
    sigma: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Rank-based antithetic ES estimate of the gradient of g at every row of z (B, d)."""
    b, d = z.shape
    eps = torch.randn(b, pairs, d, device=z.device, generator=generator)
    pert = torch.cat([z[:, None] + sigma * eps, z[:, None] - sigma * eps], dim=1)
    values = g(pert.reshape(-1, d)).reshape(b, 2 * pairs).float()
    ranks = standardised_ranks(values)
    # A pair with equal values carries no direction (e.g. a threshold met on both sides);
    # its arbitrary rank order would otherwise drive a random walk.
    weights = torch.where(
        values[:, :pairs] == values[:, pairs:], 0.0, ranks[:, :pairs] - ranks[:, pairs:]
    )
    return torch.einsum("bp,bpd->bd", weights, eps) / (2 * sigma * pairs)


@dataclass
class OptimiserSettings:
    steps: int = 2000
    lr: float = 3e-4
    weight_decay: float = 0.5
    method: Literal["es", "backprop"] = "es"
    pairs: int = 16
    sigma: float = 0.1
    # Evaluate at most this many perturbed latents per forward pass (memory bound).
    chunk: int = 1 << 18
    log_every: int = 50


@dataclass
class OptimiserTrace:
    steps: list[int] = field(default_factory=list)
    mean_objective: list[float] = field(default_factory=list)
    best_objective: list[float] = field(default_factory=list)


class LatentOptimiser:
    """AdamW on a batch of latents with ES (or back-propagated) gradients of g."""

    def __init__(
        self,
        g: Callable[[torch.Tensor], torch.Tensor],
        z0: torch.Tensor,
        settings: OptimiserSettings,
        generator: torch.Generator | None = None,
    ) -> None:
        if settings.method not in ("es", "backprop"):
            raise ValueError(f"unknown optimiser method {settings.method!r}")
        self.g = g
        self.settings = settings
        self.generator = generator
        self.z = z0.detach().clone().float().requires_grad_(True)
        self.opt = torch.optim.AdamW([self.z], lr=settings.lr, weight_decay=settings.weight_decay)
        self.rows_per_chunk = max(1, settings.chunk // (2 * settings.pairs))
        self.steps_done = 0

    def step(self) -> None:
        s, z = self.settings, self.z
        self.opt.zero_grad(set_to_none=True)
        if s.method == "es":
            with torch.no_grad():
                grads = [
                    es_gradient(
                        self.g, z[lo : lo + self.rows_per_chunk], s.pairs, s.sigma, self.generator
                    )
                    for lo in range(0, z.shape[0], self.rows_per_chunk)
                ]
            z.grad = torch.cat(grads).to(z.dtype)
        else:
            self.g(z).float().sum().backward()
        self.opt.step()
        self.steps_done += 1

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Mean and best (lowest) objective over the latents."""
        vals = self.g(self.z.detach()).float()
        return float(vals.mean()), float(vals.min())

    @property
    def latents(self) -> torch.Tensor:
        return self.z.detach()


def optimise_latents(
    g: Callable[[torch.Tensor], torch.Tensor],
    z0: torch.Tensor,
    settings: OptimiserSettings,
    generator: torch.Generator | None = None,
    on_log: Callable[[int, float, float], None] | None = None,
) -> tuple[torch.Tensor, OptimiserTrace]:
    """Minimise g over latents starting at z0 (B, d); returns the final latents and a trace
    of (step, mean, best) every ``log_every`` steps (``on_log`` is called with each)."""
    opt = LatentOptimiser(g, z0, settings, generator)
    trace = OptimiserTrace()

    def log(step: int) -> None:
        mean, best = opt.evaluate()
        trace.steps.append(step)
        trace.mean_objective.append(mean)
        trace.best_objective.append(best)
        if on_log is not None:
            on_log(step, mean, best)

    log(0)
    for step in range(1, settings.steps + 1):
        opt.step()
        if step % settings.log_every == 0 or step == settings.steps:
            log(step)
    return opt.latents, trace
