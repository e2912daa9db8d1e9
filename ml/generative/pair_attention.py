"""Attention whose values also carry pair geometry (shared by the conditional generator's
blocks and CliqueFlowmer's geometry decoder)."""

from __future__ import annotations

import torch


def attend_with_pair_values(
    a: torch.Tensor, v: torch.Tensor, pair: torch.Tensor, pair_value: torch.Tensor
) -> torch.Tensor:
    """``out_i = sum_j a_ij (v_j + W_h p_ij)``: ``a`` (B, H, N, N) attention weights, ``v``
    (B, H, N, dh), ``pair`` (B, N, N, P) pair features, ``pair_value`` (H, P, dh) the per-head
    map W_h. A scalar bias says *which* atoms to look at; these values say *where* they are.
    Returns (B, H, N, dh)."""
    seen = torch.einsum("bhij,bijp->bhip", a, pair.to(v.dtype))
    return a @ v + torch.einsum("bhip,hpe->bhie", seen, pair_value.to(v.dtype))
