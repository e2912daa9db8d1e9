"""MatInvent: rewards from objectives, the diversity filter, the template grammar, the RL
loop on a toy reward, and a tiny ``matinvent`` job through the method interface (tiny
untrained Wyckoff flow + tiny policy fitted to a few MP-20 templates, on the CPU)."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from ml.data import load_records
from ml.generative.assignment import TemplateStats
from ml.generative.wyckoff import WyckoffCrystal, _group, multiplicity, orbit_ops
from ml.methods.base import MethodContext, Progress, RequestError
from ml.methods.conditional.checkpoint import save_wyckoff_release
from ml.methods.conditional.wyckoff_data import from_crystals
from ml.methods.conditional.wyckoff_model import WyckoffFlowModel, WyckoffModelConfig
from ml.methods.matinvent import method as method_mod
from ml.methods.matinvent.checkpoint import load_prior, save_prior
from ml.methods.matinvent.method import MatInventMethod
from ml.methods.matinvent.policy import PolicyConfig, TemplatePolicy, sample, sequence_terms
from ml.methods.matinvent.rl import DiversityFilter, MatInventLoop, Outcome, RLConfig
from ml.methods.matinvent.tokens import (
    decode,
    encode,
    limits_for,
    pad,
    replay,
    template_counts,
)
from ml.methods.rewards import objective_reward, request_reward
from ml.request import DesignRequest, Objective
from ml.symmetry import centring

warnings.filterwarnings("ignore")


# --- rewards and the diversity filter ------------------------------------------------------
def test_reward_is_one_inside_a_target_band_and_falls_outside() -> None:
    gap = Objective(property="band_gap", goal="target", value=3.0, tolerance=0.25)
    assert objective_reward(gap, 3.0) == 1.0
    assert objective_reward(gap, 2.76) == objective_reward(gap, 3.24) == 1.0
    above = [objective_reward(gap, v) for v in (3.3, 3.8, 4.5, 6.0)]
    below = [objective_reward(gap, v) for v in (2.7, 2.2, 1.5, 0.0)]
    for side in (above, below):
        assert all(0.0 < r < 1.0 for r in side[:3])
        assert side == sorted(side, reverse=True) and side[0] > side[-1]
    assert objective_reward(gap, 3.6) == pytest.approx(objective_reward(gap, 2.4))
    assert objective_reward(gap, None) == 0.0 and objective_reward(gap, float("nan")) == 0.0
    # Thresholds: 1 on the right side, falling on the wrong side.
    eform = Objective(property="formation_energy", goal="below", value=-2.5)
    assert objective_reward(eform, -3.0) == 1.0
    assert 0.0 < objective_reward(eform, -2.0) < 1.0
    assert objective_reward(eform, -1.0) < objective_reward(eform, -2.0)
    # Minimize: lower is better, always inside (0, 1).
    hhi = Objective(property="hhi", goal="minimize")
    assert 1.0 > objective_reward(hhi, 800.0) > objective_reward(hhi, 5000.0) > 0.0


def test_several_objectives_combine_by_mean_min_or_product() -> None:
    objs = [
        Objective(property="band_gap", goal="target", value=3.0, tolerance=0.25),
        Objective(property="density", goal="above", value=5.0, weight=3.0),
    ]
    values = {"band_gap": 3.0, "density": 4.0}
    r_density = objective_reward(objs[1], 4.0)
    assert 0.0 < r_density < 1.0
    assert request_reward(objs, values, "mean") == pytest.approx((1.0 + 3.0 * r_density) / 4.0)
    assert request_reward(objs, values, "min") == pytest.approx(r_density)
    assert request_reward(objs, values, "product") == pytest.approx(r_density**0.75)
    assert request_reward(objs, {"band_gap": 3.0}, "product") == 0.0  # unscored density


def test_diversity_filter_zeroes_a_composition_past_its_tolerance() -> None:
    df = DiversityFilter(tolerance=2, buffer=4)
    rewards = [df.apply("NaCl", 0.8) for _ in range(6)]
    # Occurrences before each: 0, 1, 2 (full), 3 (half way to the buffer), 4, 5 (zero).
    assert rewards == pytest.approx([0.8, 0.8, 0.8, 0.4, 0.0, 0.0])
    assert df.apply("KCl", 0.8) == 0.8  # other compositions keep their reward
    with pytest.raises(ValueError, match="buffer"):
        DiversityFilter(tolerance=3, buffer=3)


# --- grammar and policy ---------------------------------------------------------------------
def tiny_policy(seed: int = 0, **kw: int) -> TemplatePolicy:
    torch.manual_seed(seed)
    return TemplatePolicy(PolicyConfig(d_model=32, hidden=32, layers=1, dropout=0.0, **kw))


def test_sampled_sequences_are_legal_templates_within_the_limits() -> None:
    policy = tiny_policy()
    limits = limits_for(6, 4, ["Na", "Mg", "O", "Cl"], excluded=["Cl"], space_groups=[225, 221])
    seqs = sample(policy, 64, limits, torch.Generator().manual_seed(0))
    templates = [decode(s) for s in seqs]
    assert all(t is not None for t in templates)
    for sg, orbits in templates:  # type: ignore[misc]
        assert sg in (225, 221) and 1 <= len(orbits) <= 4
        assert {z for _, z in orbits} <= {11, 12, 8}
        assert sum(multiplicity(sg, x) for x, _ in orbits) <= 6 * centring(sg)
        fixed = [x for x, _ in orbits if not orbit_ops(sg, x)[2].any()]
        assert len(fixed) == len(set(fixed))  # a position without freedom holds one orbit
    # Required elements: a template ends without them only when nothing more fits.
    need = limits_for(6, 4, ["Na", "Mg", "O", "Cl"], required=["Cl"], space_groups=[225, 221])
    for sg, orbits in map(decode, sample(policy, 32, need, torch.Generator().manual_seed(1))):  # type: ignore[misc]
        if 17 in {z for _, z in orbits}:
            continue
        used = {x for x, _ in orbits}
        room = 6 * centring(sg) - sum(multiplicity(sg, x) for x, _ in orbits)
        fits = [
            wp.letter
            for wp in _group(sg)
            if multiplicity(sg, wp.letter) <= room
            and (orbit_ops(sg, wp.letter)[2].any() or wp.letter not in used)
        ]
        assert len(orbits) == 4 or not fits, (sg, orbits)
    # The likelihood of the samples is finite and a policy has no KL to itself.
    loglik, kl = sequence_terms(policy, pad(seqs), limits, prior=policy)
    assert torch.isfinite(loglik).all() and (loglik < 0).all()
    assert kl is not None and float(kl.abs().max()) < 1e-5


def test_real_templates_round_trip_through_tokens() -> None:
    for r in load_records("mp20", "test", limit=6):
        w = WyckoffCrystal.from_crystal(r.crystal)
        orbits = [(o.letter, o.number) for o in w.orbits]
        sg, back = decode(encode(w.space_group, orbits))  # type: ignore[misc]
        assert sg == w.space_group and Counter(back) == Counter(orbits)
        counts = template_counts(sg, back)
        assert sum(counts.values()) * 1 == r.crystal.num_atoms


# --- the RL loop on a toy reward ------------------------------------------------------------
def _oxygen_fraction(samples, it, left):  # type: ignore[no-untyped-def]
    """Toy evaluator: every template is scored; value = fraction of orbits that are oxygen."""
    out = []
    for k, s in enumerate(samples):
        if s.template is None or k >= left:
            out.append(Outcome())
            continue
        orbits = s.template[1]
        frac = sum(z == 8 for _, z in orbits) / len(orbits)
        out.append(
            Outcome(
                scored=True,
                values={"o": frac},
                valid=True,
                judged=True,
                unique=True,
                survived=True,
                hit=frac >= 0.5,
                objective_loss=1.0 - frac,
            )
        )
    return out


def _mean_toy_reward(policy: TemplatePolicy, limits, seed: int) -> float:  # type: ignore[no-untyped-def]
    seqs = sample(policy, 128, limits, torch.Generator().manual_seed(seed))
    fr = []
    for t in map(decode, seqs):
        fr.append(0.0 if t is None else sum(z == 8 for _, z in t[1]) / len(t[1]))
    return float(np.mean(fr))


def test_rl_steps_raise_the_mean_reward_on_a_toy_reward() -> None:
    prior = tiny_policy(max_orbits=3, max_atoms=6)
    frozen = [p.detach().clone() for p in prior.parameters()]
    limits = prior.limits()
    cfg = RLConfig(batch_size=16, iterations=5, oracle_call_budget=10_000, learning_rate=2e-2)
    loop = MatInventLoop(prior, limits, cfg, lambda v: float(v["o"]), _oxygen_fraction, seed=0)
    history = [stats for stats, _ in loop.iterations()]
    assert len(history) == 5
    before = _mean_toy_reward(prior, limits, 1)
    after = _mean_toy_reward(loop.agent, limits, 1)
    assert after > before + 0.3, (before, after)
    assert history[-1].kl is not None and history[-1].kl > 0  # it moved away from the prior
    # The prior is frozen: the agent is the job's own copy.
    assert all(torch.equal(a, b) for a, b in zip(frozen, prior.parameters(), strict=True))


def test_same_seed_same_templates_and_crystals(weights: dict[str, Path]) -> None:
    from ml.methods.conditional.checkpoint import load_wyckoff_release
    from ml.methods.matinvent.evaluate import PipelineEvaluator

    prior, _ = load_prior(weights["prior"])
    flow, _, _ = load_wyckoff_release(weights["flow"])
    cfg = RLConfig(batch_size=6)
    draws = [
        MatInventLoop(prior, prior.limits(), cfg, len, _oxygen_fraction, seed=5).draw(6)
        for _ in range(2)
    ]
    assert draws[0] == draws[1]
    templates = [s.template for s in draws[0] if s.template is not None]
    request = _request()
    a, b = (PipelineEvaluator(request, flow, "cpu", flow_steps=3, seed=5) for _ in range(2))
    coords = [[c.frac_coords.tolist() for c in e.crystals(templates, 2)] for e in (a, b)]
    assert coords[0] == coords[1]
    assert coords[0] != [c.frac_coords.tolist() for c in a.crystals(templates, 3)]


def test_budget_ends_the_loop_and_every_scored_sample_is_counted() -> None:
    prior = tiny_policy(max_orbits=4, max_atoms=8)
    cfg = RLConfig(batch_size=16, iterations=100, oracle_call_budget=50, learn=False)
    loop = MatInventLoop(prior, prior.limits(), cfg, lambda v: float(v["o"]), _oxygen_fraction)
    seen = [(stats, hits) for stats, hits in loop.iterations()]
    assert [s.oracle_calls for s, _ in seen] == [16, 32, 48, 50]
    summary = loop.summary()
    hits = sum(len(h) for _, h in seen)
    assert summary["oracle_calls"] == 50 and summary["unique_hits"] == hits
    assert summary["burden"] == (round(50 / hits, 3) if hits else None)
    assert summary["curves"]["oracle_calls"] == [16, 32, 48, 50]
    # learn=False: the agent stays the prior (the baseline).
    assert all(
        torch.equal(a, b) for a, b in zip(loop.agent.parameters(), prior.parameters(), strict=True)
    )


# --- the method through its interface -------------------------------------------------------
@pytest.fixture(scope="module")
def records() -> list:
    return load_records("mp20", "test", limit=16)


def _fit_prior(records: list) -> TemplatePolicy:
    """A tiny policy that has learnt a handful of real (charge-neutral) templates."""
    policy = tiny_policy(1)
    seqs = []
    for r in records:
        w = WyckoffCrystal.from_crystal(r.crystal)
        orbits = [(o.letter, o.number) for o in w.orbits]
        if sum(template_counts(w.space_group, orbits).values()) <= 8:
            seqs.append(encode(w.space_group, orbits))
    batch = pad(seqs)
    masks = replay(batch, policy.limits())  # the grammar's part does not change: once
    opt = torch.optim.Adam(policy.parameters(), lr=2e-2)
    for _ in range(30):
        loglik, _ = sequence_terms(policy, batch, policy.limits(), grammar=masks)
        opt.zero_grad()
        (-loglik.mean()).backward()
        opt.step()
    return policy.eval()


@pytest.fixture(scope="module")
def weights(records: list, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("matinvent")
    arrays = from_crystals([r.crystal for r in records], [r.material_id for r in records])
    torch.manual_seed(0)
    flow = WyckoffFlowModel(
        WyckoffModelConfig(d_model=32, layers=2, heads=4, lattice_mu=1.0, lattice_sigma=0.3)
    )
    with torch.no_grad():  # zero-initialised heads give a zero field: randomise
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    save_wyckoff_release(flow.eval(), root / "flow.pt", TemplateStats.from_arrays(arrays).to_dict())
    save_prior(_fit_prior(records), root / "prior.pt", {"templates": len(records)})
    return {"prior": root / "prior.pt", "flow": root / "flow.pt"}


@pytest.fixture()
def installed(weights: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.setattr(method_mod, "_prior_path", lambda: weights["prior"])
    monkeypatch.setattr(method_mod, "_flow_path", lambda: weights["flow"])
    method_mod._load_policy.cache_clear()
    method_mod._load_flow.cache_clear()
    return weights


def _request(**params: object) -> DesignRequest:
    return DesignRequest.model_validate(
        {
            "method": "matinvent",
            # Met by every crystal: the test is about the plumbing, not the chemistry.
            "objectives": [{"property": "density", "goal": "below", "value": 1000.0}],
            "constraints": {"max_atoms": 8},
            "relax": False,
            "num_candidates": 20,
            "seed": 3,
            "params": {
                "iterations": 2,
                "batch_size": 6,
                "oracle_call_budget": 6,
                "flow_steps": 3,
                # An untrained flow's crystals are far from any hull: let them through.
                "max_energy_above_hull": 10.0,
                **params,
            },
        }
    )


def test_prior_release_round_trip(installed: dict[str, Path]) -> None:
    policy, info = load_prior(installed["prior"])
    assert info == {"templates": 16} and policy.config.d_model == 32


def test_tiny_matinvent_job_returns_hits_and_counts_oracle_calls(
    installed: dict[str, Path],
) -> None:
    req = _request()
    method = MatInventMethod()
    params = method.validate(req)
    ctx = MethodContext()
    events = list(method.run(req, params, ctx))
    cands = [c for e in events if isinstance(e, list) for c in e]
    rl = [e for e in events if isinstance(e, Progress) and e.phase == "rl" and e.step > 0]
    summary = ctx.summary
    assert rl and rl[-1].detail is not None
    assert rl[-1].detail["oracle_calls"] == summary["oracle_calls"]
    assert 0 < summary["oracle_calls"] <= 6  # the budget is never exceeded
    # Every candidate is a scored hit (density below 1000 is met by all scored crystals).
    assert len(cands) == summary["unique_hits"] == summary["oracle_calls"]
    assert summary["burden"] == 1.0
    assert summary["filter"]["outcomes"]["scored"] == summary["oracle_calls"]
    assert summary["unique_valid"] <= summary["judged"] <= summary["generated"]
    assert summary["diversity_ratio"] == round(summary["unique_valid"] / summary["judged"], 4)
    assert sum(summary["filter"]["outcomes"].values()) <= summary["generated"] == 6 * len(rl)
    for c in cands:
        assert c.predicted["density"] < 1000.0 and c.meta["reward"] == 1.0
        assert c.meta["template_formula"] == c.crystal.to_structure().composition.reduced_formula


def test_too_few_hits_are_topped_up_with_the_closest_scored_crystals(
    installed: dict[str, Path],
) -> None:
    """A target nobody meets (density 0.5 +- 0.01): the job still returns the scored crystals,
    flagged non-hits, highest reward first, never more than were scored."""
    req = _request().model_copy(
        update={
            "objectives": [Objective(property="density", goal="target", value=0.5, tolerance=0.01)],
            "num_candidates": 4,
        }
    )
    method = MatInventMethod()
    ctx = MethodContext()
    events = list(method.run(req, method.validate(req), ctx))
    cands = [c for e in events if isinstance(e, list) for c in e]
    assert ctx.summary["unique_hits"] == 0 and ctx.summary["oracle_calls"] > 0
    assert len(cands) == min(4, ctx.summary["oracle_calls"])
    rewards = [c.meta["reward"] for c in cands]
    assert rewards == sorted(rewards, reverse=True) and all(r < 1.0 for r in rewards)


def test_request_errors_name_the_field(
    installed: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    method = MatInventMethod()
    with pytest.raises(ValidationError, match="diversity_buffer"):
        method.validate(_request(diversity_tolerance=5, diversity_buffer=5))
    with pytest.raises(ValidationError):
        method.validate(_request(unknown_knob=1))
    fixed = _request().model_copy(
        update={"constraints": _request().constraints.model_copy(update={"composition": "NaCl"})}
    )
    with pytest.raises(RequestError) as err:
        method.validate(fixed)
    assert err.value.field == "constraints.composition"
    no_objective = _request().model_copy(update={"objectives": []})
    with pytest.raises(RequestError) as err:
        method.validate(no_objective)
    assert err.value.field == "objectives"
    assert MatInventMethod.shardable is False  # a learning run cannot be cut into shards


def test_missing_prior_makes_the_method_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> Path:
        raise FileNotFoundError("no matinvent-prior.pt")

    monkeypatch.setattr(method_mod, "_prior_path", missing)
    method = MatInventMethod()
    with pytest.raises(RequestError) as err:
        method.validate(_request())
    assert err.value.field == "method" and "matinvent-prior.pt" in err.value.message
    assert any("matinvent-prior.pt" in m for m in method.missing_weights())
    assert method.describe()["models"]["prior"] == {"file": None, "available": False}
