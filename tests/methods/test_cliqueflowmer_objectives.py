"""CliqueFlowmer objectives: each request goal maps onto the right predictor with the right sign,
the formation-energy penalty appears only when asked for, and predictions keep their names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ml.methods.base import Candidate, MethodContext, RequestError
from ml.methods.cliqueflowmer.checkpoint import (
    available_properties,
    cached_space,
    export_checkpoint,
    latent_predictors,
)
from ml.methods.cliqueflowmer.config import tiny_config
from ml.methods.cliqueflowmer.geometry import LengthPrior
from ml.methods.cliqueflowmer.heads import HeadSpec, LatentHead, heads_path, load_heads, save_heads
from ml.methods.cliqueflowmer.method import CliqueFlowmerMethod, CliqueFlowmerParams, select_target
from ml.methods.cliqueflowmer.model import CliqueFlowmer
from ml.methods.cliqueflowmer.objectives import Term, latent_objective, term_loss
from ml.methods.cliqueflowmer.optimizer import LatentOptimiser, OptimiserSettings, es_gradient
from ml.request import DesignRequest

FAST = {"steps": 4, "euler_steps": 3, "beam_width": 2, "n_seeds": 8}
GAP_SPACE = ["band_gap_regularized", "band_gap", "formation_energy"]


def _req(objectives: list[dict[str, object]], **params: object) -> DesignRequest:
    return DesignRequest.model_validate(
        {
            "method": "cliqueflowmer",
            "objectives": objectives,
            "constraints": {
                "elements": {"allowed": ["Li", "Fe", "P", "O", "Mn"]},
                "max_atoms": 10,
                "charge_neutral": False,
            },
            "num_candidates": 3,
            "seed": 5,
            "params": {**FAST, **params},
        }
    )


def _select(objectives: list[dict[str, object]], **params: object):  # type: ignore[no-untyped-def]
    req = _req(objectives, **params)
    spaces = {
        "band_gap": GAP_SPACE,
        "band_gap_regularized": GAP_SPACE,
        "formation_energy": ["formation_energy"],
    }
    return select_target(
        req,
        CliqueFlowmerParams.model_validate(req.params),
        ["formation_energy", "band_gap", "band_gap_regularized"],
        spaces.__getitem__,
    )


# ---------------------------------------------------------------- mapping of goals


@pytest.mark.parametrize(
    ("objective", "goal", "value"),
    [
        ({"property": "band_gap", "goal": "maximize"}, "maximize", None),
        ({"property": "band_gap", "goal": "minimize"}, "minimize", None),
        ({"property": "band_gap", "goal": "target", "value": 1.5, "tolerance": 0.2}, "target", 1.5),
        ({"property": "band_gap", "goal": "above", "value": 2.0}, "above", 2.0),
        ({"property": "band_gap", "goal": "below", "value": 0.5}, "below", 0.5),
    ],
)
def test_band_gap_goals_use_the_plain_gap_alone(
    objective: dict[str, object], goal: str, value: float | None
) -> None:
    target = _select([objective])
    assert target.space == "band_gap"
    # One term, on the plain gap: no formation-energy penalty the request did not ask for.
    assert target.terms == [Term("band_gap", goal, value, 1.0, 0)]  # type: ignore[arg-type]


def test_formation_energy_objective_adds_its_own_term() -> None:
    target = _select(
        [
            {"property": "band_gap", "goal": "target", "value": 1.5},
            {"property": "formation_energy", "goal": "below", "value": -0.5, "weight": 2.0},
            {"property": "density", "goal": "maximize"},
        ]
    )
    assert [(t.property, t.goal, t.weight) for t in target.terms] == [
        ("band_gap", "target", 1.0),
        ("formation_energy", "below", 2.0),
    ]
    assert target.unmapped == ["density"]


def test_regularised_gap_only_when_asked_for() -> None:
    gap_min = [{"property": "band_gap", "goal": "minimize"}]
    target = _select(gap_min, property="band_gap_regularized")
    assert target.space == "band_gap_regularized"
    assert target.terms == [Term("band_gap_regularized", "minimize", None, 1.0, 0)]
    # With no band_gap objective the paper's protocol minimises it.
    target = _select(
        [{"property": "formation_energy", "goal": "minimize"}], property="band_gap_regularized"
    )
    assert target.primary.property == "band_gap_regularized"
    assert target.primary.goal == "minimize"
    assert [t.property for t in target.terms[1:]] == ["formation_energy"]


def test_gap_objective_without_a_gap_predictor_is_left_to_the_oracles() -> None:
    target = _select(
        [
            {"property": "formation_energy", "goal": "minimize"},
            {"property": "band_gap", "goal": "above", "value": 1.0},
        ]
    )
    assert target.space == "formation_energy"
    assert [t.property for t in target.terms] == ["formation_energy"]
    assert target.unmapped == ["band_gap"]


def test_non_pbe_gap_objective_is_rejected_naming_the_field() -> None:
    with pytest.raises(RequestError) as err:
        _select([{"property": "band_gap", "goal": "maximize", "fidelity": "hse"}])
    assert err.value.field == "objectives[0].fidelity"


# ---------------------------------------------------------------- signs of the terms


def test_term_losses_have_the_right_sign() -> None:
    f = torch.tensor([0.0, 1.0, 1.5, 2.0, 3.0])

    def loss(goal: str, value: float | None = None) -> list[float]:
        return term_loss(Term("band_gap", goal, value, 1.0, 0), f).tolist()  # type: ignore[arg-type]

    assert loss("minimize") == f.tolist()
    assert loss("maximize") == (-f).tolist()
    assert loss("target", 1.5) == pytest.approx([1.5, 0.5, 0.0, 0.5, 1.5])
    # Thresholds aim inside by the default band (0.2 for 2.0, 0.1 for 0.5): zero once met.
    assert loss("above", 2.0) == pytest.approx([2.2, 1.2, 0.7, 0.2, 0.0])
    assert loss("below", 0.5) == pytest.approx([0.0, 0.6, 1.1, 1.6, 2.6])


def test_maximise_gap_ignores_the_regularised_predictor() -> None:
    # Fakes: z[0] is the plain gap; the regularised one rewards z[1] (the "Eform") 20-fold.
    predictors = {
        "band_gap": lambda z: z[..., 0],
        "band_gap_regularized": lambda z: z[..., 0] + 20 * torch.relu(z[..., 1]),
        "formation_energy": lambda z: z[..., 1],
    }
    g = latent_objective([Term("band_gap", "maximize", None, 1.0, 0)], predictors)
    z = torch.tensor([[1.0, 0.0], [1.0, 5.0], [2.0, -1.0]])
    assert g(z).tolist() == [-1.0, -1.0, -2.0]
    both = latent_objective(
        [
            Term("band_gap", "maximize", None, 1.0, 0),
            Term("formation_energy", "below", -0.5, 1.0, 1),
        ],
        predictors,
    )
    assert both(z).tolist() == pytest.approx([-1.0 + 0.6, -1.0 + 5.6, -2.0])
    with pytest.raises(KeyError):
        latent_objective([Term("density", "maximize", None, 1.0, 0)], predictors)


def test_es_climbs_the_plain_gap_and_stays_put_once_a_threshold_is_met() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(8, generator=gen)
    predictors = {"band_gap": lambda z: z @ w}
    z0 = torch.zeros(16, 8)
    g = latent_objective([Term("band_gap", "maximize", None, 1.0, 0)], predictors)
    opt = LatentOptimiser(g, z0, OptimiserSettings(lr=0.05, weight_decay=0.0), gen)
    for _ in range(30):
        opt.step()
    assert float((opt.latents @ w).mean()) > 1.0
    # Every pair ties (the threshold is met everywhere): no direction, no step.
    met = latent_objective([Term("band_gap", "above", -100.0, 1.0, 0)], predictors)
    assert torch.count_nonzero(es_gradient(met, torch.randn(4, 8), 8, 0.1, gen)) == 0


# ---------------------------------------------------------------- heads and the method


def _tiny_model(seed: int) -> CliqueFlowmer:
    torch.manual_seed(seed)
    prior = LengthPrior(mu=np.array([0.86, 0.98, 1.23]), sigma=np.array([0.24, 0.2, 0.27]))
    model = CliqueFlowmer(tiny_config(), prior)
    model.set_label_stats(5.0, 1.0)  # the "regularised" labels sit far from the gaps
    return model


@pytest.fixture(scope="module")
def gap_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("gapweights")
    ckpt = d / "cliqueflowmer_bandgap.pt"
    export_checkpoint(_tiny_model(0), ckpt, "band_gap", {"test": True})
    cfg = tiny_config()
    torch.manual_seed(1)
    gap, eform = LatentHead(cfg), LatentHead(cfg)
    gap.y_mean.fill_(1.0)
    eform.y_mean.fill_(-1.0)
    save_heads(
        heads_path(ckpt),
        ckpt,
        cfg,
        {"band_gap": HeadSpec(gap, "gap", {}), "formation_energy": HeadSpec(eform, "eform", {})},
    )
    return d


def test_heads_are_tied_to_their_checkpoint(gap_weights: Path, tmp_path: Path) -> None:
    ckpt = gap_weights / "cliqueflowmer_bandgap.pt"
    heads = load_heads(ckpt)
    assert set(heads) == {"band_gap", "formation_energy"}
    assert latent_predictors("band_gap", gap_weights) == GAP_SPACE
    assert available_properties(gap_weights) == ["band_gap", "band_gap_regularized"]
    # The same heads beside another checkpoint (other weights, other latents) are dropped.
    other = tmp_path / "cliqueflowmer_bandgap.pt"
    export_checkpoint(_tiny_model(2), other, "band_gap", {"test": True})
    heads_path(other).write_bytes(heads_path(ckpt).read_bytes())
    assert load_heads(other) == {}
    # Without a plain-gap head a band_gap objective has no predictor: 422, not the y head.
    heads_path(other).unlink()
    assert available_properties(tmp_path) == ["band_gap_regularized"]
    method = CliqueFlowmerMethod(weights_dir=tmp_path)
    with pytest.raises(RequestError) as err:
        method.validate(_req([{"property": "band_gap", "goal": "maximize"}]))
    assert err.value.field == "objectives[0].property"


def _candidates(method: CliqueFlowmerMethod, req: DesignRequest) -> list[Candidate]:
    params = method.validate(req)
    out: list[Candidate] = []
    for event in method.run(req, params, MethodContext(device="cpu")):
        if isinstance(event, list):
            out.extend(event)
    return out


def test_method_reports_the_plain_gap_under_band_gap(gap_weights: Path) -> None:
    method = CliqueFlowmerMethod(weights_dir=gap_weights)
    req = _req([{"property": "band_gap", "goal": "target", "value": 1.5, "tolerance": 0.2}])
    cands = _candidates(method, req)
    assert len(cands) == 3
    _, _, predictors = cached_space("band_gap", gap_weights, "cpu")
    for c in cands:
        assert set(c.predicted) == set(GAP_SPACE)
        gap, y = c.predicted["band_gap"], c.predicted["band_gap_regularized"]
        assert gap >= 0.0 and abs(gap - y) > 1.0  # the head's gap, not y (labels near 5)
        assert c.meta["objective_terms"] == ["band_gap:target"]
        assert c.meta["latent_space"] == "cliqueflowmer_bandgap.pt"
    assert predictors["band_gap"] is not predictors["band_gap_regularized"]
    # The search minimised |gap - 1.5|; the score says so (raw head, gap >= 0.5 here).
    scores = [c.method_score for c in cands]
    assert scores == sorted(scores)
    for c in cands:
        if c.predicted["band_gap"] > 0:
            assert c.method_score == pytest.approx(abs(c.predicted["band_gap"] - 1.5), abs=1e-4)


def test_heads_cli_fits_and_writes_a_small_file(gap_weights: Path, tmp_path: Path) -> None:
    from ml.methods.cliqueflowmer.train_heads import main

    ckpt = tmp_path / "cliqueflowmer_bandgap.pt"
    ckpt.write_bytes((gap_weights / "cliqueflowmer_bandgap.pt").read_bytes())
    report = main(
        [
            "--checkpoint",
            str(ckpt),
            "--heads",
            "band_gap",
            "--latents",
            str(tmp_path / "lat.npz"),
            "--limit",
            "12",
            "--steps",
            "30",
            "--batch-size",
            "16",
        ]
    )
    assert (tmp_path / "lat.npz").is_file()
    m = report["heads"]["band_gap"]["test"]
    assert m["n"] > 0 and np.isfinite(m["mae"])
    assert report["bytes"] < 2**20
    assert set(load_heads(ckpt)) == {"band_gap"}
