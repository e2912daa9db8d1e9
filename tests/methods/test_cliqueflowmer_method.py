"""The ``cliqueflowmer`` method on CPU with a tiny checkpoint, and the training CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from ml.methods.base import Cancelled, Candidate, MethodContext, Progress, RequestError
from ml.methods.cliqueflowmer.checkpoint import export_checkpoint, load_checkpoint
from ml.methods.cliqueflowmer.config import tiny_config
from ml.methods.cliqueflowmer.geometry import LengthPrior
from ml.methods.cliqueflowmer.method import CliqueFlowmerMethod, CliqueFlowmerParams, select_target
from ml.methods.cliqueflowmer.model import CliqueFlowmer
from ml.methods.cliqueflowmer.seeds import choose_seeds
from ml.methods.registry import get_method
from ml.request import Constraints, DesignRequest, ElementConstraints

FAST = {"steps": 4, "euler_steps": 3, "beam_width": 2, "n_seeds": 8}


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    prior = LengthPrior(mu=np.array([0.86, 0.98, 1.23]), sigma=np.array([0.24, 0.2, 0.27]))
    model = CliqueFlowmer(tiny_config(), prior)
    model.set_label_stats(-1.3, 1.0)
    export_checkpoint(model, d / "cliqueflowmer_eform.pt", "formation_energy", {"test": True})
    return d


def _request(**kw: object) -> DesignRequest:
    base: dict[str, object] = {
        "method": "cliqueflowmer",
        "objectives": [{"property": "formation_energy", "goal": "minimize"}],
        "constraints": {
            "elements": {"allowed": ["Li", "Fe", "P", "O", "Mn"]},
            "max_atoms": 10,
            "charge_neutral": False,
        },
        "num_candidates": 3,
        "seed": 5,
        "params": FAST,
    }
    base.update(kw)
    return DesignRequest.model_validate(base)


def _run(
    method: CliqueFlowmerMethod, request: DesignRequest
) -> tuple[list[Progress], list[Candidate]]:
    params = method.validate(request)
    progress: list[Progress] = []
    cands: list[Candidate] = []
    for event in method.run(request, params, MethodContext(device="cpu")):
        if isinstance(event, Progress):
            progress.append(event)
        else:
            cands.extend(event)
    return progress, cands


def test_registered_under_its_name() -> None:
    method = get_method("cliqueflowmer")
    assert isinstance(method, CliqueFlowmerMethod)
    assert method.describe()["name"] == "cliqueflowmer"


def test_method_streams_progress_and_constrained_candidates(weights_dir: Path) -> None:
    method = CliqueFlowmerMethod(weights_dir=weights_dir)
    progress, cands = _run(method, _request())
    phases = [p.phase for p in progress]
    assert phases[0] == "load" and "encode" in phases and phases[-1] == "decode"
    opt = [p for p in progress if p.phase == "optimize"]
    assert opt[-1].step == opt[-1].total == FAST["steps"] and opt[-1].best is not None
    assert len(cands) == 3
    allowed = {"Li", "Fe", "P", "O", "Mn"}
    for c in cands:
        assert set(c.crystal.species) <= allowed
        assert 1 <= c.crystal.num_atoms <= 10
        assert set(c.predicted) == {"formation_energy"}
        assert np.isfinite(c.predicted["formation_energy"])
        assert c.meta["seed_material_id"].startswith("mp-")
        c.crystal.to_structure()
    scores = [c.method_score for c in cands]
    assert scores == sorted(scores)  # best predicted first


def test_same_seed_same_candidates(weights_dir: Path) -> None:
    method = CliqueFlowmerMethod(weights_dir=weights_dir)
    _, a = _run(method, _request())
    _, b = _run(method, _request())
    assert [c.crystal.to_cif() for c in a] == [c.crystal.to_cif() for c in b]


def test_backprop_variant_and_target_goal(weights_dir: Path) -> None:
    method = CliqueFlowmerMethod(weights_dir=weights_dir)
    req = _request(
        objectives=[{"property": "formation_energy", "goal": "target", "value": -2.0}],
        params={**FAST, "optimizer": "backprop"},
    )
    _, cands = _run(method, req)
    assert len(cands) == 3
    for c in cands:
        assert c.method_score == pytest.approx(abs(c.predicted["formation_energy"] + 2.0), abs=1e-4)


def test_objectives_map_onto_checkpoints(weights_dir: Path) -> None:
    method = CliqueFlowmerMethod(weights_dir=weights_dir)
    params = CliqueFlowmerParams()
    # A property with no checkpoint: 422 naming the field.
    with pytest.raises(RequestError) as err:
        method.validate(_request(objectives=[{"property": "band_gap", "goal": "minimize"}]))
    assert err.value.field == "objectives[0].property"
    with pytest.raises(RequestError) as err:
        method.validate(_request(params={"property": "band_gap"}))
    assert err.value.field == "params.property"
    with pytest.raises(RequestError) as err:
        method.validate(_request(objectives=[]))
    assert err.value.field == "objectives"
    with pytest.raises(ValidationError):
        method.validate(_request(params={"no_such_knob": 1}))
    # The first objective with a checkpoint is optimised; "below" minimises.
    req = _request(
        objectives=[
            {"property": "density", "goal": "maximize"},
            {"property": "formation_energy", "goal": "below", "value": -0.5},
        ]
    )
    target = select_target(req, params, ["formation_energy"], lambda s: ["formation_energy"])
    assert target.space == "formation_energy" and target.unmapped == ["density"]
    p = target.primary
    assert (p.property, p.goal, p.value, p.objective_index) == (
        "formation_energy",
        "below",
        -0.5,
        1,
    )
    gap = _request(
        objectives=[{"property": "band_gap", "goal": "target", "value": 1.5, "fidelity": "hse"}]
    )
    with pytest.raises(RequestError) as err:
        select_target(gap, params, ["band_gap"], lambda s: ["band_gap"])
    assert err.value.field == "objectives[0].fidelity"


def test_cancellation_stops_the_run(weights_dir: Path) -> None:
    method = CliqueFlowmerMethod(weights_dir=weights_dir)
    req = _request()
    params = method.validate(req)
    ctx = MethodContext(device="cpu", should_cancel=lambda: True)
    with pytest.raises(Cancelled):
        for _ in method.run(req, params, ctx):
            pass


def test_seeds_follow_element_constraints() -> None:
    rng = np.random.default_rng(0)
    cons = Constraints(
        elements=ElementConstraints(allowed=["Li", "Fe", "P", "O"], required=["O"]), max_atoms=8
    )
    crystals, ids = choose_seeds(cons, 5, 8, rng)
    assert len(crystals) == len(ids) == 5
    for c in crystals:
        assert set(c.species) <= {"Li", "Fe", "P", "O"} and "O" in c.species
        assert c.num_atoms <= 8


def test_training_cli_runs_resumes_and_exports(tmp_path: Path) -> None:
    from ml.methods.cliqueflowmer.train import main

    out, work = tmp_path / "cf.pt", tmp_path / "run"
    common = [
        "--property",
        "band_gap",
        "--labels",
        "dft",
        "--out",
        str(out),
        "--work-dir",
        str(work),
        "--tiny",
        "--limit",
        "12",
        "--batch-size",
        "8",
        "--log-every",
        "2",
        "--eval-size",
        "6",
        "--device",
        "cpu",
    ]
    meta = main([*common, "--steps", "3"])
    assert meta["steps"] == 3
    meta = main([*common, "--steps", "5", "--resume"])
    assert meta["steps"] == 5  # continued from step 3, not restarted
    model, info = load_checkpoint(out)
    assert info["property"] == "band_gap" and info["meta"]["labels"] == "dft"
    assert np.isfinite(info["meta"]["final_losses"]["loss"])
    assert out.stat().st_size < 16 * 2**20
    assert float(model.len_sigma.min()) > 0


def test_init_from_another_property_reuses_the_autoencoder_only(tmp_path: Path) -> None:
    from ml.methods.cliqueflowmer.train import init_from_checkpoint

    cfg = tiny_config()
    torch.manual_seed(0)
    source = CliqueFlowmer(cfg, LengthPrior.default())
    source.set_label_stats(-1.2, 1.0)
    path = tmp_path / "eform.pt"
    export_checkpoint(source, path, "formation_energy", {"steps": 7, "train_seconds": 3.0})
    exported, _ = load_checkpoint(path)  # what the file holds (bf16-rounded)

    torch.manual_seed(1)
    target = CliqueFlowmer(cfg, LengthPrior.default())
    target.set_label_stats(0.6, 1.1)
    fresh_predictor = {k: v.clone() for k, v in target.state_dict().items() if "predictor" in k}
    info = init_from_checkpoint(target, path, "band_gap")

    assert info["steps"] == 7 and info["property"] == "formation_energy"
    got, src = target.state_dict(), exported.state_dict()
    shared = [k for k in got if k.startswith(("encoder.", "atom_decoder.", "flow."))]
    assert shared and all(torch.equal(got[k], src[k]) for k in shared)
    assert all(torch.equal(got[k], v) for k, v in fresh_predictor.items())
    assert float(target.y_mean) == pytest.approx(0.6) and float(target.y_std) == pytest.approx(1.1)

    same = CliqueFlowmer(cfg, LengthPrior.default())
    init_from_checkpoint(same, path, "formation_energy")
    pred = [k for k in same.state_dict() if k.startswith("predictor.")]
    assert pred and all(torch.equal(same.state_dict()[k], src[k]) for k in pred)
