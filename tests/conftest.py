"""Root test configuration: point the settings at ../shared (models and data) unless set."""

from __future__ import annotations

import os
from pathlib import Path

_SHARED = Path(__file__).resolve().parents[1].parent / "shared"
os.environ.setdefault("MATDESIGN_MODELS_DIR", str(_SHARED / "models"))
os.environ.setdefault("MATDESIGN_DATA_DIR", str(_SHARED / "data"))
# Two cores in CI: keep torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")
