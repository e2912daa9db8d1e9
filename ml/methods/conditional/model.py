"""Atom-set transformer that predicts the flow's velocity for lattice and coordinates.

Tokens are one lattice token plus one token per atom (element embedding + periodic features of
its fractional coordinates). There is no positional encoding over atoms, and the only
atom-atom interaction is attention with a bias computed from each pair's fractional difference
and distance, so permuting the input atoms permutes the output velocities the same way.
Time, space group and property targets condition every block through adaptive layer norm
(AdaLN); a condition that is not given uses a learned "null" embedding, which is what the
classifier-free guidance contrasts against.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ml.crystal import lattice_from_params_torch
from ml.generative.pair_attention import attend_with_pair_values
from ml.generative.periodic import min_image
from ml.methods.conditional.geometry import CoordPrior, LengthPrior, decode_lattice

NUM_ELEMENTS = 100  # atomic numbers 1..100; index 0 is padding
MASK_TOKEN = NUM_ELEMENTS + 1  # composition dropped (classifier-free training)
NUM_SPACE_GROUPS = 230  # index 0 = space group not given
PROPERTIES: tuple[str, ...] = ("formation_energy", "band_gap")


@dataclass
class ModelConfig:
    d_model: int = 256
    layers: int = 6
    heads: int = 8
    ff_mult: int = 4
    coord_freqs: int = 6
    pair_freqs: int = 4
    distance_rbf: int = 16
    distance_max: float = 8.0
    coord_prior: CoordPrior = "uniform"
    properties: tuple[str, ...] = PROPERTIES
    length_mu: tuple[float, float, float] = (0.0, 0.0, 0.0)
    length_sigma: tuple[float, float, float] = (1.0, 1.0, 1.0)
    # Property normalisation (mean, std) in the order of ``properties``.
    prop_mean: tuple[float, ...] = field(default_factory=lambda: (0.0, 0.0))
    prop_std: tuple[float, ...] = field(default_factory=lambda: (1.0, 1.0))

    def __post_init__(self) -> None:
        if self.d_model % self.heads:
            raise ValueError("d_model must be divisible by heads")
        self.properties = tuple(self.properties)
        self.length_mu = tuple(self.length_mu)  # type: ignore[assignment]
        self.length_sigma = tuple(self.length_sigma)  # type: ignore[assignment]
        self.prop_mean = tuple(self.prop_mean)
        self.prop_std = tuple(self.prop_std)

    @property
    def length_prior(self) -> LengthPrior:
        return LengthPrior(self.length_mu, self.length_sigma)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def fourier(x: torch.Tensor, freqs: int) -> torch.Tensor:
    """sin/cos of 2*pi*k*x for k = 1..freqs: periodic features of fractional values."""
    k = torch.arange(1, freqs + 1, device=x.device, dtype=x.dtype)
    arg = 2.0 * math.pi * x[..., None] * k
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1).flatten(-2)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device) / half)
    arg = 1000.0 * t[:, None].float() * freqs
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)


def _mlp(d_in: int, d_out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, d_out))


class Block(nn.Module):
    """Pre-norm transformer block with AdaLN-Zero modulation from the condition vector.

    With ``pair_dim`` > 0 the attention also carries pair geometry into the values,
    ``out_i = sum_j a_ij (v_j + W_h p_ij)`` (relative-position values): a scalar bias can only
    say *which* atoms to look at, these say *where* they are, which a velocity needs."""

    def __init__(self, d: int, heads: int, ff_mult: int, pair_dim: int = 0) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False)
        self.ff = nn.Sequential(nn.Linear(d, ff_mult * d), nn.GELU(), nn.Linear(ff_mult * d, d))
        self.mod = nn.Linear(d, 6 * d)
        nn.init.zeros_(self.mod.weight)
        nn.init.zeros_(self.mod.bias)
        self.pair_value: nn.Parameter | None = None
        if pair_dim:
            scale = pair_dim**-0.5
            self.pair_value = nn.Parameter(torch.randn(heads, pair_dim, d // heads) * scale)

    def forward(
        self,
        h: torch.Tensor,
        c: torch.Tensor,
        bias: torch.Tensor,
        pair: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``bias`` (B, heads, N, N) with -inf on masked keys; ``pair`` (B, N, N, pair_dim)."""
        b, n, d = h.shape
        sh1, sc1, g1, sh2, sc2, g2 = self.mod(F.silu(c))[:, None].chunk(6, dim=-1)
        x = self.norm1(h) * (1 + sc1) + sh1
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if self.pair_value is None or pair is None:
            att = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        else:
            scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5 + bias.to(q.dtype)
            a = scores.float().softmax(-1).to(v.dtype)
            att = attend_with_pair_values(a, v, pair, self.pair_value)
        h = h + g1 * self.proj(att.transpose(1, 2).reshape(b, n, d))
        x = self.norm2(h) * (1 + sc2) + sh2
        return h + g2 * self.ff(x)


class ConditionalFlowModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.element = nn.Embedding(MASK_TOKEN + 1, d, padding_idx=0)
        coord_in = 6 * config.coord_freqs + (3 if config.coord_prior == "normal" else 0)
        self.coord_in = _mlp(coord_in, d, d)
        self.lattice_in = _mlp(6, d, d)
        self.lattice_token = nn.Parameter(torch.zeros(d))
        self.time = _mlp(d, d, d)
        self.space_group = nn.Embedding(NUM_SPACE_GROUPS + 1, d)
        nprop = len(config.properties)
        self.prop_in = nn.ModuleList(_mlp(1 + 2 * 8, d, d) for _ in range(nprop))
        self.prop_null = nn.Parameter(torch.zeros(nprop, d))
        pair_in = 6 * config.pair_freqs + config.distance_rbf
        self.pair = _mlp(pair_in, config.layers * config.heads, d // 2)
        self.blocks = nn.ModuleList(
            Block(d, config.heads, config.ff_mult) for _ in range(config.layers)
        )
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False)
        self.mod_out = nn.Linear(d, 2 * d)
        self.coord_out = nn.Linear(d, 3)
        self.lattice_out = nn.Linear(d, 6)
        for layer in (self.mod_out, self.coord_out, self.lattice_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        mu, sigma = config.length_prior.tensors("cpu")
        self.register_buffer("prop_mean", torch.tensor(config.prop_mean), persistent=False)
        self.register_buffer("prop_std", torch.tensor(config.prop_std), persistent=False)
        self.register_buffer("length_mu", mu, persistent=False)
        self.register_buffer("length_sigma", sigma, persistent=False)

    # --- conditioning -------------------------------------------------------------------
    def condition(
        self,
        t: torch.Tensor,
        space_group: torch.Tensor,
        props: torch.Tensor,
        props_given: torch.Tensor,
    ) -> torch.Tensor:
        """(B, d) condition vector. ``space_group`` 0 = not given; ``props_given`` (B, P) bool."""
        c = self.time(timestep_embedding(t, self.config.d_model))
        c = c + self.space_group(space_group)
        z = (props - self.prop_mean) / self.prop_std
        # Non-given values may be NaN: zero them before they reach the MLP.
        z = torch.where(props_given, z, torch.zeros_like(z))
        for p, mlp in enumerate(self.prop_in):
            zp = z[:, p : p + 1]
            k = torch.arange(1, 9, device=z.device, dtype=z.dtype)
            emb = mlp(torch.cat([zp, torch.sin(zp * k), torch.cos(zp * k)], dim=-1))
            c = c + torch.where(props_given[:, p : p + 1], emb, self.prop_null[p])
        return c

    def _pair_bias(
        self, coords: torch.Tensor, lattice_state: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """(layers, B, heads, N+1, N+1) attention bias; lattice token row/column get 0."""
        cfg = self.config
        diff = coords[:, :, None, :] - coords[:, None, :, :]
        num_atoms = mask.sum(dim=1).clamp(min=1)
        prior = LengthPrior(cfg.length_mu, cfg.length_sigma)
        lengths, angles = decode_lattice(lattice_state.float(), num_atoms, prior)
        matrix = lattice_from_params_torch(lengths, angles)
        return pair_attention_bias(self.pair, diff, matrix, mask, cfg)

    # --- velocity -----------------------------------------------------------------------
    def forward(
        self,
        types: torch.Tensor,
        mask: torch.Tensor,
        coords: torch.Tensor,
        lattice_state: torch.Tensor,
        t: torch.Tensor,
        space_group: torch.Tensor,
        props: torch.Tensor,
        props_given: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Velocities of coordinates (B, N, 3) and lattice state (B, 6).

        ``types`` (B, N) atomic numbers (``MASK_TOKEN`` when the composition is dropped),
        ``mask`` (B, N) real atoms, ``coords`` (B, N, 3) fractional coordinates at time t.
        """
        cfg = self.config
        feats = fourier(coords, cfg.coord_freqs)
        if cfg.coord_prior == "normal":
            feats = torch.cat([feats, coords], dim=-1)
        atoms = self.element(types * mask) + self.coord_in(feats)
        lat = self.lattice_in(lattice_state) + self.lattice_token
        h = torch.cat([lat[:, None], atoms], dim=1)
        c = self.condition(t, space_group, props, props_given)
        bias = self._pair_bias(coords, lattice_state, mask)
        for i, block in enumerate(self.blocks):
            h = block(h, c, bias[i])
        shift, scale = self.mod_out(F.silu(c))[:, None].chunk(2, dim=-1)
        h = self.norm_out(h) * (1 + scale) + shift
        v_lat = self.lattice_out(h[:, 0]).float()
        v_coord = self.coord_out(h[:, 1:]).float() * mask[..., None]
        if cfg.coord_prior == "uniform":
            # Crystals are invariant to a global shift on the torus: remove the mean drift.
            mean = v_coord.sum(1, keepdim=True) / mask.sum(1).clamp(min=1)[:, None, None]
            v_coord = (v_coord - mean) * mask[..., None]
        return v_coord, v_lat

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def pair_features(diff: torch.Tensor, matrix: torch.Tensor, cfg: Any) -> torch.Tensor:
    """(b, n, n, 6 pair_freqs + distance_rbf) geometry of every pair: Fourier features of the
    fractional differences ``diff`` (b, n, n, 3) and Gaussian RBFs of the minimum-image
    distance under the lattice matrices ``matrix`` (b, 3, 3)."""
    dist = torch.einsum("bijk,bkl->bijl", min_image(diff.float()), matrix).norm(dim=-1)
    centers = torch.linspace(0.0, cfg.distance_max, cfg.distance_rbf, device=diff.device)
    width = cfg.distance_max / cfg.distance_rbf
    rbf = torch.exp(-(((dist[..., None] - centers) / width) ** 2))
    return torch.cat([fourier(diff, cfg.pair_freqs), rbf.to(diff.dtype)], dim=-1)


def pair_attention_bias(
    pair: nn.Module,
    diff: torch.Tensor,
    matrix: torch.Tensor,
    mask: torch.Tensor,
    cfg: Any,
    feats: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-layer, per-head attention bias (layers, b, heads, n+1, n+1) from the pair geometry
    (:func:`pair_features`, or ``feats`` already computed) through ``pair``; a leading
    register token; masked keys."""
    b, n = diff.shape[:2]
    if feats is None:
        feats = pair_features(diff, matrix, cfg)
    bias = pair(feats).view(b, n, n, cfg.layers, cfg.heads)
    bias = F.pad(bias.permute(3, 0, 4, 1, 2), (1, 0, 1, 0))
    keys = F.pad(mask, (1, 0), value=True)
    return bias.masked_fill(~keys[None, :, None, None, :], float("-inf"))
