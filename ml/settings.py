"""Settings for the scientific core, read from the environment (prefix ``MATDESIGN_``).

Weights and data are always read from local directories: nothing is downloaded at run time.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

_REPO = Path(__file__).resolve().parents[1]
# The project's checkout sits beside ../shared (models and data) in development and CI.
_SHARED = _REPO.parent / "shared"


class MLSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MATDESIGN_", extra="ignore")

    models_dir: Path = _SHARED / "models"
    data_dir: Path = _SHARED / "data"
    cache_dir: Path = _REPO / ".cache"
    # "auto" picks CUDA when available.
    device: str = "auto"
    # CHGNet-backbone oracles build their graphs in torch on the device (ml.oracles.
    # chgnet_device): "auto" on CUDA only, where chgnet's per-structure CPU builder is the
    # bottleneck.
    chgnet_device_graphs: Literal["auto", "on", "off"] = "auto"
    # SevenNet relaxations with FIRE state and neighbour lists on the device
    # (ml.oracles.device_relax): "auto" on CUDA only, where the per-step CPU graphs dominate.
    device_relax: Literal["auto", "on", "off"] = "auto"
    # Small SevenNet calls of those relaxations replayed as CUDA graphs
    # (ml.oracles.sevennet_graphs); false runs every call eagerly.
    sevennet_cuda_graphs: bool = True
    # Processes judging uniqueness and novelty of large batches (ml.pipeline.identity); unset:
    # half the cores (at most 8) on machines of 8 cores or more, else 0 (the job's process).
    eval_processes: int | None = Field(default=None, ge=0, le=64)

    def torch_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


@lru_cache(maxsize=1)
def get_ml_settings() -> MLSettings:
    return MLSettings()
