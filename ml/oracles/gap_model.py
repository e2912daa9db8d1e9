"""The band-gap model trained here: CHGNet 0.3.0's message-passing backbone (fine-tuned, or
frozen with only the heads trained), with a metal/non-metal head and a non-negative gap head.

Why CHGNet's backbone: it was pretrained on the Materials Project relaxations (MPtrj: 1.5 M
structures with energies, forces, stresses and magnetic moments), so its atom features already
encode the chemistry and local geometry that the band gap depends on; MP-20 has only ~19 k
structures with coordinates, too few to learn those from scratch. The same graphs also serve
CHGNet's own oracles, so one graph build scores both.

Output: ``gap = softplus(r)`` where the non-metal probability ``sigmoid(l) >= 0.5``, else 0:
never negative, and exactly 0 for predicted metals (62 % of MP-20 test are metals).

Soft species (for SMOACS, later): CHGNet embeds atoms with ``atom_embedding`` (an
``nn.Embedding`` over Z - 1); a design method can feed an element distribution ``p @ W`` in its
place, since nothing downstream needs integer species.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["GapModelConfig", "GapNet", "load_gap_model", "save_gap_model"]


@dataclass(frozen=True)
class GapModelConfig:
    hidden: int = 128
    dropout: float = 0.0
    backbone: str = "CHGNet 0.3.0"
    # A frozen backbone trains the heads only (features computed once: minutes on a CPU).
    freeze_backbone: bool = False


def crystal_features(backbone: nn.Module, graphs: Sequence[Any]) -> torch.Tensor:
    """Size-invariant crystal features: the mean of CHGNet's final atom features, and the mean
    and max of those before its last convolution (3 x 64 per crystal).

    CHGNet's own ``crystal_fea`` is a SUM over atoms (its energy head is extensive), so it is
    divided by the atom count here: a supercell must score like its primitive cell."""
    out = backbone(list(graphs), task="e", return_crystal_feas=True, return_atom_feas=True)
    n = out["atoms_per_graph"].to(out["crystal_fea"].dtype).unsqueeze(1)
    mean_final = out["crystal_fea"] / n
    pre = out["atom_fea"]
    mean_pre = torch.stack([a.mean(dim=0) for a in pre])
    max_pre = torch.stack([a.max(dim=0).values for a in pre])
    return torch.cat([mean_final, mean_pre, max_pre], dim=1)


class GapNet(nn.Module):
    """CHGNet backbone -> size-invariant crystal features -> two heads."""

    def __init__(self, backbone: nn.Module, config: GapModelConfig = GapModelConfig()):
        super().__init__()
        self.config = config
        self.backbone = backbone
        dim = 3 * int(backbone.atom_embedding.embedding.embedding_dim)
        self.trunk = nn.Sequential(
            nn.Linear(dim, config.hidden),
            nn.SiLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.hidden),
            nn.SiLU(),
        )
        self.metal_head = nn.Linear(config.hidden, 1)  # logit of "non-metal"
        self.gap_head = nn.Linear(config.hidden, 1)

    def heads(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(non-metal logit, gap if non-metal in eV) from :func:`crystal_features`."""
        h = self.trunk(features)
        return self.metal_head(h).view(-1), nn.functional.softplus(self.gap_head(h)).view(-1)

    def forward(self, graphs: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(non-metal logit, gap if non-metal in eV) per graph; the gap is >= 0."""
        return self.heads(crystal_features(self.backbone, graphs))

    @torch.no_grad()
    def predict(self, graphs: Sequence[Any]) -> torch.Tensor:
        logit, gap = self(graphs)
        return torch.where(logit >= 0, gap, torch.zeros_like(gap))


def _chgnet_backbone() -> nn.Module:
    from chgnet.model import CHGNet

    return CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)


def save_gap_model(model: GapNet, path: Path, meta: dict[str, Any]) -> None:
    """Weights in float32 plus the config and training metadata (a few MiB)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"config": asdict(model.config), "state_dict": state, "meta": meta}, path)


def load_gap_model(path: Path, device: str) -> tuple[GapNet, dict[str, Any]]:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = GapNet(_chgnet_backbone(), GapModelConfig(**blob["config"]))
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model.to(device), dict(blob.get("meta", {}))
