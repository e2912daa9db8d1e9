"""Forward and backward policies of Crystal-GFN (paper appendix C: MLPs of 3 x 256), the
learned log-partition function, and the mixture-of-Betas density of the lattice action."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.distributions import Beta, Categorical

__all__ = ["BetaMixture", "Policy", "PolicyConfig"]

# Beta concentrations are kept in [0.1, 100] for numerical stability (appendix C).
BETA_MIN, BETA_MAX = 0.1, 100.0
# A raw output of 0 gives concentration 2 (broad), not the range's middle (50, a spike):
# exploratory lattices far from 0.5 must not start with log densities of -100.
BETA_OFFSET = math.log((2.0 - BETA_MIN) / (BETA_MAX - 2.0))
U_EPS = 1e-5  # unit-cube samples are kept this far from 0 and 1 (finite log densities)


@dataclass
class PolicyConfig:
    n_in: int
    n_actions: int
    n_back: int
    hidden: int = 256
    layers: int = 3
    mixtures: int = 5

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _mlp(n_in: int, hidden: int, n_out: int, layers: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    d = n_in
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), nn.LeakyReLU()]
        d = hidden
    mods.append(nn.Linear(d, n_out))
    return nn.Sequential(*mods)


class Policy(nn.Module):
    """``forward_net``: discrete action logits and the lattice mixture parameters (6
    parameters x mixtures x (weight, alpha, beta)); ``backward_net``: parent logits."""

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        self.config = config
        n_lat = 6 * config.mixtures * 3
        self.forward_net = _mlp(config.n_in, config.hidden, config.n_actions + n_lat, config.layers)
        self.backward_net = _mlp(config.n_in, config.hidden, config.n_back, config.layers)
        self.log_z = nn.Parameter(torch.zeros(()))

    def forward_logits(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked log-probabilities (R, n_actions) of the discrete actions."""
        logits = self.forward_net(x)[:, : self.config.n_actions]
        return torch.log_softmax(logits.masked_fill(~mask, -1e9), dim=1)

    def backward_logits(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = self.backward_net(x)
        return torch.log_softmax(logits.masked_fill(~mask, -1e9), dim=1)

    def lattice(self, x: torch.Tensor) -> BetaMixture:
        raw = self.forward_net(x)[:, self.config.n_actions :]
        return BetaMixture.from_raw(raw.view(-1, 6, self.config.mixtures, 3))


@dataclass
class BetaMixture:
    """Independent mixtures of Betas for each of the six lattice coordinates in [0, 1]."""

    logw: torch.Tensor  # (B, 6, M)
    alpha: torch.Tensor
    beta: torch.Tensor

    @classmethod
    def from_raw(cls, raw: torch.Tensor) -> BetaMixture:
        span = BETA_MAX - BETA_MIN
        return cls(
            torch.log_softmax(raw[..., 0], dim=-1),
            BETA_MIN + span * torch.sigmoid(raw[..., 1] + BETA_OFFSET),
            BETA_MIN + span * torch.sigmoid(raw[..., 2] + BETA_OFFSET),
        )

    def log_prob(self, u: torch.Tensor) -> torch.Tensor:
        """(B, 6) log densities of ``u`` (B, 6)."""
        u = u.clamp(U_EPS, 1.0 - U_EPS)[..., None]
        comp = Beta(self.alpha, self.beta).log_prob(u.expand_as(self.alpha))
        return torch.logsumexp(self.logw + comp, dim=-1)

    @torch.no_grad()
    def sample(self) -> torch.Tensor:
        """(B, 6) draws (uses torch's global generator: seed it for reproducibility)."""
        k = Categorical(logits=self.logw).sample()  # (B, 6)
        a = self.alpha.gather(-1, k[..., None]).squeeze(-1)
        b = self.beta.gather(-1, k[..., None]).squeeze(-1)
        return Beta(a, b).sample().clamp(U_EPS, 1.0 - U_EPS)
