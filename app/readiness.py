"""Whether the configured models and data are there: every job needs them, so a server
without them is not ready (``/readyz``), and says which files are missing."""

from __future__ import annotations

from pathlib import Path

from ml.data.sources import SOURCES
from ml.settings import MLSettings, get_ml_settings

# Weights under MATDESIGN_MODELS_DIR that the default oracles load (MEGNet via matgl).
MODEL_FILES = (
    "matgl/MEGNet-MP-2018.6.1-Eform/model.pt",
    "matgl/MEGNet-MP-2019.4.1-BandGap-mfi/model.pt",
)


def missing_models_and_data(settings: MLSettings | None = None) -> list[str]:
    """Paths of the expected model and data files that are not there (empty: all present)."""
    settings = settings or get_ml_settings()
    models, data = Path(settings.models_dir), Path(settings.data_dir)
    missing = [str(models / rel) for rel in MODEL_FILES if not (models / rel).is_file()]
    missing += [
        str(data / src.relpath) for src in SOURCES.values() if not (data / src.relpath).is_file()
    ]
    return missing


def models_data_check(settings: MLSettings | None = None) -> tuple[bool, str]:
    """(ok, detail) for /readyz: where the models and data are read from, or what is missing."""
    settings = settings or get_ml_settings()
    missing = missing_models_and_data(settings)
    if not missing:
        return True, f"models {settings.models_dir}, data {settings.data_dir}"
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return False, (
        f"missing {shown}: set MATDESIGN_MODELS_DIR / MATDESIGN_DATA_DIR (README: Models and data)"
    )
