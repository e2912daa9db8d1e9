"""Conditional generator: model symmetry, periodic paths, guidance and training (tiny model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ml.generative.periodic import min_image, wrap
from ml.methods.conditional.flow import (
    FlowBatch,
    SampleConfig,
    flow_loss,
    guided_velocity,
    sample,
)
from ml.methods.conditional.geometry import (
    LengthPrior,
    decode_lattice,
    encode_lattice,
)
from ml.methods.conditional.model import ConditionalFlowModel, ModelConfig


def tiny_model(prior: str = "uniform", seed: int = 0) -> ConditionalFlowModel:
    torch.manual_seed(seed)
    model = ConditionalFlowModel(
        ModelConfig(d_model=32, layers=2, heads=4, coord_prior=prior)  # type: ignore[arg-type]
    )
    # Output heads and AdaLN start at zero (a zero field is trivially equivariant): randomise.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def random_inputs(b: int = 3, n: int = 6, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    types = torch.randint(1, 90, (b, n), generator=g)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[0, -2:] = False  # one crystal with padding
    types = types * mask
    return {
        "types": types,
        "mask": mask,
        "coords": torch.rand(b, n, 3, generator=g) * mask[..., None],
        "lattice_state": torch.randn(b, 6, generator=g) * 0.5,
        "t": torch.rand(b, generator=g),
        "space_group": torch.tensor([225, 0, 12])[:b],
        "props": torch.tensor([[-1.0, 2.0], [0.5, 0.0], [-2.0, 1.0]])[:b],
        "props_given": torch.tensor([[True, True], [False, True], [True, False]])[:b],
    }


@pytest.mark.parametrize("prior", ["uniform", "normal"])
def test_permuting_atoms_permutes_velocities(prior: str) -> None:
    model = tiny_model(prior)
    x = random_inputs()
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    v_coord, v_lat = model(**x)
    xp = dict(x)
    for key in ("types", "mask", "coords"):
        xp[key] = x[key][:, perm]
    vp_coord, vp_lat = model(**xp)
    assert v_coord.abs().max() > 1e-3  # a non-trivial field
    torch.testing.assert_close(vp_coord, v_coord[:, perm], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(vp_lat, v_lat, atol=1e-5, rtol=1e-4)


def test_padding_atoms_do_not_change_real_velocities() -> None:
    model = tiny_model()
    x = random_inputs()
    v_coord, v_lat = model(**x)
    x2 = dict(x)
    coords = x["coords"].clone()
    coords[0, -2:] = 0.77  # garbage in padded slots
    x2["coords"] = coords
    v2_coord, v2_lat = model(**x2)
    torch.testing.assert_close(v2_coord[0, :4], v_coord[0, :4], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(v2_lat, v_lat, atol=1e-5, rtol=1e-4)
    assert torch.all(v_coord[0, -2:] == 0)


def test_uniform_model_is_periodic_in_coordinates() -> None:
    """Shifting a coordinate by a whole lattice vector is the same crystal: same velocity."""
    model = tiny_model("uniform")
    x = random_inputs()
    v_coord, _ = model(**x)
    x2 = dict(x)
    x2["coords"] = x["coords"] + torch.tensor([1.0, -2.0, 3.0]) * x["mask"][..., None]
    v2_coord, _ = model(**x2)
    torch.testing.assert_close(v2_coord, v_coord, atol=1e-4, rtol=1e-3)


def test_wrap_stays_in_unit_interval() -> None:
    x = torch.tensor([-1e-9, -1e-30, 0.0, 1.0, 2.5, -3.25, 0.9999999, 7.0 - 1e-7])
    w = wrap(x)
    assert torch.all(w >= 0) and torch.all(w < 1)
    torch.testing.assert_close(w[[3, 4, 5]], torch.tensor([0.0, 0.5, 0.75]))
    d = min_image(torch.tensor([0.9, -0.7, 0.5, 0.2]))
    assert torch.all((d >= -0.5) & (d < 0.5))  # one convention for every method: [-0.5, 0.5)
    torch.testing.assert_close(d, torch.tensor([-0.1, 0.3, -0.5, 0.2]))


def test_sampled_coordinates_stay_in_unit_interval() -> None:
    model = tiny_model("uniform")
    x = random_inputs()
    g = torch.Generator().manual_seed(0)
    lat, coords = sample(
        model,
        x["types"],
        x["mask"],
        x["space_group"],
        x["props"],
        x["props_given"],
        SampleConfig(steps=7, guidance=2.0),
        g,
    )
    real = coords[x["mask"]]
    assert torch.isfinite(lat).all()
    assert torch.all(real >= 0) and torch.all(real < 1)


def test_guidance_zero_is_the_conditional_field() -> None:
    model = tiny_model()
    x = random_inputs()
    args = (
        x["types"],
        x["mask"],
        x["coords"],
        x["lattice_state"],
        x["t"],
        x["space_group"],
        x["props"],
        x["props_given"],
    )
    cond = model(*args)
    g0 = guided_velocity(model, *args, guidance=0.0)
    for a, b in zip(g0, cond, strict=True):
        assert torch.equal(a, b)
    # w != 0 moves away from the unconditional field (space group and properties dropped).
    uncond = model(*args[:5], torch.zeros_like(x["space_group"]), x["props"], x["props"] > 1e9)
    g2 = guided_velocity(model, *args, guidance=2.0)
    for gv, c, u in zip(g2, cond, uncond, strict=True):
        torch.testing.assert_close(gv, 3.0 * c - 2.0 * u, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(gv, c)


def test_length_prior_round_trip() -> None:
    rng = np.random.default_rng(0)
    n = rng.integers(1, 21, size=200)
    lengths = np.sort(np.exp(rng.normal(1.0, 0.2, size=(200, 3))), axis=1) * n[:, None] ** (1 / 3)
    prior = LengthPrior.fit(lengths, n)
    assert abs(prior.mu[0] - 1.0) < 0.2 and 0.1 < prior.sigma[1] < 0.3
    angles = torch.tensor(rng.uniform(60, 120, size=(200, 3)), dtype=torch.float32)
    lengths_t = torch.tensor(lengths, dtype=torch.float32)
    state = encode_lattice(lengths_t, angles, torch.tensor(n), prior)
    assert abs(float(state[:, :3].mean())) < 0.3  # standardised log-lengths
    back_l, back_a = decode_lattice(state, torch.tensor(n), prior)
    torch.testing.assert_close(back_l, lengths_t, rtol=1e-4, atol=0)
    torch.testing.assert_close(back_a, angles, rtol=1e-5, atol=1e-4)


def fixed_batch(b: int = 16, n: int = 4, seed: int = 3) -> FlowBatch:
    """Toy data: rock-salt-like cells with a few species, labelled properties."""
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, 0.0, 0.0], [0.0, 0.5, 0.5]])
    coords = wrap(base[None] + 0.02 * torch.randn(b, n, 3, generator=g))
    types = torch.tensor([11, 17, 11, 17]).repeat(b, 1)
    return FlowBatch(
        types=types,
        mask=torch.ones(b, n, dtype=torch.bool),
        coords=coords,
        lattice=0.1 * torch.randn(b, 6, generator=g),
        space_group=torch.full((b,), 225),
        props=torch.tensor([[-2.0, 5.0]]).repeat(b, 1),
        props_given=torch.ones(b, 2, dtype=torch.bool),
    )


def eval_loss(model: ConditionalFlowModel, batch: FlowBatch) -> float:
    losses = []
    for seed in range(4):
        g = torch.Generator().manual_seed(100 + seed)
        with torch.no_grad():
            losses.append(float(flow_loss(model, batch, g, dropout=None)[0]))
    return float(np.mean(losses))


@pytest.mark.parametrize("prior", ["uniform", "normal"])
def test_a_few_training_steps_lower_the_loss(prior: str) -> None:
    torch.manual_seed(0)
    model = ConditionalFlowModel(
        ModelConfig(d_model=32, layers=2, heads=4, coord_prior=prior)  # type: ignore[arg-type]
    )
    batch = fixed_batch()
    before = eval_loss(model, batch)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(40):
        loss, _ = flow_loss(model, batch, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss(model, batch)
    assert after < 0.8 * before, (before, after)


def test_untrimmed_batches_keep_full_width_and_the_same_rows() -> None:
    from ml.methods.conditional.data import PaddedDataset, fit_normalisation, load_split
    from ml.methods.conditional.model import PROPERTIES

    arrays = load_split("val", limit=8)
    prior, _, _ = fit_normalisation(arrays, PROPERTIES)
    data = PaddedDataset(arrays, prior, PROPERTIES)
    small = int(np.argmin(arrays.num_atoms))
    idx = torch.tensor([small])
    trimmed, full = data.batch(idx), data.batch(idx, trim=False)
    width = int(arrays.num_atoms.max())
    assert trimmed.types.shape[1] == arrays.num_atoms[small] < width
    assert full.types.shape[1] == width  # static shape for a compiled model
    k = trimmed.types.shape[1]
    assert torch.equal(full.types[:, :k], trimmed.types) and not full.mask[:, k:].any()
    assert torch.equal(full.coords[:, :k], trimmed.coords)
