"""The pretrained policy (the prior): a small release file with weights, config and training
facts for the model card, found under ``ml/weights/`` or the models directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ml.generative.training import cpu_state, save_atomic
from ml.methods.matinvent.policy import PolicyConfig, TemplatePolicy
from ml.settings import get_ml_settings

__all__ = ["FORMAT", "PRIOR_FILE", "find_prior", "load_prior", "save_prior"]

FORMAT = "matdesign-matinvent-prior-v1"
PRIOR_FILE = "matinvent-prior.pt"
WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"


def save_prior(policy: TemplatePolicy, path: Path, info: dict[str, Any] | None = None) -> None:
    payload = {"format": FORMAT, "config": policy.config.to_dict(), "state": cpu_state(policy)}
    payload["info"] = info or {}
    save_atomic(payload, path)


def load_prior(
    path: Path, device: str | torch.device = "cpu"
) -> tuple[TemplatePolicy, dict[str, Any]]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a MatInvent prior checkpoint")
    policy = TemplatePolicy(PolicyConfig(**payload["config"]))
    policy.load_state_dict(payload["state"])
    return policy.to(device).eval(), dict(payload.get("info", {}))


def find_prior() -> Path:
    """``ml/weights/matinvent-prior.pt``, else ``<models dir>/matinvent/matinvent-prior.pt``."""
    for root in (WEIGHTS_DIR, get_ml_settings().models_dir / "matinvent"):
        if (root / PRIOR_FILE).exists():
            return root / PRIOR_FILE
    raise FileNotFoundError(f"no {PRIOR_FILE} in {WEIGHTS_DIR} or the models directory")
