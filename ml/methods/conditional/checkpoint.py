"""Saving and loading the generator: a small release file and a resumable training state.

The release file holds the (EMA) weights in bfloat16, the model config (with the fitted
length prior and property normalisation) and training facts for the model card; it stays
well under 16 MiB. The training state adds float32 weights, EMA, optimiser and counters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ml.generative.training import cpu_state, save_atomic
from ml.methods.conditional.model import ConditionalFlowModel, ModelConfig
from ml.settings import get_ml_settings

FORMAT = "matdesign-conditional-v1"
WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"


def save_release(
    model: ConditionalFlowModel, path: Path, info: dict[str, Any] | None = None
) -> None:
    state = cpu_state(model, torch.bfloat16)
    save_atomic(
        {"format": FORMAT, "config": model.config.to_dict(), "state": state, "info": info or {}},
        path,
    )


def load_release(
    path: Path, device: str | torch.device = "cpu"
) -> tuple[ConditionalFlowModel, dict[str, Any]]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a conditional-generator checkpoint")
    model = ConditionalFlowModel(ModelConfig(**payload["config"]))
    model.load_state_dict({k: v.float() for k, v in payload["state"].items()})
    return model.to(device).eval(), dict(payload.get("info", {}))


def find_weights(prior: str = "uniform") -> Path:
    """The release checkpoint for a coordinate prior: ``ml/weights/conditional-<prior>.pt``,
    or the same name under the models directory."""
    name = f"conditional-{prior}.pt"
    for root in (WEIGHTS_DIR, get_ml_settings().models_dir / "conditional"):
        if (root / name).exists():
            return root / name
    raise FileNotFoundError(f"no weights {name} in {WEIGHTS_DIR} or the models directory")


def save_training_state(path: Path, **state: Any) -> None:
    save_atomic(state, path)


def load_training_state(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


# --- the Wyckoff (v2) generator ---------------------------------------------------------------
FORMAT_WYCKOFF = "matdesign-conditional-wyckoff-v1"


RELEASE_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def save_wyckoff_release(
    model: torch.nn.Module,
    path: Path,
    stats: dict[str, Any],
    info: dict[str, Any] | None = None,
    dtype: str = "float32",
) -> None:
    """EMA weights + config + the template statistics the method proposes space groups and
    Wyckoff assignments with (so it needs no data set at run time). ``dtype`` "float16" halves
    the file (a 4 M-parameter network is 17.7 MB in float32, over the 16 MiB a checkpoint may
    take); float16 rather than bfloat16 because its 10-bit mantissa keeps the velocity field
    closer to the float32 one, and the weights stay far inside its range. Loading casts back."""
    payload = {
        "format": FORMAT_WYCKOFF,
        "config": model.config.to_dict(),  # type: ignore[operator]
        "state": cpu_state(model, RELEASE_DTYPES[dtype]),
        "stats": stats,
        "info": {**(info or {}), "stored_dtype": dtype},
    }
    save_atomic(payload, path)


def convert_wyckoff_release(src: Path, dst: Path, dtype: str = "float16") -> None:
    """Rewrite a Wyckoff release with its weights stored in ``dtype`` (config, statistics and
    model-card facts unchanged)."""
    payload = torch.load(src, map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT_WYCKOFF:
        raise ValueError(f"{src} is not a Wyckoff conditional-generator checkpoint")
    payload["state"] = {
        k: v.to(RELEASE_DTYPES[dtype]) if v.is_floating_point() else v
        for k, v in payload["state"].items()
    }
    payload["info"] = {**payload.get("info", {}), "stored_dtype": dtype}
    save_atomic(payload, dst)


def load_wyckoff_release(  # type: ignore[no-untyped-def]
    path: Path,
    device: str | torch.device = "cpu",
    extra_templates: bool = False,
    ranking: str = "v2",
):
    """(model, TemplateStats, info) of a Wyckoff-generator release file; ``extra_templates``:
    the assignment ranking also counts the templates of MP 2018 structures outside MP-20
    (:meth:`ml.generative.assignment.TemplateStats.with_extra`; off until the conditional
    benchmark measures it, see benchmarks/RESULTS.md). ``ranking``: "v2" (per-element letters
    and ordered templates, loaded for release files that lack them,
    :meth:`~ml.generative.assignment.TemplateStats.with_elements`) or "v1" (before them)."""
    from dataclasses import replace

    from ml.generative.assignment import RANKINGS, TemplateStats
    from ml.methods.conditional.wyckoff_model import WyckoffFlowModel, WyckoffModelConfig

    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT_WYCKOFF:
        raise ValueError(f"{path} is not a Wyckoff conditional-generator checkpoint")
    model = WyckoffFlowModel(WyckoffModelConfig(**payload["config"]))
    model.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in payload["state"].items()}
    )
    if ranking not in RANKINGS:
        raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}")
    stats = replace(TemplateStats.from_dict(payload["stats"]), ranking=ranking)
    if ranking == "v2":
        stats = stats.with_elements()
    if extra_templates:
        stats = stats.with_extra()
    return model.to(device).eval(), stats, dict(payload.get("info", {}))
