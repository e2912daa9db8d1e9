"""Committed weights: one checkpoint per latent space under ``ml/weights/`` (bf16, <= 16 MiB),
plus small head files beside them (``heads.py``).

A checkpoint is a plain dict readable with ``torch.load(weights_only=True)``: ``config``,
``state_dict`` (floating tensors in bf16), ``property``, ``target`` (what the predictor
predicts), ``meta`` (training data, steps, losses, metrics).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from ml.generative.training import cpu_state, save_atomic
from ml.methods.cliqueflowmer.config import CliqueFlowmerConfig
from ml.methods.cliqueflowmer.model import CliqueFlowmer

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"
# Property a job optimises -> the checkpoint whose latent space it searches.
CHECKPOINT_FILES = {
    "formation_energy": "cliqueflowmer_eform.pt",
    "band_gap": "cliqueflowmer_bandgap.pt",
    "band_gap_regularized": "cliqueflowmer_bandgap.pt",
}
# What a checkpoint's own predictor learnt, by the checkpoint's ``property`` field: the
# band-gap checkpoint was trained on the paper's regularised gap (``data.labels_for``).
NATIVE_PREDICTOR = {"formation_energy": "formation_energy", "band_gap": "band_gap_regularized"}
TARGETS = {
    "formation_energy": "CHGNet-Eform formation energy per atom (eV/atom)",
    "band_gap": "PBE band gap (eV), plain",
    "band_gap_regularized": "MEGNet PBE band gap + 20 * max(0, CHGNet-Eform + 0.2) (eV)",
}


def export_checkpoint(
    model: CliqueFlowmer, path: str | Path, prop: str, meta: dict[str, Any]
) -> int:
    """Write the inference checkpoint (bf16 weights); returns its size in bytes."""
    # Prior and label statistics are small and precision-critical: kept in float32.
    state = cpu_state(model, torch.bfloat16, ("len_mu", "len_sigma", "y_mean", "y_std"))
    payload = {
        "format": "cliqueflowmer/1",
        "config": model.cfg.to_dict(),
        "state_dict": state,
        "property": prop,
        "target": TARGETS.get(prop, prop),
        "meta": meta,
    }
    return save_atomic(payload, Path(path))


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
    """Properties a job can optimise: the checkpoint exists and predicts the property itself
    (its own predictor or a head fitted to it)."""
    return [p for p in CHECKPOINT_FILES if p in latent_predictors(p, weights_dir)]


def latent_predictors(prop: str, weights_dir: Path | None = None) -> list[str]:
    """Properties predicted in the latent space that ``prop`` is searched in (no weights
    loaded beyond the small head file)."""
    from ml.methods.cliqueflowmer.heads import head_names

    path = checkpoint_path(prop, weights_dir)
    if not path.is_file():
        return []
    native = NATIVE_PREDICTOR[_checkpoint_property(path)]
    return [native, *(h for h in head_names(path) if h != native)]


@lru_cache(maxsize=16)
def _property_of(path: str, mtime_ns: int) -> str:
    payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return str(payload["property"])


def _checkpoint_property(path: Path) -> str:
    return _property_of(str(path), path.stat().st_mtime_ns)


def cached_checkpoint(path: Path, device: str) -> tuple[CliqueFlowmer, dict[str, Any]]:
    """One loaded model per (file version, device) per process: the worker reuses it."""
    return _cached(str(path), path.stat().st_mtime_ns, device)


@lru_cache(maxsize=8)
def _cached(path: str, mtime_ns: int, device: str) -> tuple[CliqueFlowmer, dict[str, Any]]:
    return load_checkpoint(path, device)


def cached_space(
    prop: str, weights_dir: Path | None, device: str
) -> tuple[CliqueFlowmer, dict[str, Any], dict[str, Any]]:
    """The model searched for ``prop``, its payload info and its predictors by property name
    (the model's own predictor under its native name, plus the heads beside it)."""
    from ml.methods.cliqueflowmer.heads import heads_path

    path = checkpoint_path(prop, weights_dir)
    hp = heads_path(path)
    heads_mtime = hp.stat().st_mtime_ns if hp.is_file() else 0
    return _cached_space(str(path), path.stat().st_mtime_ns, heads_mtime, device)


@lru_cache(maxsize=8)
def _cached_space(
    path: str, mtime_ns: int, heads_mtime: int, device: str
) -> tuple[CliqueFlowmer, dict[str, Any], dict[str, Any]]:
    from ml.methods.cliqueflowmer.heads import load_heads

    model, info = _cached(path, mtime_ns, device)
    predictors: dict[str, Any] = {NATIVE_PREDICTOR[str(info["property"])]: model.predict}
    for name, spec in load_heads(Path(path), device).items():
        predictors.setdefault(name, spec.head)
    return model, info, predictors
