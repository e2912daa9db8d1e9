"""Transformer pieces: MLPs, attention, AdaLN-conditioned blocks, attention pooling."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ml.generative.pair_attention import attend_with_pair_values


def mlp(d_in: int, d_hidden: int, d_out: int, depth: int = 2) -> nn.Sequential:
    """``depth`` hidden layers of width ``d_hidden`` with GELU."""
    layers: list[nn.Module] = [nn.Linear(d_in, d_hidden), nn.GELU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(d_hidden, d_hidden), nn.GELU()]
    layers.append(nn.Linear(d_hidden, d_out))
    return nn.Sequential(*layers)


class Attention(nn.Module):
    """Multi-head attention through ``scaled_dot_product_attention``.

    ``mask`` is boolean, True where a query may attend a key, broadcastable to (B, H, Lq, Lk).
    With ``pair_dim`` > 0 (self-attention) a pair tensor p (B, L, L, pair_dim) may join the
    values, ``out_i = sum_j a_ij (v_j + W_h p_ij)``, as in the conditional generator's ``Block``:
    the attention then says *where* the attended atoms are, not only which ones they are.
    """

    def __init__(
        self, d: int, heads: int, dropout: float, cross: bool = False, pair_dim: int = 0
    ) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.cross = cross
        if cross:
            self.q = nn.Linear(d, d)
            self.kv = nn.Linear(d, 2 * d)
        else:
            self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        # Registered only when used, so pair_dim = 0 keeps the released state dicts' keys. Zero
        # here (no random draw, the pair path starts silent); ``init_pair_values`` draws them.
        self.pair_value: nn.Parameter | None = None
        if pair_dim:
            self.pair_value = nn.Parameter(torch.zeros(heads, pair_dim, d // heads))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        pair: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.cross:
            assert context is not None
            q = self.q(x)
            k, v = self.kv(context).chunk(2, dim=-1)
        else:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = self._split(q), self._split(k), self._split(v)
        if self.pair_value is None or pair is None:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
            )
        else:
            out = self._pair_attention(q, k, v, mask, pair)
        b, h, n, dh = out.shape
        return self.out(out.transpose(1, 2).reshape(b, n, h * dh))

    def _pair_attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
        pair: torch.Tensor,
    ) -> torch.Tensor:
        """Attention written out (SDPA cannot add per-pair values); (B, H, L, dh)."""
        assert self.pair_value is not None
        scores = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        a = scores.softmax(-1)
        a = F.dropout(a, self.dropout, self.training).to(v.dtype)
        return attend_with_pair_values(a, v, pair, self.pair_value)


def init_pair_values(module: nn.Module) -> None:
    """Random pair values (std pair_dim^-1/2, as the conditional generator's) for every
    ``Attention`` in ``module``; called after the other weights are drawn, so adding the pair
    path leaves those draws, and hence the shared weights at a given seed, unchanged."""
    for sub in module.modules():
        if isinstance(sub, Attention) and sub.pair_value is not None:
            with torch.no_grad():
                sub.pair_value.normal_(0.0, sub.pair_value.shape[1] ** -0.5)


class AdaLNBlock(nn.Module):
    """Pre-norm transformer block whose layer norms are modulated per token (AdaLN-Zero).

    The modulation (shift, scale, gate for each sub-layer) comes from a low-rank conditioning
    vector; its projection starts at zero so each block starts as the identity.
    """

    def __init__(
        self,
        d: int,
        heads: int,
        ffn: int,
        dropout: float,
        rank: int,
        cross: bool = False,
        pair_dim: int = 0,
    ) -> None:
        super().__init__()
        self.cross = cross
        n_mod = 9 if cross else 6
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False)
        self.attn = Attention(d, heads, dropout, pair_dim=pair_dim)
        if cross:
            self.norm_c = nn.LayerNorm(d, elementwise_affine=False)
            self.cross_attn = Attention(d, heads, dropout, cross=True)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False)
        self.ffn = nn.Sequential(
            nn.Linear(d, ffn), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn, d)
        )
        self.drop = nn.Dropout(dropout)
        self.mod = nn.Linear(rank, n_mod * d)
        nn.init.zeros_(self.mod.weight)
        nn.init.zeros_(self.mod.bias)

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        mask: torch.Tensor | None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        pair: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``pair`` (B, L, L, pair_dim) joins the self-attention's values (see ``Attention``)."""
        m = self.mod(cond).chunk(9 if self.cross else 6, dim=-1)
        h = self.norm1(x) * (1 + m[1]) + m[0]
        x = x + m[2] * self.drop(self.attn(h, mask=mask, pair=pair))
        if self.cross:
            h = self.norm_c(x) * (1 + m[7]) + m[6]
            x = x + m[8] * self.drop(self.cross_attn(h, context=context, mask=context_mask))
        h = self.norm2(x) * (1 + m[4]) + m[3]
        return x + m[5] * self.drop(self.ffn(h))


class AdaLNTransformer(nn.Module):
    """A stack of AdaLN blocks sharing one low-rank conditioning projection."""

    def __init__(
        self,
        d: int,
        n_blocks: int,
        heads: int,
        ffn: int,
        dropout: float,
        rank: int,
        cross: bool = False,
        pair_dim: int = 0,
    ) -> None:
        super().__init__()
        self.cond_proj = nn.Sequential(nn.SiLU(), nn.Linear(d, rank), nn.SiLU())
        self.blocks = nn.ModuleList(
            AdaLNBlock(d, heads, ffn, dropout, rank, cross, pair_dim) for _ in range(n_blocks)
        )
        self.norm = nn.LayerNorm(d)

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        mask: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        pair: torch.Tensor | None = None,
    ) -> torch.Tensor:
        c = self.cond_proj(cond)
        for block in self.blocks:
            x = block(x, c, mask, context, context_mask, pair=pair)
        return self.norm(x)


class AttentionPool(nn.Module):
    """Pools a variable number of tokens into one vector with a learned query."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.attn = Attention(d, heads, dropout=0.0, cross=True)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """tokens (B, L, d), valid (B, L) bool -> (B, d)."""
        q = self.query.expand(tokens.shape[0], -1, -1)
        return self.attn(q, context=tokens, mask=valid[:, None, None, :])[:, 0]


def time_embedding(t: torch.Tensor, dim: int, max_period: float = 1000.0) -> torch.Tensor:
    """Sinusoidal features of flow time t in [0, 1] (scaled to [0, 1000])."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
