"""A velocity read-out built from the atoms' displacements to each other.

A per-atom linear read-out of the transformer's features must rebuild "towards that
neighbour" from absolute positions. This head states it directly, as EGNN-style coordinate
updates and DiffCSP's messages on fractional differences do: per head, an attention over the
other atoms (content and pair geometry) averages their minimum-image displacements, and a
per-atom coefficient scales each head's average. The output is a fractional vector per atom.
"""

from __future__ import annotations

import torch
from torch import nn


class DisplacementHead(nn.Module):
    def __init__(self, d: int, heads: int, pair_dim: int) -> None:
        super().__init__()
        if d % heads:
            raise ValueError("d must be divisible by heads")
        self.heads = heads
        self.qk = nn.Linear(d, 2 * d)
        self.pair_bias = nn.Linear(pair_dim, heads)
        self.coef = nn.Linear(d, heads)
        # Zero at start: training begins from the plain read-out it is added to.
        nn.init.zeros_(self.coef.weight)
        nn.init.zeros_(self.coef.bias)

    def forward(
        self, h: torch.Tensor, pair: torch.Tensor, delta: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """``h`` (B, N, d) atom features, ``pair`` (B, N, N, pair_dim), ``delta`` (B, N, N, 3)
        minimum-image displacement from atom i to atom j, ``mask`` (B, N) real atoms.
        Returns (B, N, 3)."""
        b, n, d = h.shape
        q, k = self.qk(h).view(b, n, 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
        scores = scores + self.pair_bias(pair).float().permute(0, 3, 1, 2)
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        a = scores.softmax(-1)
        towards = torch.einsum("bhij,bijk->bhik", a, delta.float())
        return torch.einsum("bnh,bhnk->bnk", self.coef(h).float(), towards)


__all__ = ["DisplacementHead"]
