"""Issue 20: SevenNet calls padded to a captured capacity give the unpadded results (the
padding on this CPU, without the capture), and sizes pick the capacities they fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ml.crystal import Crystal
from ml.data.records import load_records
from ml.oracles import sevennet_graphs
from ml.oracles.device_relax import SevennetDevicePotential
from ml.oracles.sevennet_graphs import EFS, SevennetEFS, _GraphCache


@pytest.fixture(scope="module")
def calls() -> tuple[SevennetDevicePotential, list[tuple[torch.Tensor, ...]]]:
    """The potential and the arguments of its per-pass SevenNet calls for 5 MP-20 cells."""
    crystals: list[Crystal] = [r.crystal for r in load_records("mp20", "test", limit=5)]
    pot = SevennetDevicePotential("sevennet-l3i5", "cpu")
    seen: list[tuple[torch.Tensor, ...]] = []
    real = SevennetEFS.__call__

    def record(self: SevennetEFS, *args: torch.Tensor) -> EFS:
        seen.append(args)
        return real(self, *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SevennetEFS, "__call__", record)
        pot(
            torch.tensor(np.stack([c.lattice for c in crystals])),
            torch.tensor(np.concatenate([c.cart_coords for c in crystals])),
            torch.tensor(np.concatenate([c.numbers for c in crystals])),
            torch.tensor([c.num_atoms for c in crystals]),
        )
    return pot, seen


def test_padded_call_equals_the_unpadded_one(calls) -> None:
    pot, seen = calls
    args = seen[0]
    cache = _GraphCache(pot.efs, "cpu", capture=False)
    padded = cache(*args)
    plain = pot.efs(*args)
    assert len(cache.graphs) == 1  # the call went through a padded capacity
    (graph,) = cache.graphs.values()
    assert graph.edges > args[2].shape[0] and graph.atoms > args[0].shape[0]
    np.testing.assert_allclose(padded.energy.numpy(), plain.energy.numpy(), rtol=1e-6)
    assert np.abs(padded.forces.numpy() - plain.forces.numpy()).max() < 1e-5
    assert np.abs(padded.stress.numpy() - plain.stress.numpy()).max() < 1e-7
    assert np.abs(plain.forces.numpy()).max() > 0.01


def test_capacities_are_powers_of_two_and_large_calls_run_eagerly(
    calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    pot, seen = calls
    args = seen[0]
    n_edges = args[2].shape[0]
    cache = _GraphCache(pot.efs, "cpu", capture=False)
    cache(*args)
    (capacity,) = cache.graphs
    assert capacity >= n_edges and capacity & (capacity - 1) == 0
    assert capacity == sevennet_graphs.MIN_GRAPH_EDGES or capacity < 2 * n_edges
    monkeypatch.setattr(sevennet_graphs, "MAX_GRAPH_EDGES", capacity // 2)
    fresh = _GraphCache(pot.efs, "cpu", capture=False)
    fresh(*args)
    assert fresh.graphs == {}  # above the largest capacity: eager


def test_prepared_capacities_are_checked_against_the_eager_pass_on_first_use(calls) -> None:
    pot, seen = calls
    cache = _GraphCache(pot.efs, "cpu", capture=False)
    cache.prepare()
    low, high = sevennet_graphs.MIN_GRAPH_EDGES, sevennet_graphs.MAX_GRAPH_EDGES
    assert sorted(cache.graphs) == [1 << k for k in range(low.bit_length() - 1, high.bit_length())]
    assert cache.checked == set()
    cache(*seen[0])
    assert len(cache.checked) == 1 and cache.enabled
