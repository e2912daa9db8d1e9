"""Extra property heads on a frozen CliqueFlowmer latent space (small files beside a checkpoint).

A checkpoint's own predictor learns one label (for the band-gap checkpoint: the paper's
regularised y = gap + 20 max(0, Eform + 0.2)). A head file adds predictors of other
properties read from the same latents, e.g. the plain PBE band gap, so that a request's goal
is optimised as stated. Each head has the checkpoint predictor's clique-decomposed form
f(z) = sum_c MLP([Z_c, onehot(c)]) on standardised labels.

A head file is tied to its checkpoint by the checkpoint's SHA-256: heads read one encoder's
latents and mean nothing on another's, so a mismatch drops them (with a warning).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ml.methods.cliqueflowmer.config import CliqueFlowmerConfig
from ml.methods.cliqueflowmer.layers import mlp
from ml.methods.cliqueflowmer.model import clique_index

log = logging.getLogger(__name__)
HEADS_FORMAT = "cliqueflowmer-heads/1"


def heads_path(checkpoint: Path) -> Path:
    """``cliqueflowmer_bandgap.pt`` -> ``cliqueflowmer_bandgap_heads.pt``."""
    return checkpoint.with_name(f"{checkpoint.stem}_heads.pt")


@lru_cache(maxsize=8)
def _digest(path: str, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_digest(path: Path) -> str:
    return _digest(str(path), path.stat().st_mtime_ns)


class LatentHead(nn.Module):
    """Clique-decomposed predictor of one property (label units out)."""

    def __init__(self, cfg: CliqueFlowmerConfig, hidden: int | None = None) -> None:
        super().__init__()
        self.register_buffer("clique_idx", clique_index(cfg), persistent=False)
        self.register_buffer("clique_onehot", torch.eye(cfg.n_cliques), persistent=False)
        self.net = mlp(cfg.d_clique + cfg.n_cliques, hidden or cfg.mlp_dim, 1, cfg.n_mlp)
        self.register_buffer("y_mean", torch.zeros(()))
        self.register_buffer("y_std", torch.ones(()))

    def standardised(self, z: torch.Tensor) -> torch.Tensor:
        cliques = z[..., self.clique_idx]
        onehot = self.clique_onehot.to(cliques.dtype).expand(*cliques.shape[:-1], -1)
        return self.net(torch.cat([cliques, onehot], dim=-1)).squeeze(-1).sum(-1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.standardised(z).float() * self.y_std + self.y_mean


@dataclass
class HeadSpec:
    head: LatentHead
    target: str  # what it predicts, in words
    meta: dict[str, Any]


def save_heads(
    path: Path, checkpoint: Path, cfg: CliqueFlowmerConfig, heads: dict[str, HeadSpec]
) -> int:
    """Write the heads (float32: a few hundred kB) tied to ``checkpoint``; returns bytes."""
    payload = {
        "format": HEADS_FORMAT,
        "checkpoint": checkpoint.name,
        "checkpoint_sha256": file_digest(checkpoint),
        "config": cfg.to_dict(),
        "heads": {
            prop: {
                "hidden": spec.head.net[0].out_features,
                "state_dict": {
                    k: v.detach().float().cpu() for k, v in spec.head.state_dict().items()
                },
                "target": spec.target,
                "meta": spec.meta,
            }
            for prop, spec in heads.items()
        },
    }
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path.stat().st_size


def load_heads(checkpoint: Path, device: str | torch.device = "cpu") -> dict[str, HeadSpec]:
    """The heads stored beside ``checkpoint`` ({} when none, or when made for another file)."""
    path = heads_path(checkpoint)
    if not path.is_file():
        return {}
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != HEADS_FORMAT:
        log.warning("%s: unknown format %r, ignored", path, payload.get("format"))
        return {}
    if payload["checkpoint_sha256"] != file_digest(checkpoint):
        log.warning("%s was fitted to another version of %s, ignored", path, checkpoint.name)
        return {}
    cfg = CliqueFlowmerConfig.from_dict(payload["config"])
    out = {}
    for prop, entry in payload["heads"].items():
        head = LatentHead(cfg, entry["hidden"])
        head.load_state_dict(entry["state_dict"])
        head.to(device).eval()
        out[prop] = HeadSpec(head, entry["target"], entry["meta"])
    return out


def head_names(checkpoint: Path) -> list[str]:
    """Names of the valid heads beside ``checkpoint`` (cached per file versions)."""
    path = heads_path(checkpoint)
    if not path.is_file():
        return []
    return list(
        _head_names(str(checkpoint), checkpoint.stat().st_mtime_ns, path.stat().st_mtime_ns)
    )


@lru_cache(maxsize=8)
def _head_names(checkpoint: str, ckpt_mtime: int, heads_mtime: int) -> tuple[str, ...]:
    return tuple(load_heads(Path(checkpoint)))
