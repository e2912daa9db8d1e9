"""Mapping work that returns torch tensors over a process pool.

A pool sends a result holding tensors through torch's file-descriptor sharing, one descriptor
per tensor storage; with thousands of small graphs that runs out of descriptors (seen on a GPU
box: "received 0 items of ancdata", then a hung pool). Pickling each result to bytes in the
worker sends it as one plain message instead.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["pool_map"]


@dataclass(frozen=True)
class _Pickled:
    fn: Callable[[Any], Any]

    def __call__(self, item: Any) -> bytes:
        return pickle.dumps(self.fn(item), protocol=pickle.HIGHEST_PROTOCOL)


def pool_map(
    pool: Any, fn: Callable[[Any], Any], items: Iterable[Any], chunksize: int = 16
) -> list:
    """``[fn(x) for x in items]`` computed in ``pool`` (a multiprocessing pool)."""
    return [pickle.loads(b) for b in pool.map(_Pickled(fn), items, chunksize=chunksize)]
