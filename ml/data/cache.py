"""Tables and parsed structures of one data split, with an on-disk cache of parsed CIFs.

Parsing a CIF with pymatgen costs ~3-10 ms; the whole data directory (~56k CIFs) would take
minutes on two cores. So each split's parsed structures are stored once as a compressed numpy
file ``<cache_dir>/structures/<dataset>-<split>.npz`` holding the first ``k`` rows (lattices,
fractional coordinates, atomic numbers, atoms per row). The file is keyed by the SHA-256 of the
source CSV and a parser version: a changed source or parser invalidates it. Parsing is lazy:
asking for the first ``n`` rows parses only the rows not yet cached and extends the file.
Single rows (novelty look-ups) are parsed on demand and kept in memory only.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ml.crystal import Crystal
from ml.data.sources import DataSource, data_path, get_source
from ml.settings import get_ml_settings

__all__ = ["STATS", "SplitStore", "clear_memory", "get_store", "read_table"]

# Bump when parsing changes the stored arrays, so old cache files are ignored.
PARSER_VERSION = 1

# Process-wide counters; tests read ``cifs_parsed`` to prove the cache is reused.
STATS: dict[str, int] = {"cifs_parsed": 0, "cache_files_read": 0, "cache_files_written": 0}

_LOCK = threading.RLock()
_TABLES: dict[tuple[str, int, int], pd.DataFrame] = {}
_HASHES: dict[tuple[str, int, int], str] = {}
_STORES: dict[tuple[str, str, str, str], SplitStore] = {}


def _file_id(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def read_table(dataset: str, split: str, data_dir: Path | None = None) -> pd.DataFrame:
    """The split's CSV as a DataFrame (all columns, CIF text included), read once per process."""
    path = data_path(get_source(dataset, split), data_dir)
    key = _file_id(path)
    with _LOCK:
        table = _TABLES.get(key)
        if table is None:
            table = pd.read_csv(path)
            _TABLES[key] = table
        return table


def _file_hash(path: Path) -> str:
    key = _file_id(path)
    with _LOCK:
        if key not in _HASHES:
            _HASHES[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        return _HASHES[key]


def parse_cif(cif: str) -> Crystal | None:
    """Parse one data-set CIF; None when pymatgen cannot read it (counted, never raised)."""
    STATS["cifs_parsed"] += 1
    with warnings.catch_warnings():
        # pymatgen warns about rounding 0.33333333 to 1/3 on most rows: expected, not news.
        warnings.simplefilter("ignore")
        try:
            return Crystal.from_cif(cif)
        except ValueError:
            return None


@dataclass
class _Prefix:
    """Parsed structures of rows [0, k) as flat arrays; ``counts[i] == 0``: row i unparseable."""

    lattices: np.ndarray = field(default_factory=lambda: np.zeros((0, 3, 3)))
    frac: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    numbers: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))

    def __post_init__(self) -> None:
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)

    @property
    def size(self) -> int:
        return len(self.counts)

    def crystal(self, row: int) -> Crystal | None:
        if self.counts[row] == 0:
            return None
        lo, hi = self.offsets[row], self.offsets[row + 1]
        return Crystal(
            self.lattices[row].copy(), self.frac[lo:hi].copy(), self.numbers[lo:hi].copy()
        )

    def extended(self, crystals: list[Crystal | None]) -> _Prefix:
        ok = [c for c in crystals if c is not None]
        lat = [c.lattice if c is not None else np.full((3, 3), np.nan) for c in crystals]
        return _Prefix(
            lattices=np.concatenate([self.lattices, np.array(lat).reshape(-1, 3, 3)]),
            frac=np.concatenate([self.frac, *[c.frac_coords for c in ok]]),
            numbers=np.concatenate([self.numbers, *[c.numbers for c in ok]]).astype(np.int64),
            counts=np.concatenate(
                [self.counts, [c.num_atoms if c is not None else 0 for c in crystals]]
            ).astype(np.int64),
        )


class SplitStore:
    """Parsed structures of one (dataset, split): a cached prefix plus single-row look-ups."""

    def __init__(self, source: DataSource, data_dir: Path | None, cache_dir: Path) -> None:
        if not source.has_structures:
            raise ValueError(f"{source.dataset}/{source.split} holds no structures")
        self.source = source
        self.data_dir = data_dir
        self.path = data_path(source, data_dir)
        self.cache_file = cache_dir / "structures" / f"{source.dataset}-{source.split}.npz"
        self._prefix: _Prefix | None = None
        self._single: dict[int, Crystal | None] = {}
        self._lock = threading.RLock()

    @property
    def table(self) -> pd.DataFrame:
        return read_table(self.source.dataset, self.source.split, self.data_dir)

    def _key(self) -> str:
        return f"v{PARSER_VERSION}:{_file_hash(self.path)}"

    def _load_prefix(self) -> _Prefix:
        if self._prefix is not None:
            return self._prefix
        self._prefix = _Prefix()
        if self.cache_file.is_file():
            try:
                with np.load(self.cache_file, allow_pickle=False) as z:
                    if str(z["key"]) == self._key():
                        self._prefix = _Prefix(z["lattices"], z["frac"], z["numbers"], z["counts"])
                        STATS["cache_files_read"] += 1
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache file is rebuilt, not fatal
        return self._prefix

    def _save_prefix(self, prefix: _Prefix) -> None:
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: readers in other processes never see a half-written file.
        fd, tmp = tempfile.mkstemp(dir=self.cache_file.parent, suffix=".npz.tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez_compressed(
                    fh,
                    key=np.array(self._key()),
                    lattices=prefix.lattices,
                    frac=prefix.frac,
                    numbers=prefix.numbers,
                    counts=prefix.counts,
                )
            os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is shared
            os.replace(tmp, self.cache_file)
            STATS["cache_files_written"] += 1
        except OSError:
            Path(tmp).unlink(missing_ok=True)
            raise

    def __len__(self) -> int:
        return len(self.table)

    def crystals(self, n: int | None = None) -> list[Crystal | None]:
        """Crystals of rows [0, n) (all rows when n is None), parsing only uncached rows."""
        total = len(self)
        n = total if n is None else max(0, min(int(n), total))
        with self._lock:
            prefix = self._load_prefix()
            if prefix.size < n:
                cifs = self.table["cif"].iloc[prefix.size : n]
                parsed = [
                    self._single[prefix.size + i]
                    if self._single.get(prefix.size + i) is not None
                    else parse_cif(str(c))
                    for i, c in enumerate(cifs)
                ]
                prefix = prefix.extended(parsed)
                self._prefix = prefix
                self._save_prefix(prefix)
            return [prefix.crystal(i) for i in range(n)]

    def crystal_at(self, row: int) -> Crystal | None:
        """Crystal of one row: from the cached prefix when it covers the row, else parsed."""
        with self._lock:
            prefix = self._load_prefix()
            if row < prefix.size:
                return prefix.crystal(row)
            if row not in self._single:
                self._single[row] = parse_cif(str(self.table["cif"].iloc[row]))
            crystal = self._single[row]
            return crystal.copy() if crystal is not None else None


def get_store(
    dataset: str, split: str, *, data_dir: Path | None = None, cache_dir: Path | None = None
) -> SplitStore:
    """The process-wide store of one split (one per data and cache directory)."""
    settings = get_ml_settings()
    data_root = Path(data_dir) if data_dir is not None else settings.data_dir
    cache_root = Path(cache_dir) if cache_dir is not None else settings.cache_dir
    key = (dataset, split, str(data_root), str(cache_root))
    with _LOCK:
        store = _STORES.get(key)
        if store is None:
            store = SplitStore(get_source(dataset, split), data_root, cache_root)
            _STORES[key] = store
        return store


def clear_memory() -> None:
    """Forget every in-process table and parsed structure (the disk cache stays)."""
    with _LOCK:
        _TABLES.clear()
        _HASHES.clear()
        _STORES.clear()
