"""Committed weights: one checkpoint per property under ``ml/weights/`` (bf16, <= 16 MiB).

A checkpoint is a plain dict readable with ``torch.load(weights_only=True)``: ``config``,
``state_dict`` (floating tensors in bf16), ``property``, ``target`` (what the predictor
predicts), ``meta`` (training data, steps, losses, metrics).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from ml.methods.cliqueflowmer.config import CliqueFlowmerConfig
from ml.methods.cliqueflowmer.model import CliqueFlowmer

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"
CHECKPOINT_FILES = {
    "formation_energy": "cliqueflowmer_eform.pt",
    "band_gap": "cliqueflowmer_bandgap.pt",
}
TARGETS = {
    "formation_energy": "CHGNet-Eform formation energy per atom (eV/atom)",
    "band_gap": "MEGNet PBE band gap + 20 * max(0, CHGNet-Eform + 0.2) (eV)",
}


def export_checkpoint(
    model: CliqueFlowmer, path: str | Path, prop: str, meta: dict[str, Any]
) -> int:
    """Write the inference checkpoint (bf16 weights); returns its size in bytes."""
    state = {
        k: (v.detach().to(torch.bfloat16) if v.is_floating_point() else v.detach()).cpu()
        for k, v in model.state_dict().items()
    }
    # Prior and label statistics are small and precision-critical: keep them in float32.
    for k in ("len_mu", "len_sigma", "y_mean", "y_std"):
        state[k] = model.state_dict()[k].detach().float().cpu()
    payload = {
        "format": "cliqueflowmer/1",
        "config": model.cfg.to_dict(),
        "state_dict": state,
        "property": prop,
        "target": TARGETS.get(prop, prop),
        "meta": meta,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path.stat().st_size


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[CliqueFlowmer, dict[str, Any]]:
    """Model in eval mode (float32) and the checkpoint's payload without the weights."""
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    cfg = CliqueFlowmerConfig.from_dict(payload["config"])
    model = CliqueFlowmer(cfg)
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    model.load_state_dict(state)
    model.to(device).eval()
    info = {k: v for k, v in payload.items() if k != "state_dict"}
    return model, info


def checkpoint_path(prop: str, weights_dir: Path | None = None) -> Path:
    return (weights_dir or WEIGHTS_DIR) / CHECKPOINT_FILES[prop]


def available_properties(weights_dir: Path | None = None) -> list[str]:
    return [p for p in CHECKPOINT_FILES if checkpoint_path(p, weights_dir).is_file()]


def cached_checkpoint(path: Path, device: str) -> tuple[CliqueFlowmer, dict[str, Any]]:
    """One loaded model per (file version, device) per process: the worker reuses it."""
    return _cached(str(path), path.stat().st_mtime_ns, device)


@lru_cache(maxsize=8)
def _cached(path: str, mtime_ns: int, device: str) -> tuple[CliqueFlowmer, dict[str, Any]]:
    return load_checkpoint(path, device)
