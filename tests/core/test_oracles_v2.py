"""Oracles v2 (issue 11): the trained band-gap model, SevenNet, batched relaxation, MP2020
corrections, the stability tolerance and request-named oracles."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from pymatgen.core import Lattice, Structure

from ml.crystal import Crystal
from ml.methods.base import Candidate
from ml.pipeline import evaluate_candidates, stability_oracle
from ml.request import Constraints, DesignRequest

pytestmark = pytest.mark.slow


def rock_salt(a: float = 5.69) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0] * 3, [0.5] * 3])


def bcc_fe(a: float = 2.87) -> Structure:
    return Structure.from_spacegroup("Im-3m", Lattice.cubic(a), ["Fe"], [[0, 0, 0]])


# --- band-gap model ------------------------------------------------------------------------------
def test_gap_model_is_size_invariant_and_never_negative() -> None:
    """Random heads on the pretrained backbone: a supercell scores like its primitive cell
    (CHGNet's own crystal feature is a sum over atoms; ours is not) and no output is < 0."""
    from ml.oracles.chgnet import ChgnetGraphBuilder
    from ml.oracles.gap_model import GapModelConfig, GapNet, _chgnet_backbone

    torch.manual_seed(0)
    model = GapNet(_chgnet_backbone(), GapModelConfig()).eval()
    build = ChgnetGraphBuilder()
    conv = rock_salt()
    graphs = [build(conv.get_primitive_structure()), build(conv), build(bcc_fe() * (2, 1, 1))]
    with torch.no_grad():
        logit, gap = model(graphs)
        pred = model.predict(graphs)
    assert logit[0].item() == pytest.approx(logit[1].item(), abs=1e-4)
    assert gap[0].item() == pytest.approx(gap[1].item(), abs=1e-4)
    assert bool((gap >= 0).all()) and bool((pred >= 0).all())
    with torch.no_grad():  # batched equals one by one
        single = torch.cat([model.predict([g]) for g in graphs])
    torch.testing.assert_close(pred, single, atol=1e-5, rtol=0)


def test_trainer_writes_a_checkpoint_the_oracle_loads(tmp_path: Path) -> None:
    from ml.oracles.gap_model import load_gap_model
    from ml.training.train_gap import main

    out = tmp_path / "gap.pt"
    args = ["--device", "cpu", "--limit", "24", "--epochs", "3", "--freeze-backbone"]
    main([*args, "--workers", "1", "--batch", "16", "--out", str(out)])
    model, meta = load_gap_model(out, "cpu")
    assert meta["n_train"] + meta["n_holdout"] == 48 and "mae" in meta["holdout"]
    assert model.config.freeze_backbone


def test_shipped_gap_oracle_separates_an_insulator_from_a_metal() -> None:
    from ml.oracles.registry import get_oracle

    gaps = get_oracle("gap-chgnet-ft", "cpu").predict([rock_salt(), bcc_fe(), rock_salt() * 2])
    assert gaps[0] > 2.0  # DFT-PBE NaCl: 5.0 eV
    assert gaps[1] == 0.0
    assert gaps[2] == pytest.approx(gaps[0], abs=1e-4)


# --- SevenNet and MP2020 -----------------------------------------------------------------------
def test_mp2020_corrections() -> None:
    from ml.oracles.references import energy_correction, mp2020_correction

    assert mp2020_correction("Fe") == 0.0
    # Fe2O3 (GGA+U): oxide -0.687 eV/O and Fe U -2.256 eV/Fe, per atom.
    assert mp2020_correction("Fe2O3") == pytest.approx((3 * -0.687 + 2 * -2.256) / 5, abs=0.02)
    assert energy_correction("chgnet", "Fe2O3") == 0.0  # trained on corrected energies
    assert energy_correction("sevennet-0", "Fe2O3") == mp2020_correction("Fe2O3")


def test_sevennet_oracles_match_its_calculator_and_add_corrections() -> None:
    from sevenn.calculator import SevenNetCalculator

    from ml.oracles.references import load_elemental_refs, mp2020_correction
    from ml.oracles.registry import get_oracle

    structures = [rock_salt(), Structure(Lattice.hexagonal(5.04, 13.75), ["Fe"] * 2 + ["O"] * 3,
                                         [[0, 0, 0.355], [0, 0, 0.645], [0.306, 0, 0.25],
                                          [0, 0.306, 0.25], [0.694, 0.694, 0.25]])]  # fmt: skip
    energy = get_oracle("sevennet-0-energy", "cpu").predict(structures)
    calc = SevenNetCalculator("7net-0", device="cpu")
    for s, e in zip(structures, energy, strict=True):
        atoms = Crystal.from_structure(s).to_ase()
        atoms.calc = calc
        assert e == pytest.approx(atoms.get_potential_energy() / len(atoms), abs=1e-4)
    eform = get_oracle("sevennet-0-eform", "cpu").predict(structures)
    refs = load_elemental_refs("sevennet-0")
    comp = structures[1].composition
    expected = energy[1] + mp2020_correction("Fe2O3") - (2 * refs["Fe"] + 3 * refs["O"]) / 5
    assert eform[1] == pytest.approx(expected, abs=1e-6)
    assert comp.reduced_formula == "Fe2O3"


# --- batched relaxation --------------------------------------------------------------------------
def test_batched_fire_follows_ase_fire_on_a_unit_cell_filter() -> None:
    from ase.filters import UnitCellFilter
    from ase.optimize import FIRE
    from chgnet.model.dynamics import CHGNetCalculator

    from ml.oracles.batch_relax import fire_relax
    from ml.oracles.chgnet import ChgnetPotential, load_chgnet

    crystals = [
        Crystal.from_structure(rock_salt(6.1).get_primitive_structure()),
        Crystal.from_structure(bcc_fe(2.95)),
    ]
    batched = fire_relax(crystals, ChgnetPotential("cpu").efs, fmax=0.05, steps=200)
    calc = CHGNetCalculator(model=load_chgnet("cpu"), use_device="cpu")
    for crystal, res in zip(crystals, batched, strict=True):
        atoms = crystal.to_ase()
        atoms.calc = calc
        opt = FIRE(UnitCellFilter(atoms), logfile=None)
        assert opt.run(fmax=0.05, steps=200) and res.converged
        assert res.energy_per_atom == pytest.approx(
            atoms.get_potential_energy() / len(atoms), abs=2e-4
        )
        np.testing.assert_allclose(res.crystal.lengths, atoms.cell.lengths(), atol=2e-3)
        assert res.steps == pytest.approx(opt.nsteps, abs=2)


# --- stability (fix 3) ---------------------------------------------------------------------------
def test_relaxed_bcc_fe_is_stable() -> None:
    """Relaxed with the judge's protocol, the ground state of Fe lies on the hull (within the
    stated 5 meV/atom), where a 1e-6 tolerance called it unstable."""
    request = DesignRequest(method="t", constraints=Constraints(charge_neutral=False), relax=True)
    [fe] = evaluate_candidates([Candidate(Crystal.from_structure(bcc_fe(2.90)))], request)
    assert fe.relaxed is not None and fe.meta["energy_model"] == "chgnet"
    assert fe.energy_above_hull is not None and abs(fe.energy_above_hull) < 0.005
    assert fe.flags["stable"] and fe.flags["metastable"]


# --- request-named oracles -----------------------------------------------------------------------
def test_request_names_oracles_and_scores_name_them() -> None:
    request = DesignRequest(
        method="t",
        constraints=Constraints(charge_neutral=False),
        relax=False,
        oracles={"band_gap": "megnet-gap-pbe", "formation_energy": "sevennet-0-eform"},
    )
    assert stability_oracle(request) == "chgnet-energy"
    [nacl] = evaluate_candidates([Candidate(Crystal.from_structure(rock_salt()))], request)
    assert nacl.scores["band_gap"].oracle == "megnet-gap-pbe"
    assert nacl.scores["formation_energy"].oracle == "sevennet-0-eform"
    assert nacl.scores["energy_above_hull"].oracle == "chgnet-energy"
    assert "unrelaxed" in nacl.scores["energy_above_hull"].version
    assert math.isfinite(nacl.scores["formation_energy"].value or math.nan)


@pytest.mark.parametrize(
    ("oracles", "message"),
    [
        ({"band_gap": "no-such"}, "oracles.band_gap: unknown oracle"),
        ({"band_gap": "chgnet-eform"}, "predicts formation_energy, not band_gap"),
        ({"energy_above_hull": "megnet-eform"}, "judged by an energy oracle"),
        ({"energy_above_hull": "sevennet-0-energy"}, "no reference hull"),
        ({"viscosity": "density"}, "unknown property"),
    ],
)
def test_request_rejects_unusable_oracles(oracles: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DesignRequest(method="t", oracles=oracles)


def test_sevennet_passes_are_bounded_by_edges_and_items():
    """Big cells are split across forward passes (an H200 ran out of memory on 256 of them)."""
    import numpy as np
    import sevenn._keys as KEY

    from ml.oracles.sevennet import _edge_bounded_chunks

    graphs = [{KEY.EDGE_IDX: np.zeros((2, e))} for e in (50, 50, 80, 10, 200, 5)]
    chunks = _edge_bounded_chunks(graphs, list(range(6)), max_items=2, max_edges=100)
    assert chunks == [[0, 1], [2, 3], [4], [5]]
    assert sorted(i for c in chunks for i in c) == list(range(6))


def test_gpu_judge_is_sevennet_l3i5_and_formation_energy_follows_it() -> None:
    """On a GPU SevenNet-l3i5 judges stability and formation energy from the same energies;
    on a CPU CHGNet does; a request's named oracles win either way (no GPU needed here)."""
    from ml.oracles.registry import default_stability_oracle
    from ml.pipeline import oracle_plan

    assert default_stability_oracle("cuda") == "sevennet-l3i5-energy"
    assert default_stability_oracle("cpu") == "chgnet-energy"
    plain = DesignRequest(method="t")
    gpu = DesignRequest(method="t")
    assert stability_oracle(gpu, "cuda") == "sevennet-l3i5-energy"
    assert oracle_plan(plain, "sevennet-l3i5-energy")["formation_energy"] == "sevennet-l3i5-eform"
    assert oracle_plan(plain, "chgnet-energy")["formation_energy"] == "chgnet-eform"
    named = DesignRequest(
        method="t",
        oracles={"energy_above_hull": "chgnet-energy", "formation_energy": "sevennet-0-eform"},
    )
    assert stability_oracle(named, "cuda") == "chgnet-energy"
    assert oracle_plan(named, "sevennet-l3i5-energy")["formation_energy"] == "sevennet-0-eform"


def test_sevennet_l3i5_hull_judges_a_known_crystal_near_zero() -> None:
    """The committed SevenNet-l3i5 hull table: rock salt NaCl, a hull vertex, sits on it."""
    request = DesignRequest(
        method="t",
        constraints=Constraints(charge_neutral=False),
        relax=False,
        oracles={"energy_above_hull": "sevennet-l3i5-energy"},
    )
    [nacl] = evaluate_candidates([Candidate(Crystal.from_structure(rock_salt()))], request)
    assert nacl.scores["energy_above_hull"].oracle == "sevennet-l3i5-energy"
    assert nacl.scores["formation_energy"].oracle == "sevennet-l3i5-eform"
    assert abs(nacl.energy_above_hull) < 0.02
