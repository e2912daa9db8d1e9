"""Where each data set lives under ``MATDESIGN_DATA_DIR`` and which columns it carries."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ml.settings import get_ml_settings

__all__ = ["SOURCES", "DataSource", "data_path", "get_source", "structure_splits"]


@dataclass(frozen=True)
class DataSource:
    dataset: str
    split: str
    relpath: str
    # DFT property columns copied into ``CrystalRecord.properties`` under the same names.
    property_columns: tuple[str, ...]
    has_structures: bool = True
    has_space_group: bool = True


_MP = ("formation_energy_per_atom", "band_gap")
_PEROV = ("heat_ref", "dir_gap", "ind_gap")

SOURCES: dict[tuple[str, str], DataSource] = {
    (s.dataset, s.split): s
    for s in [
        DataSource("mp20", "train", "mp20/train.csv.gz", _MP),
        DataSource("mp20", "val", "mp20/val.csv.gz", _MP),
        DataSource("mp20", "test", "mp20/test.csv.gz", _MP),
        # All 27,136 MP-20 train materials without coordinates (formula, size, properties).
        DataSource("mp20", "train_index", "mp20/train_index.csv.gz", _MP, has_structures=False),
        DataSource("mp2018", "extra", "mp2018/extra.csv.gz", _MP),
        DataSource("perov5", "val", "perov5/val.csv.gz", _PEROV, has_space_group=False),
        DataSource("perov5", "test", "perov5/test.csv.gz", _PEROV, has_space_group=False),
    ]
}


def get_source(dataset: str, split: str) -> DataSource:
    try:
        return SOURCES[(dataset, split)]
    except KeyError:
        known = ", ".join(f"{d}/{s}" for d, s in SOURCES)
        raise ValueError(f"unknown data set {dataset}/{split}; known: {known}") from None


def structure_splits() -> list[tuple[str, str]]:
    """Every (dataset, split) holding coordinates: together, the reference set for novelty."""
    return [key for key, src in SOURCES.items() if src.has_structures]


def data_path(source: DataSource, data_dir: Path | None = None) -> Path:
    root = Path(data_dir) if data_dir is not None else get_ml_settings().data_dir
    path = root / source.relpath
    if not path.is_file():
        raise FileNotFoundError(
            f"data file {path} not found (set MATDESIGN_DATA_DIR to the data directory)"
        )
    return path
