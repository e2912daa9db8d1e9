"""Issue 20: CHGNet-backbone oracles with their graphs built in torch on the device give the
stock models' values (real weights, MP-20 test crystals), and crystals the torch path cannot
take fall back to the stock path."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from ml.crystal import Crystal
from ml.data.records import load_records
from ml.oracles import chgnet_device
from ml.oracles.registry import get_oracle
from ml.pipeline.evaluation import GraphCache
from ml.settings import get_ml_settings


@pytest.fixture(scope="module")
def crystals() -> list[Crystal]:
    records = load_records("mp20", "test", limit=40)
    polonium = Structure(Lattice.cubic(3.35), ["Po"], [[0, 0, 0]])  # outside the vocabulary
    return [r.crystal for r in records] + [Crystal.from_structure(polonium)]


def test_device_graphs_equal_the_stock_oracles(crystals: list[Crystal]) -> None:
    scores = chgnet_device.score_on_device(crystals, "cpu")
    assert scores.supported[:-1].all() and not scores.supported[-1]
    energy = get_oracle("chgnet-energy", "cpu").predict(crystals[:-1])
    gap = get_oracle("gap-chgnet-ft", "cpu").predict(crystals[:-1])
    np.testing.assert_allclose(scores.energy[:-1], energy, atol=2e-4)
    np.testing.assert_allclose(scores.band_gap[:-1], gap, atol=2e-3)
    assert (gap > 0.5).sum() >= 5 and np.isnan(scores.energy[-1])


def test_graph_cache_on_device_graphs_falls_back_for_unsupported_crystals(
    crystals: list[Crystal], monkeypatch: pytest.MonkeyPatch
) -> None:
    energy_oracle = get_oracle("chgnet-energy", "cpu")
    gap_oracle = get_oracle("gap-chgnet-ft", "cpu")
    ks = [0, 3, len(crystals) - 1, 7]
    stock = GraphCache(crystals)
    expected = (stock.predict(energy_oracle, ks), stock.predict(gap_oracle, ks))
    monkeypatch.setenv("MATDESIGN_CHGNET_DEVICE_GRAPHS", "on")
    get_ml_settings.cache_clear()
    try:
        calls: list[int] = []
        real = chgnet_device.score_on_device

        def counting(cs: list[Crystal], device: str) -> chgnet_device.DeviceChgnetScores:
            calls.append(len(cs))
            return real(cs, device)

        monkeypatch.setattr("ml.pipeline.evaluation.score_on_device", counting)
        cache = GraphCache(crystals)
        got = (cache.predict(energy_oracle, ks), cache.predict(gap_oracle, ks))
    finally:
        monkeypatch.delenv("MATDESIGN_CHGNET_DEVICE_GRAPHS")
        get_ml_settings.cache_clear()
    assert calls == [len(crystals)]  # one pass serves both oracles
    np.testing.assert_allclose(got[0], expected[0], atol=2e-4)
    np.testing.assert_allclose(got[1], expected[1], atol=2e-3)
    assert np.isfinite(got[0][2])  # polonium: scored by the stock CHGNet


def test_chunks_bound_the_sites_per_pass() -> None:
    sizes = [4000, 4000, 300, 8192, 1]
    chunks = chgnet_device._chunks(list(range(5)), sizes)
    assert chunks == [[0, 1], [2], [3], [4]]
    assert all(sum(sizes[i] for i in c) <= chgnet_device._MAX_SITES for c in chunks)


def test_graph_cache_gives_chgnet_eform_not_the_energy(crystals: list[Crystal]) -> None:
    """The formation-energy oracle read through the shared graphs equals its own predict (the
    cache once returned the backbone's energy per atom for it, -8 for a -3 eV/atom oxide)."""
    eform = get_oracle("chgnet-eform", "cpu")
    cache = GraphCache(crystals[:6])
    got = cache.predict(eform, range(6))
    np.testing.assert_allclose(got, eform.predict(crystals[:6]), atol=1e-5)
    energy = cache.predict(get_oracle("chgnet-energy", "cpu"), range(6))
    assert np.abs(got - energy).min() > 0.5


def test_energies_alone_do_not_need_the_gap_checkpoint(
    crystals: list[Crystal], monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    """The one-pass device model carries the trained gap head; a caller that only wants CHGNet
    energies (the conditional benchmark's energy ranking) gets them without that file."""
    from pathlib import Path

    import ml.oracles.gap as gap_module

    sample = crystals[:4]
    expected = get_oracle("chgnet-energy", "cpu").predict(sample)
    monkeypatch.setenv("MATDESIGN_CHGNET_DEVICE_GRAPHS", "on")
    get_ml_settings.cache_clear()
    monkeypatch.setattr(gap_module, "GAP_CHECKPOINT", Path(str(tmp_path)) / "missing.pt")

    def no_device_pass(*_: object) -> None:
        raise AssertionError("the device pass needs the gap checkpoint")

    monkeypatch.setattr(chgnet_device, "score_on_device", no_device_pass)
    try:
        got = chgnet_device.chgnet_energies(sample, "cpu")
    finally:
        monkeypatch.delenv("MATDESIGN_CHGNET_DEVICE_GRAPHS")
        get_ml_settings.cache_clear()
    np.testing.assert_allclose(got, expected, atol=1e-6)
