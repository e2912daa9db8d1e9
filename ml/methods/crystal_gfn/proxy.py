"""The Crystal-GFN proxy: formation energy and band gap from space group, composition and
lattice only (no atomic positions), as the paper's DAVE proxy (appendix D).

* composition: each element embedded PhAST-style (a small MLP of static physical properties,
  learned embeddings of Z, period and group), tagged with its atom fraction, two layers of
  self-attention between the elements (Roost-like, so pairs such as Li-F interact before
  pooling), pooled by atom fraction;
* space group: learned embedding, plus embeddings of its crystal-lattice system and point
  symmetry (so a group rarely seen in training still gets its class's share);
* lattice: per length ``log L - log(N_conv) / 3`` (size-free, tied lengths stay tied) and per
  angle ``(angle - 90) / 30``, standardised with the training statistics, through an MLP;
* an MLP head on the concatenation (and log atoms per primitive cell) gives both targets.

The release file also carries what the environment needs from the training data: the groups
seen in train and val (the paper's space-group restriction), the elements seen, and the
lattice box (data quantiles) the GFlowNet samples lattices in.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ml.generative.training import cpu_state, save_atomic
from ml.methods.crystal_gfn.chemistry import MAX_Z, element_features
from ml.methods.crystal_gfn.spacegroups import (
    CRYSTAL_LATTICE_SYSTEMS,
    POINT_SYMMETRIES,
    crystal_lattice_system,
    point_symmetry,
)
from ml.symmetry import centring

__all__ = [
    "FORMAT",
    "TARGETS",
    "LatticeBox",
    "ProxyConfig",
    "ProxyModel",
    "centring_table",
    "lattice_features",
    "load_proxy",
    "save_proxy",
]

FORMAT = "matdesign-crystal-gfn-proxy-v1"
TARGETS = ("formation_energy", "band_gap")
ANGLE_SCALE = 30.0


@cache
def centring_table() -> torch.Tensor:
    """Lattice points per conventional cell by space group (index 0 unused)."""
    return torch.tensor([1] + [centring(g) for g in range(1, 231)], dtype=torch.long)


@cache
def _class_tables() -> tuple[torch.Tensor, torch.Tensor]:
    cls = [0] + [crystal_lattice_system(g) for g in range(1, 231)]
    ps = [0] + [point_symmetry(g) for g in range(1, 231)]
    return torch.tensor(cls), torch.tensor(ps)


def lattice_features(lattice: torch.Tensor, conv_atoms: torch.Tensor) -> torch.Tensor:
    """(B, 6): ``log L - log(N_conv) / 3`` for the lengths, ``(angle - 90) / 30`` for the
    angles of conventional lattices ``(B, 6)`` holding ``conv_atoms`` atoms."""
    logs = torch.log(lattice[:, :3]) - torch.log(conv_atoms.float())[:, None] / 3.0
    return torch.cat([logs, (lattice[:, 3:] - 90.0) / ANGLE_SCALE], dim=1)


@dataclass(frozen=True)
class LatticeBox:
    """Where the GFlowNet samples lattices. With ``x_i = log L_i - log(N_conv) / 3``
    (:func:`lattice_features`): ``size`` bounds the mean of the three x (the cube root of the
    volume per atom, up to the angles), ``ratio_b`` / ``ratio_c`` bound ``x_b - x_a`` and
    ``x_c - x_a`` (the cell's shape); free angles in degrees (monoclinic beta; triclinic
    alpha, beta, gamma, kept where every triple makes a cell). Defaults: MP-20 train + val
    0.5 % and 99.5 % quantiles; a proxy release carries the box of its own training data."""

    size: tuple[float, float] = (0.72, 1.33)
    ratio_b: tuple[float, float] = (-1.66, 1.79)
    ratio_c: tuple[float, float] = (-1.12, 2.43)
    monoclinic_beta: tuple[float, float] = (90.0, 135.0)
    triclinic_angle: tuple[float, float] = (65.0, 115.0)

    def to_dict(self) -> dict[str, list[float]]:
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatticeBox:
        return cls(**{k: (float(v[0]), float(v[1])) for k, v in d.items()})


@dataclass
class ProxyConfig:
    d_model: int = 128
    heads: int = 4
    attention_layers: int = 2
    hidden: int = 256
    dropout: float = 0.1
    lattice_mean: tuple[float, ...] = (0.0,) * 6
    lattice_std: tuple[float, ...] = (1.0,) * 6
    target_mean: tuple[float, ...] = (0.0, 0.0)
    target_std: tuple[float, ...] = (1.0, 1.0)
    lattice_box: dict[str, list[float]] = field(default_factory=lambda: LatticeBox().to_dict())
    space_groups_seen: tuple[int, ...] = ()
    elements_seen: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("lattice_mean", "lattice_std", "target_mean", "target_std"):
            setattr(self, name, tuple(float(v) for v in getattr(self, name)))
        self.space_groups_seen = tuple(int(g) for g in self.space_groups_seen)
        self.elements_seen = tuple(int(z) for z in self.elements_seen)

    @property
    def box(self) -> LatticeBox:
        return LatticeBox.from_dict(self.lattice_box)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mlp(n_in: int, hidden: int, n_out: int, layers: int = 2, dropout: float = 0.0) -> nn.Module:
    mods: list[nn.Module] = []
    d = n_in
    for _ in range(layers - 1):
        mods += [nn.Linear(d, hidden), nn.SiLU(), nn.Dropout(dropout)]
        d = hidden
    mods.append(nn.Linear(d, n_out))
    return nn.Sequential(*mods)


class ProxyModel(nn.Module):
    def __init__(self, config: ProxyConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        feats = torch.tensor(element_features())
        self.register_buffer("element_props", feats, persistent=False)
        rows = torch.tensor([0] + [_period(z) for z in range(1, MAX_Z + 1)])
        groups = torch.tensor([0] + [_group_no(z) for z in range(1, MAX_Z + 1)])
        self.register_buffer("element_row", rows, persistent=False)
        self.register_buffer("element_group", groups, persistent=False)
        cls, ps = _class_tables()
        self.register_buffer("sg_class", cls, persistent=False)
        self.register_buffer("sg_point", ps, persistent=False)
        self.register_buffer("centring", centring_table(), persistent=False)
        self.register_buffer("lat_mean", torch.tensor(config.lattice_mean), persistent=False)
        self.register_buffer("lat_std", torch.tensor(config.lattice_std), persistent=False)
        self.register_buffer("y_mean", torch.tensor(config.target_mean), persistent=False)
        self.register_buffer("y_std", torch.tensor(config.target_std), persistent=False)
        self.prop_mlp = _mlp(feats.shape[1], 64, 32)
        self.z_emb = nn.Embedding(MAX_Z + 1, 32)
        self.row_emb = nn.Embedding(8, 8)
        self.group_emb = nn.Embedding(19, 8)
        self.element_in = _mlp(32 + 32 + 8 + 8 + 2, d, d)
        layer = nn.TransformerEncoderLayer(
            d, config.heads, 2 * d, config.dropout, activation="gelu", batch_first=True
        )
        self.attention = nn.TransformerEncoder(
            layer, config.attention_layers, enable_nested_tensor=False
        )
        self.sg_emb = nn.Embedding(231, 32)
        self.class_emb = nn.Embedding(len(CRYSTAL_LATTICE_SYSTEMS), 32)
        self.point_emb = nn.Embedding(len(POINT_SYMMETRIES), 32)
        self.lattice_mlp = _mlp(6, 64, 32)
        self.head = _mlp(d + 32 + 32 + 1, config.hidden, len(TARGETS), 3, config.dropout)

    def forward(
        self, space_group: torch.Tensor, z: torch.Tensor, count: torch.Tensor, lattice: torch.Tensor
    ) -> torch.Tensor:
        """Normalised targets (B, 2) for space groups (B,), padded compositions ``z``/``count``
        (B, E; z = 0 pads; primitive-cell atoms) and conventional lattices (B, 6)."""
        mask = z > 0
        count = count.float() * mask
        n = count.sum(1).clamp(min=1.0)
        frac = count / n[:, None]
        el = torch.cat(
            [
                self.prop_mlp(self.element_props[z]),
                self.z_emb(z),
                self.row_emb(self.element_row[z]),
                self.group_emb(self.element_group[z]),
                frac[..., None],
                torch.log(count.clamp(min=1.0))[..., None],
            ],
            dim=-1,
        )
        h = self.attention(self.element_in(el), src_key_padding_mask=~mask)
        comp = (h * frac[..., None]).sum(1)
        sg = self.sg_emb(space_group)
        sg = (
            sg
            + self.class_emb(self.sg_class[space_group])
            + self.point_emb(self.sg_point[space_group])
        )
        conv = n * self.centring[space_group]
        lat = (lattice_features(lattice, conv) - self.lat_mean) / self.lat_std
        return self.head(torch.cat([comp, sg, self.lattice_mlp(lat), torch.log(n)[:, None]], 1))

    def predict(
        self, space_group: torch.Tensor, z: torch.Tensor, count: torch.Tensor, lattice: torch.Tensor
    ) -> torch.Tensor:
        """(B, 2): formation energy (eV/atom) and band gap (eV, clipped at 0)."""
        y = self(space_group, z, count, lattice) * self.y_std + self.y_mean
        return torch.stack([y[:, 0], y[:, 1].clamp(min=0.0)], dim=1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


@cache
def _period(z: int) -> int:
    from pymatgen.core import Element

    return int(Element.from_Z(z).row)


@cache
def _group_no(z: int) -> int:
    from pymatgen.core import Element

    return int(Element.from_Z(z).group)


def save_proxy(model: ProxyModel, path: Path, info: dict[str, Any] | None = None) -> None:
    save_atomic(
        {
            "format": FORMAT,
            "config": model.config.to_dict(),
            "state": cpu_state(model),
            "info": info or {},
        },
        path,
    )


def load_proxy(path: Path, device: str | torch.device = "cpu") -> tuple[ProxyModel, dict]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a Crystal-GFN proxy checkpoint")
    model = ProxyModel(ProxyConfig(**payload["config"]))
    model.load_state_dict(payload["state"])
    return model.to(device).eval(), dict(payload.get("info", {}))


def fingerprint(model: ProxyModel) -> str:
    """Short hash of the weights: a pretrained GFlowNet is reused only with its own proxy."""
    buf = io.BytesIO()
    for k, v in sorted(model.state_dict().items()):
        buf.write(k.encode())
        buf.write(v.detach().cpu().float().numpy().tobytes())
    return hashlib.sha256(buf.getvalue()).hexdigest()[:16]


def quantiles(values: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    return float(np.quantile(values, lo)), float(np.quantile(values, hi))
