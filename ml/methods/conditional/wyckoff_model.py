"""Transformer over the atoms of a Wyckoff-templated cell that predicts the flow's velocity of
the orbits' free parameters and of the lattice state.

The state is the orbits' free parameters; every atom of the conventional cell is placed from
its orbit's parameters by its Wyckoff operation (``rot @ xyz + trans``), so the network sees
the whole cell (atom tokens: element + Wyckoff position + periodic features of the position;
attention bias from each pair's periodic difference and minimum-image distance, as in the
free-cell model). Each atom's output vector is mapped back to its orbit's parameters by the
pseudo-inverse of its operation and averaged over the orbit, so symmetry-equivalent atoms
share one velocity and the sample stays in the space group by construction. Time, space
group and property targets condition every block through AdaLN (learned null embedding for a
condition not given, which classifier-free guidance contrasts against).
With ``pair_dim`` > 0 (``train_wyckoff --pair-dim``) the pair geometry also flows through the
attention values and a displacement read-out adds velocities along the atoms' differences
(``displacement.py``); 0 is the first release's network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ml.crystal import lattice_from_params_torch
from ml.generative.periodic import min_image
from ml.generative.wyckoff import num_wyckoff_positions
from ml.methods.conditional.displacement import DisplacementHead
from ml.methods.conditional.model import (
    Block,
    _mlp,
    fourier,
    pair_attention_bias,
    pair_features,
    timestep_embedding,
)
from ml.methods.conditional.wyckoff_data import LatticeNorm, OrbitBatch

NUM_ELEMENTS = 100
NUM_SPACE_GROUPS = 230
PROPERTIES: tuple[str, ...] = ("formation_energy", "band_gap")


@dataclass
class WyckoffModelConfig:
    d_model: int = 144
    layers: int = 4
    heads: int = 8
    ff_mult: int = 2
    coord_freqs: int = 4
    pair_freqs: int = 3
    distance_rbf: int = 16
    distance_max: float = 8.0
    properties: tuple[str, ...] = PROPERTIES
    lattice_mu: float = 0.0
    lattice_sigma: float = 1.0
    prop_mean: tuple[float, ...] = field(default_factory=lambda: (0.0, 0.0))
    prop_std: tuple[float, ...] = field(default_factory=lambda: (1.0, 1.0))
    # 0: the first release's network (pair geometry only as an attention bias). > 0: pair
    # features of this width also flow through every block's attention values, and a
    # displacement head adds velocities along the atoms' differences (``displacement.py``).
    pair_dim: int = 0

    def __post_init__(self) -> None:
        if self.d_model % self.heads:
            raise ValueError("d_model must be divisible by heads")
        self.properties = tuple(self.properties)
        self.prop_mean = tuple(self.prop_mean)
        self.prop_std = tuple(self.prop_std)

    @property
    def norm(self) -> LatticeNorm:
        return LatticeNorm(self.lattice_mu, self.lattice_sigma)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def wrap(x: torch.Tensor) -> torch.Tensor:
    return x - torch.floor(x)


def atom_positions(batch: OrbitBatch, xyz: torch.Tensor) -> torch.Tensor:
    """(B, N, 3) fractional positions of every atom from the orbits' parameters (B, O, 3)."""
    u = torch.gather(xyz.float() * batch.free, 1, batch.orbit[..., None].expand(-1, -1, 3))
    # float32 even under autocast: bf16 would blur positions by ~0.004.
    with torch.autocast(u.device.type, enabled=False):
        return wrap(torch.einsum("bnij,bnj->bni", batch.rot.float(), u) + batch.trans)


class WyckoffFlowModel(nn.Module):
    def __init__(self, config: WyckoffModelConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.element = nn.Embedding(NUM_ELEMENTS + 1, d, padding_idx=0)
        self.wyckoff = nn.Embedding(num_wyckoff_positions(), d)
        self.coord_in = _mlp(2 * 6 * config.coord_freqs, d, d)
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
            Block(d, config.heads, config.ff_mult, config.pair_dim) for _ in range(config.layers)
        )
        self.pair_embed: nn.Module | None = None
        self.displace: DisplacementHead | None = None
        if config.pair_dim:
            self.pair_embed = _mlp(pair_in, config.pair_dim, config.pair_dim)
            self.displace = DisplacementHead(d, config.heads, config.pair_dim)
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False)
        self.mod_out = nn.Linear(d, 2 * d)
        self.coord_out = nn.Linear(d, 3)
        self.lattice_out = nn.Linear(d, 6)
        for layer in (self.mod_out, self.coord_out, self.lattice_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.register_buffer("prop_mean", torch.tensor(config.prop_mean), persistent=False)
        self.register_buffer("prop_std", torch.tensor(config.prop_std), persistent=False)

    def condition(
        self, t: torch.Tensor, space_group: torch.Tensor, props: torch.Tensor, given: torch.Tensor
    ) -> torch.Tensor:
        c = self.time(timestep_embedding(t, self.config.d_model)) + self.space_group(space_group)
        z = torch.where(given, (props - self.prop_mean) / self.prop_std, torch.zeros_like(props))
        k = torch.arange(1, 9, device=z.device, dtype=z.dtype)
        for p, mlp in enumerate(self.prop_in):
            zp = z[:, p : p + 1]
            emb = mlp(torch.cat([zp, torch.sin(zp * k), torch.cos(zp * k)], dim=-1))
            c = c + torch.where(given[:, p : p + 1], emb, self.prop_null[p])
        return c

    def _pairs(
        self, pos: torch.Tensor, lattice: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Attention bias (layers, B, heads, N+1, N+1), pair embedding (B, N, N, pair_dim) and
        displacements (B, N, N, 3) from atom i to atom j (both None for the release's network)."""
        diff = pos[:, :, None, :] - pos[:, None, :, :]
        matrix = lattice_from_params_torch(lattice[:, :3], lattice[:, 3:])
        feats = pair_features(diff, matrix, self.config)
        bias = pair_attention_bias(self.pair, diff, matrix, mask, self.config, feats)
        if self.pair_embed is None:
            return bias, None, None
        return bias, self.pair_embed(feats), -min_image(diff)

    def forward(
        self,
        batch: OrbitBatch,
        xyz: torch.Tensor,
        lattice_state: torch.Tensor,
        t: torch.Tensor,
        space_group: torch.Tensor,
        props: torch.Tensor,
        props_given: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Velocities of the orbits' parameters (B, O, 3; 0 where not free) and of the lattice
        state (B, 6; 0 where not free). ``space_group`` 0 = not given (guidance)."""
        cfg = self.config
        pos = atom_positions(batch, xyz)
        orbit_xyz = torch.gather(xyz * batch.free, 1, batch.orbit[..., None].expand(-1, -1, 3))
        num = torch.gather(batch.number, 1, batch.orbit) * batch.amask
        wid = torch.gather(batch.wid, 1, batch.orbit)
        feats = torch.cat([fourier(pos, cfg.coord_freqs), fourier(orbit_xyz, cfg.coord_freqs)], -1)
        atoms = self.element(num) + self.wyckoff(wid) + self.coord_in(feats)
        lat = self.lattice_in(lattice_state) + self.lattice_token
        h = torch.cat([lat[:, None], atoms], dim=1)
        c = self.condition(t, space_group, props, props_given)
        physical = self.config.norm.decode(lattice_state.float(), batch.atoms)
        bias, pair, delta = self._pairs(pos, physical, batch.amask)
        # The lattice token has no geometry: zero pair features in its row and column.
        pair_tok = F.pad(pair, (0, 0, 1, 0, 1, 0)) if pair is not None else None
        for i, block in enumerate(self.blocks):
            h = block(h, c, bias[i], pair_tok)
        shift, scale = self.mod_out(F.silu(c))[:, None].chunk(2, dim=-1)
        h = self.norm_out(h) * (1 + scale) + shift
        v_lat = self.lattice_out(h[:, 0]).float() * batch.lat_free
        v_atom = self.coord_out(h[:, 1:]).float()
        if self.displace is not None and pair is not None and delta is not None:
            v_atom = v_atom + self.displace(h[:, 1:], pair, delta, batch.amask)
        v_atom = v_atom * batch.amask[..., None]
        with torch.autocast(v_atom.device.type, enabled=False):
            per_atom = torch.einsum("bnij,bnj->bni", batch.back.float(), v_atom)
        total = torch.zeros_like(xyz).scatter_add_(
            1, batch.orbit[..., None].expand(-1, -1, 3), per_atom
        )
        count = torch.zeros(xyz.shape[:2], device=xyz.device).scatter_add_(
            1, batch.orbit, batch.amask.float()
        )
        v_xyz = total / count.clamp(min=1)[..., None] * batch.free
        return v_xyz, v_lat

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


__all__ = ["PROPERTIES", "WyckoffFlowModel", "WyckoffModelConfig", "atom_positions"]
