"""Fractional-coordinate conventions every generative method shares (one definition, so a
displacement means the same in CliqueFlowmer, conditional generation and the Wyckoff flow)."""

from __future__ import annotations

import torch


def wrap(x: torch.Tensor) -> torch.Tensor:
    """Fractional coordinates wrapped into [0, 1) (float rounding of x mod 1 can give 1.0)."""
    y = torch.remainder(x, 1.0)
    return torch.where(y >= 1.0, torch.zeros_like(y), y)


def min_image(d: torch.Tensor) -> torch.Tensor:
    """Minimum-image representative of a fractional displacement, in [-0.5, 0.5)."""
    return d - torch.floor(d + 0.5)
