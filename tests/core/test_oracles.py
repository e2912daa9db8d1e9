"""Oracles: registry, agreement with direct matgl/CHGNet calls, batching, unscorable inputs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pymatgen.core import Composition, Lattice, Structure

from ml.crystal import Crystal
from ml.oracles.references import ELEMENTAL_REFS_PATH
from ml.oracles.registry import default_oracle_name, get_oracle, known_properties, list_oracles
from ml.settings import get_ml_settings

REPO = Path(__file__).resolve().parents[2]
ALL_ORACLES = {
    "chgnet-eform",
    "megnet-eform",
    "megnet-gap-pbe",
    "megnet-gap-gllb_sc",
    "megnet-gap-hse",
    "megnet-gap-scan",
    "chgnet-energy",
    "density",
    "tolerance-factor",
    "hhi",
    "gap-chgnet-ft",
    "sevennet-l3i5-energy",
    "sevennet-l3i5-eform",
    "sevennet-0-energy",
    "sevennet-0-eform",
}
MODEL_ORACLES = ["chgnet-energy", "chgnet-eform", "megnet-eform", "megnet-gap-pbe"]


def rock_salt(a: float = 5.69) -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3]
    )


def isolated_cs() -> Structure:
    # Eight Cs atoms in a 40 A cube: every atom is beyond any model's cutoff from the others.
    rng = np.random.default_rng(0)
    return Structure(Lattice.cubic(40.0), ["Cs"] * 8, rng.random((8, 3)))


@pytest.fixture(scope="module")
def mp20_structures() -> list[Structure]:
    path = Path(get_ml_settings().data_dir) / "mp20" / "test.csv.gz"
    cifs = pd.read_csv(path, nrows=6)["cif"]
    return [Crystal.from_cif(c).to_structure() for c in cifs]


# --- registry (no weights) ------------------------------------------------------------------
def test_registry_lists_every_oracle_without_loading_models() -> None:
    code = (
        "import sys\n"
        "from ml.oracles.registry import list_oracles, known_properties\n"
        "print(','.join(sorted(o.name for o in list_oracles())))\n"
        "print(','.join(known_properties()))\n"
        "print('matgl' in sys.modules, 'chgnet' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert set(out[0].split(",")) == ALL_ORACLES
    assert {"formation_energy", "band_gap", "energy", "density"} <= set(out[1].split(","))
    assert out[2] == "False False"  # listing imported neither model package


def test_oracle_infos_carry_unit_model_and_version() -> None:
    infos = {o.name: o for o in list_oracles()}
    assert infos["chgnet-eform"].property == "formation_energy"
    assert infos["chgnet-eform"].unit == "eV/atom"
    assert infos["megnet-gap-hse"].unit == "eV"
    assert all(o.model and o.version for o in infos.values())
    assert "band_gap" in known_properties()


def test_defaults_and_unknown_names() -> None:
    assert default_oracle_name("formation_energy") == "chgnet-eform"
    assert default_oracle_name("band_gap") == "gap-chgnet-ft"
    assert default_oracle_name("band_gap", "pbe") == "gap-chgnet-ft"
    assert default_oracle_name("band_gap", "HSE") == "megnet-gap-hse"
    with pytest.raises(KeyError, match="no_such"):
        get_oracle("no_such_oracle")
    with pytest.raises(KeyError, match="viscosity"):
        default_oracle_name("viscosity")
    with pytest.raises(KeyError, match="pbe0"):
        default_oracle_name("band_gap", "pbe0")


# --- agreement with the libraries' own single-structure calls --------------------------------
def _direct_megnet(name: str):  # -> matgl model loaded independently of the oracle cache
    import matgl
    from matgl.data.transformer import Normalizer

    torch.serialization.add_safe_globals([Normalizer])
    return matgl.load_model(Path(get_ml_settings().models_dir) / "matgl" / name)


@pytest.mark.slow
def test_megnet_oracles_match_direct_matgl(mp20_structures: list[Structure]) -> None:
    eform_model = _direct_megnet("MEGNet-MP-2018.6.1-Eform")
    gap_model = _direct_megnet("MEGNet-MP-2019.4.1-BandGap-mfi")
    structures = [rock_salt(), *mp20_structures[:3]]
    eform = get_oracle("megnet-eform", "cpu").predict(structures)
    pbe = get_oracle("megnet-gap-pbe", "cpu").predict(structures)
    hse = get_oracle("megnet-gap-hse", "cpu").predict(structures)
    for i, s in enumerate(structures):
        assert eform[i] == pytest.approx(float(eform_model.predict_structure(s)), abs=1e-5)
        direct_pbe = gap_model.predict_structure(s, state_attr=torch.tensor([0]))
        direct_hse = gap_model.predict_structure(s, state_attr=torch.tensor([2]))
        assert pbe[i] == pytest.approx(float(direct_pbe), abs=1e-5)
        assert hse[i] == pytest.approx(float(direct_hse), abs=1e-5)
    assert not np.allclose(pbe, hse)  # the fidelity state really reaches the model
    # one loaded model serves all four fidelities
    assert get_oracle("megnet-gap-pbe", "cpu").model is get_oracle("megnet-gap-scan", "cpu").model


@pytest.mark.slow
def test_chgnet_oracles_match_direct_chgnet(mp20_structures: list[Structure]) -> None:
    from ml.oracles.chgnet import load_chgnet

    model = load_chgnet("cpu")
    structures = [rock_salt(), *mp20_structures[:3]]
    energy = get_oracle("chgnet-energy", "cpu").predict(structures)
    eform = get_oracle("chgnet-eform", "cpu").predict(structures)
    refs = json.loads(ELEMENTAL_REFS_PATH.read_text())
    for i, s in enumerate(structures):
        direct = float(model.predict_structure(s, task="e")["e"])
        assert energy[i] == pytest.approx(direct, abs=1e-5)
        comp: Composition = s.composition
        ref = sum(n * refs[el] for el, n in comp.get_el_amt_dict().items()) / comp.num_atoms
        assert eform[i] == pytest.approx(direct - ref, abs=1e-5)
    # rock salt NaCl is strongly bound (DFT about -2.0 eV/atom)
    assert -2.4 < eform[0] < -1.6


# --- batching ---------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", MODEL_ORACLES)
def test_batched_equals_one_by_one(name: str, mp20_structures: list[Structure]) -> None:
    oracle = get_oracle(name, "cpu")
    batched = oracle.predict(mp20_structures, batch_size=4)  # two forward passes
    single = np.array([oracle.predict_one(s) for s in mp20_structures])
    assert np.isfinite(batched).all()
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODEL_ORACLES)
def test_isolated_atoms_are_unscored_not_a_crash(name: str) -> None:
    oracle = get_oracle(name, "cpu")
    values = oracle.predict([isolated_cs(), rock_salt()])
    assert math.isnan(values[0])
    # the unscorable structure does not disturb its batch neighbour
    assert values[1] == pytest.approx(oracle.predict_one(rock_salt()), abs=1e-6)


# --- exact oracles -----------------------------------------------------------------------------
def test_density_is_mass_over_volume() -> None:
    a = 5.69
    grams = 4 * (22.98977 + 35.453) / 6.02214076e23
    expected = grams / (a**3 * 1e-24)
    assert get_oracle("density", "cpu").predict_one(rock_salt(a)) == pytest.approx(expected, 1e-4)


def test_tolerance_factor_of_srtio3_and_non_perovskites() -> None:
    sto = Structure(
        Lattice.cubic(3.905),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )
    oracle = get_oracle("tolerance-factor", "cpu")
    # Shannon radii: Sr2+ (XII) 1.44, Ti4+ (VI) 0.605, O2- (VI) 1.40
    expected = (1.44 + 1.40) / (math.sqrt(2) * (0.605 + 1.40))
    assert oracle.predict_one(sto) == pytest.approx(expected, abs=1e-6)
    assert math.isnan(oracle.predict_one(rock_salt()))


def test_hhi_uses_pymatgen_production_data() -> None:
    from pymatgen.analysis.hhi import HHIModel

    value = get_oracle("hhi", "cpu").predict_one(rock_salt())
    assert value == pytest.approx(HHIModel().get_hhi_production("NaCl"))
    assert 0 < value < 10000


# --- relaxation ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_relaxation_shrinks_expanded_rock_salt_and_survives_isolated_atoms() -> None:
    from ml.oracles.relax import relax_crystals

    expanded = Crystal.from_structure(rock_salt(6.2).get_primitive_structure())
    bad = Crystal.from_structure(isolated_cs())
    good, failed = relax_crystals([expanded, bad], fmax=0.1, steps=200, device="cpu")
    assert good.converged and 0 < good.steps <= 200
    # primitive fcc: a_conv = sqrt(2) * a_prim; DFT/experiment 5.64-5.69 A
    a_conv = math.sqrt(2) * good.crystal.to_structure().lattice.a
    assert 5.55 < a_conv < 5.85
    static = get_oracle("chgnet-energy", "cpu").predict_one(rock_salt(6.2))
    assert good.energy_per_atom < static - 0.02  # relaxing lowered the energy
    assert math.isnan(failed.energy_per_atom) and not failed.converged
    np.testing.assert_allclose(failed.crystal.lattice, bad.lattice)
