"""Crystal-GFN: the environment's constraints (Wyckoff multiplicities, charge neutrality,
lattice systems), trajectory balance on a toy reward, the proxy's invariances, and a tiny
``crystal_gfn`` job through the method interface on the CPU."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import spglib
import torch
from pymatgen.core import Composition, Element, Lattice, Structure

from ml.constraints import is_charge_neutral
from ml.crystal import Crystal
from ml.methods.base import MethodContext, RequestError
from ml.methods.crystal_gfn import checkpoint as ckpt
from ml.methods.crystal_gfn import gfn
from ml.methods.crystal_gfn.chemistry import is_neutral
from ml.methods.crystal_gfn.env import CrystalEnv, EnvSpec
from ml.methods.crystal_gfn.method import CrystalGFNMethod
from ml.methods.crystal_gfn.proxy import ProxyConfig, ProxyModel, fingerprint, save_proxy
from ml.methods.crystal_gfn.proxy_data import featurize_cif
from ml.methods.crystal_gfn.reward import Reward, RewardTerm
from ml.methods.crystal_gfn.spacegroups import (
    POINT_SYMMETRIES,
    crystal_lattice_system,
    point_symmetry,
    wyckoff_fit,
)
from ml.request import DesignRequest
from ml.symmetry import compatible

warnings.filterwarnings("ignore")

# Two or more groups per crystal-lattice system is not needed: one each (R-3m rhombohedral,
# P-3m1 trigonal-hexagonal, P6_3mc hexagonal), Fd-3m for large multiplicities.
GROUPS = (2, 14, 62, 139, 166, 164, 186, 225, 227)
ELEMENTS = (3, 8, 9, 12, 14, 16, 26)  # Li O F Mg Si S Fe


@pytest.fixture(autouse=True, scope="module")
def one_thread():  # type: ignore[no-untyped-def]
    """Tiny networks: one thread beats two threads' synchronisation on a busy 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_proxy(seed: int = 0) -> ProxyModel:
    torch.manual_seed(seed)
    cfg = ProxyConfig(d_model=16, heads=2, attention_layers=1, hidden=16, dropout=0.0)
    return ProxyModel(cfg).eval()


def energy_reward(proxy: ProxyModel) -> Reward:
    return Reward([RewardTerm("formation_energy", "minimize")], proxy, beta=2.0)


def random_samples(spec: EnvSpec, n: int = 300, seed: int = 0) -> tuple[CrystalEnv, gfn.Samples]:
    """Trajectories of an untrained policy, half of their steps uniform: they reach every
    corner of the environment, which is what the constraint tests need."""
    env = CrystalEnv(spec)
    torch.manual_seed(seed)
    policy = gfn.new_policy(env, hidden=16, layers=1, mixtures=2)
    with torch.no_grad():
        return env, gfn.rollout(env, policy, energy_reward(tiny_proxy()), n, explore=0.5)


# --- space groups and chemistry ---------------------------------------------------------------
def test_wyckoff_fit_equals_pyxtal_check() -> None:
    rng = random.Random(3)
    for _ in range(300):
        g = rng.randint(1, 230)
        counts = tuple(sorted(rng.randint(1, 10) for _ in range(rng.randint(1, 4))))
        assert wyckoff_fit(g, counts) == compatible(g, counts), (g, counts)


def test_neutrality_equals_pipeline_check() -> None:
    rng = random.Random(5)
    pool = [1, 3, 6, 7, 8, 9, 11, 12, 14, 15, 16, 17, 20, 22, 26, 29, 34, 56, 79, 83]
    for _ in range(400):
        comp = tuple(sorted((z, rng.randint(1, 9)) for z in rng.sample(pool, rng.randint(1, 4))))
        formula = Composition({Element.from_Z(z).symbol: n for z, n in comp})
        assert is_neutral(comp) == is_charge_neutral(formula), comp


def test_point_symmetries_follow_the_paper() -> None:
    assert len({point_symmetry(g) for g in range(1, 231)}) == len(POINT_SYMMETRIES)
    # Section 3.1: "non-centrosymmetric" leaves three crystal-lattice systems, 25 groups.
    non_centro = [g for g in range(1, 231) if point_symmetry(g) == 1]
    assert len(non_centro) == 25
    assert {crystal_lattice_system(g) for g in non_centro} == {3, 6, 7}
    assert point_symmetry(225) == 0 and point_symmetry(1) == 4 and point_symmetry(186) == 3


# --- the environment ----------------------------------------------------------------------------
def test_samples_fit_their_space_group_and_are_charge_neutral() -> None:
    spec = EnvSpec(elements=ELEMENTS, space_groups=GROUPS, max_atoms=12, max_elements=3)
    _, traj = random_samples(spec)
    alive = ~traj.dead
    assert alive.sum() >= 50
    counts = traj.states.counts[alive].numpy()
    groups = traj.space_group[alive].tolist()
    assert set(groups) <= set(GROUPS) and len(set(groups)) >= 4
    for g, row, cls, ps in zip(
        groups, counts, traj.states.cls[alive], traj.states.ps[alive], strict=True
    ):
        amounts = {Element.from_Z(ELEMENTS[d]).symbol: int(row[d]) for d in np.flatnonzero(row)}
        assert 1 <= len(amounts) <= 3 and sum(amounts.values()) <= 12
        assert compatible(g, amounts.values()), (g, amounts)  # pyxtal's Wyckoff check
        assert is_charge_neutral(Composition(amounts)), amounts
        assert int(cls) - 1 == crystal_lattice_system(g) and int(ps) - 1 == point_symmetry(g)


def test_lattices_obey_the_lattice_system() -> None:
    spec = EnvSpec(elements=ELEMENTS, space_groups=GROUPS, max_atoms=12, max_elements=3)
    _, traj = random_samples(spec, seed=1)
    alive = ~traj.dead
    seen = set()
    for g, (a, b, c, al, be, ga) in zip(
        traj.space_group[alive].tolist(), traj.lattice[alive].tolist(), strict=True
    ):
        system = crystal_lattice_system(g)
        seen.add(system)
        assert min(a, b, c) > 0.5
        if system != 0:  # all but triclinic: alpha = gamma = 90 (or gamma = 120)
            assert al == pytest.approx(90.0)
        if system >= 2:
            assert be == pytest.approx(90.0)
        if system == 1:
            assert 90.0 <= be <= 135.0
        if system >= 3:
            assert b == pytest.approx(a)
        if system in (4, 5, 6):
            assert ga == pytest.approx(120.0)
        elif system >= 2:
            assert ga == pytest.approx(90.0)
        if system == 7:
            assert c == pytest.approx(a)
        if system == 0:
            assert all(65.0 <= x <= 115.0 for x in (al, be, ga))
        # The cell is a real cell: pymatgen builds it with a positive volume.
        assert Lattice.from_parameters(a, b, c, al, be, ga).volume > 1.0
    assert seen == set(range(8))


def test_fixed_composition_and_required_elements() -> None:
    spec = EnvSpec(
        elements=(30, 8), space_groups=(186, 216, 225), max_atoms=8, composition=((8, 1), (30, 1))
    )
    _, traj = random_samples(spec, n=60)
    counts = traj.states.counts[~traj.dead].numpy()
    assert len(counts) > 10
    assert all(row[0] == row[1] and row[0] > 0 for row in counts)  # Zn_n O_n
    spec = EnvSpec(elements=ELEMENTS, space_groups=(14, 62), max_atoms=10, required=(3,))
    env, traj = random_samples(spec, n=80)
    li = env.spec.elements.index(3)
    assert (traj.states.counts[~traj.dead][:, li] > 0).all()


def test_replay_gives_the_same_probabilities() -> None:
    """Replaying a trajectory's actions and lattice re-derives its forward and backward
    log-probabilities and reward exactly (the replay buffer relies on it), and every
    backward action taken was a valid parent."""
    spec = EnvSpec(elements=ELEMENTS, space_groups=GROUPS, max_atoms=10, max_elements=3)
    env = CrystalEnv(spec)
    torch.manual_seed(0)
    policy = gfn.new_policy(env, hidden=16, layers=1, mixtures=2)
    reward = energy_reward(tiny_proxy())
    with torch.no_grad():
        first = gfn.rollout(env, policy, reward, 64, explore=0.3)
        keep = torch.nonzero(~first.dead).flatten()
        again = gfn.rollout(
            env,
            policy,
            reward,
            len(keep),
            actions=first.actions[keep],
            lattice_u=first.lattice_u[keep],
        )
    assert torch.allclose(again.log_pf, first.log_pf[keep], atol=1e-4)
    assert torch.allclose(again.log_pb, first.log_pb[keep], atol=1e-4)
    assert torch.allclose(again.log_r, first.log_r[keep], atol=1e-4)
    assert (first.log_pb[keep] > -1e6).all()  # no masked-out parent was ever taken


class ToyReward(Reward):
    """A fake proxy for a unit test: the reward favours oxygen-rich compositions."""

    def __init__(self, env: CrystalEnv) -> None:
        super().__init__([RewardTerm("formation_energy", "minimize")], tiny_proxy(), beta=3.0)
        self.oxygen = Element("O").Z

    def values(self, space_group, z, count, lattice, conv_atoms):  # type: ignore[no-untyped-def]
        frac = (count * (z == self.oxygen)).sum(1) / count.sum(1)
        nan = torch.full_like(frac, float("nan"))
        return {"formation_energy": -2.0 * frac, "band_gap": nan, "density": nan, "hhi": nan}


def test_trajectory_balance_loss_decreases_on_a_toy_reward() -> None:
    spec = EnvSpec(
        elements=(3, 8, 12, 9), space_groups=(1, 2, 14, 225), max_atoms=6, max_elements=2
    )
    env = CrystalEnv(spec)
    torch.manual_seed(0)
    policy = gfn.new_policy(env, hidden=32, layers=2, mixtures=2)
    cfg = gfn.GFNConfig(steps=120, batch_size=32, lr=3e-3, lr_log_z=0.1, explore=0.1)
    stats = list(gfn.train(env, policy, ToyReward(env), cfg, report_every=20))
    assert len(stats) == 6
    assert stats[-1].loss < 0.5 * stats[0].loss, [s.loss for s in stats]
    assert stats[-1].mean_log_r > stats[0].mean_log_r  # samples moved towards oxygen


def test_band_reward_is_flat_inside_and_falls_outside() -> None:
    proxy = tiny_proxy()
    reward = Reward([RewardTerm("band_gap", "target", 1.5, 0.2)], proxy, beta=4.0)
    gaps = torch.tensor([1.5, 1.35, 1.65, 2.0, 3.0, 0.0])
    log_r = reward.log_reward({"formation_energy": torch.zeros(6), "band_gap": gaps})
    assert torch.all(log_r[:3] == 0)  # inside the band (edges included): all equal
    assert log_r[2] > log_r[3] > log_r[4]
    assert log_r[5] < log_r[3]


def test_exact_density_of_rocksalt() -> None:
    nacl = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    reward = energy_reward(tiny_proxy())
    values = reward.values(
        torch.tensor([225]),
        torch.tensor([[11, 17]]),
        torch.tensor([[1, 1]]),
        torch.tensor([[5.64, 5.64, 5.64, 90.0, 90.0, 90.0]]),
        torch.tensor([8]),
    )
    assert float(values["density"][0]) == pytest.approx(nacl.density, rel=1e-4)


# --- the proxy ----------------------------------------------------------------------------------
def test_proxy_features_and_permutation_invariance() -> None:
    nacl = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    sg, lattice, counts = featurize_cif(
        Crystal.from_structure(nacl.get_primitive_structure()).to_cif()
    )
    assert sg == 225 and counts == {11: 1, 17: 1}
    assert np.allclose(lattice, [5.64, 5.64, 5.64, 90, 90, 90], atol=1e-3)
    proxy = tiny_proxy()
    sgs = torch.tensor([62, 62])
    z = torch.tensor([[3, 26, 15, 8, 0], [8, 0, 15, 3, 26]])
    n = torch.tensor([[4, 4, 4, 16, 0], [16, 0, 4, 4, 4]])
    lat = torch.tensor([[10.3, 6.0, 4.7, 90.0, 90.0, 90.0]] * 2)
    with torch.no_grad():
        y = proxy.predict(sgs, z, n, lat)
    assert torch.allclose(y[0], y[1], atol=1e-5)
    assert y[0, 1] >= 0  # band gaps are clipped at 0


# --- the method -----------------------------------------------------------------------------------
def tiny_wyckoff_model() -> torch.nn.Module:
    """An untrained Wyckoff generator with randomised heads (zero heads would not move)."""
    from ml.methods.conditional.wyckoff_model import WyckoffFlowModel, WyckoffModelConfig

    torch.manual_seed(0)
    model = WyckoffFlowModel(
        WyckoffModelConfig(d_model=32, layers=2, heads=4, lattice_mu=1.0, lattice_sigma=0.3)
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture()
def tiny_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny untrained proxy and Wyckoff generator installed where the method looks."""
    from ml.methods.conditional import method as conditional_method

    proxy = tiny_proxy()
    proxy.config.space_groups_seen = GROUPS
    proxy_path = tmp_path / "crystal_gfn_proxy.pt"
    save_proxy(proxy, proxy_path, {"test": {"mae_formation_energy": None}})
    monkeypatch.setattr(ckpt, "find_proxy", lambda: proxy_path)
    monkeypatch.setattr("ml.methods.crystal_gfn.method.find_proxy", lambda: proxy_path)
    monkeypatch.setattr(ckpt, "pretrained_files", lambda: [])
    ckpt.load_proxy_cached.cache_clear()

    from ml.data import load_records
    from ml.generative.assignment import TemplateStats
    from ml.methods.conditional.checkpoint import save_wyckoff_release
    from ml.methods.conditional.wyckoff_data import from_crystals

    records = load_records("mp20", "test", limit=16)
    stats = TemplateStats.from_arrays(
        from_crystals([r.crystal for r in records], [r.material_id for r in records])
    )
    wyckoff_path = tmp_path / "conditional-wyckoff.pt"
    save_wyckoff_release(tiny_wyckoff_model(), wyckoff_path, stats.to_dict(), {"note": "test"})
    monkeypatch.setattr(conditional_method, "find_weights", lambda prior="uniform": wyckoff_path)
    monkeypatch.setattr(
        "ml.methods.conditional.checkpoint.find_weights", lambda prior="uniform": wyckoff_path
    )
    conditional_method._load_wyckoff.cache_clear()
    return tmp_path


def _request(**params: object) -> DesignRequest:
    return DesignRequest.model_validate(
        {
            "method": "crystal_gfn",
            "objectives": [{"property": "formation_energy", "goal": "minimize"}],
            "constraints": {"elements": {"allowed": ["Li", "Mg", "O", "F"]}, "max_atoms": 8},
            "num_candidates": 5,
            "seed": 3,
            "relax": False,
            "params": {
                "steps": 4,
                "batch_size": 8,
                "hidden": 16,
                "layers": 1,
                "mixtures": 2,
                "generator_steps": 3,
                "max_elements": 3,
                **params,
            },
        }
    )


def _run(request: DesignRequest) -> list:
    m = CrystalGFNMethod()
    params = m.validate(request)
    return [c for e in m.run(request, params, MethodContext()) if isinstance(e, list) for c in e]


def test_tiny_job_returns_crystals_in_the_sampled_space_groups(tiny_weights: Path) -> None:
    cands = _run(_request())
    assert len(cands) == 5
    for c in cands:
        crystal = c.crystal
        ds = spglib.get_symmetry_dataset(
            (crystal.lattice, crystal.frac_coords, crystal.numbers), symprec=0.01
        )
        assert ds is not None and int(ds.number) == c.meta["gfn_space_group"]
        comp = crystal.to_structure().composition
        assert set(comp.chemical_system.split("-")) <= {"Li", "Mg", "O", "F"}
        assert is_charge_neutral(comp)
        assert Composition(c.meta["gfn_composition"]) == comp  # primitive cell as sampled
        assert c.predicted["formation_energy"] == c.meta["proxy"]["formation_energy"]
        assert c.meta["gfn"]["source"] == "trained"
        assert c.meta["lattice_source"] == "gfn"
        assert np.isfinite(crystal.lattice).all()
    # Same request, same seed: same candidates.
    again = _run(_request())
    assert [c.meta["gfn_composition"] for c in again] == [c.meta["gfn_composition"] for c in cands]
    assert np.allclose(again[0].crystal.lattice, cands[0].crystal.lattice)


def test_pretrained_gfn_is_used_only_for_its_own_request(
    tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ml.methods.crystal_gfn.request_spec import env_spec
    from ml.methods.crystal_gfn.reward import terms_from_request

    request = _request()
    params = CrystalGFNMethod().validate(request)
    proxy, _, proxy_id = ckpt.load_proxy_cached(ckpt.find_proxy(), "cpu")
    spec = env_spec(request, params.max_elements, params.max_per_element, proxy.config)
    reward = Reward(terms_from_request(request)[0], proxy, params.beta)
    policy = gfn.new_policy(CrystalEnv(spec), 16, 1, 2)
    path = tiny_weights / "crystal_gfn-test.pt"
    gfn.save_gfn(path, policy, spec, reward, fingerprint(proxy), {"steps": 0})
    assert proxy_id == fingerprint(proxy)
    monkeypatch.setattr(ckpt, "pretrained_files", lambda: [path])
    cands = _run(request)
    assert cands[0].meta["gfn"]["source"] == "pretrained:crystal_gfn-test.pt"
    other = _run(_request(beta=2.0))  # another reward: trained for the request
    assert other[0].meta["gfn"]["source"] == "trained"


def test_missing_weights_and_bad_requests_are_request_errors(
    tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = CrystalGFNMethod()
    bad = _request().model_copy(deep=True)
    bad.objectives[0].property = "band_gap"
    bad.objectives[0].fidelity = "hse"
    with pytest.raises(RequestError) as err:
        m.validate(bad)
    assert err.value.field == "objectives.0.fidelity"
    only_noble = DesignRequest.model_validate(
        {"method": "crystal_gfn", "constraints": {"elements": {"allowed": ["He", "Ne"]}}}
    )
    with pytest.raises(RequestError) as err:
        m.validate(only_noble)
    assert err.value.field == "constraints.elements"

    def missing() -> Path:
        raise FileNotFoundError("crystal_gfn_proxy.pt")

    monkeypatch.setattr("ml.methods.crystal_gfn.method.find_proxy", missing)
    with pytest.raises(RequestError) as err:
        m.validate(_request())
    assert err.value.field == "method" and "unavailable" in err.value.message
