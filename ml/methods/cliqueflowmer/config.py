"""Hyper-parameters of a CliqueFlowmer model (defaults: the paper's Table 3)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

# Atom-type tokens: 0 pads, 1 starts and 2 stops a sequence; element Z is token Z + 2.
PAD, START, STOP = 0, 1, 2
MAX_Z = 100
VOCAB = MAX_Z + 3


def token_of(z: int) -> int:
    return z + 2


def z_of(token: int) -> int:
    return token - 2


@dataclass(frozen=True)
class CliqueFlowmerConfig:
    d_model: int = 256
    n_blocks: int = 4
    n_heads: int = 4
    n_registers: int = 2
    # Feed-forward width inside the transformer blocks. Table 3 does not give it; d_model keeps
    # the three transformers (8.0 M parameters) inside the 16 MiB checkpoint limit in bf16.
    ffn_dim: int = 256
    # Rank of the AdaLN modulation: conditioning -> SiLU(Linear(d, rank)) shared by the blocks
    # of one transformer, then one Linear(rank, 6 d) per block (keeps AdaLN cheap in weights).
    ada_rank: int = 48
    mlp_dim: int = 128
    n_mlp: int = 2
    dropout: float = 0.1
    n_cliques: int = 8
    d_clique: int = 16
    d_knot: int = 1
    max_atoms: int = 20
    # Loss (Table 3): position weight in the flow loss, atom-loss weight, warm-up limits.
    tau_pos: float = 16.0
    temp_atom: float = 1.0
    beta_max: float = 1e-3
    tau_pred_init: float = 1e-4
    tau_pred_max: float = 1.0
    # Classifier-free guidance: probability of replacing z by noise for the flow decoder.
    p_latent_drop: float = 0.1
    # Lifted logit-normal time: probability of a uniform draw.
    p_time_uniform: float = 0.1
    # Pair geometry in the geometry decoder. 0: the released network (atoms attend by content
    # only). > 0: features of every atom pair's fractional difference and minimum-image
    # distance (this width) join the flow transformer's attention values, and a displacement
    # read-out adds velocities along the atoms' differences (conditional generator's design).
    pair_dim: int = 0
    pair_freqs: int = 3
    distance_rbf: int = 16
    distance_max: float = 8.0  # Å, last RBF centre

    def __post_init__(self) -> None:
        if self.pair_dim < 0:
            raise ValueError("pair_dim must be >= 0")
        if not 0 <= self.d_knot < self.d_clique:
            raise ValueError("d_knot must be in [0, d_clique)")
        if self.d_model % self.n_heads:
            raise ValueError("d_model must be divisible by n_heads")

    @property
    def d_z(self) -> int:
        return self.n_cliques * (self.d_clique - self.d_knot) + self.d_knot

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CliqueFlowmerConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def tiny_config() -> CliqueFlowmerConfig:
    """A model small enough for CPU unit tests (seconds per training step batch)."""
    return CliqueFlowmerConfig(
        d_model=32,
        n_blocks=1,
        n_heads=2,
        n_registers=1,
        ffn_dim=64,
        ada_rank=8,
        mlp_dim=32,
        n_cliques=3,
        d_clique=4,
        d_knot=1,
        dropout=0.0,
    )
