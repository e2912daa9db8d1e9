"""CliqueFlowmer's optional pair geometry in the geometry decoder (``pair_dim``), tiny CPU models:
off it is the released network; on it trains, is permutation equivariant and ignores padding."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from ml.crystal import Crystal
from ml.methods.cliqueflowmer.checkpoint import WEIGHTS_DIR, export_checkpoint, load_checkpoint
from ml.methods.cliqueflowmer.config import CliqueFlowmerConfig, tiny_config
from ml.methods.cliqueflowmer.decoding import decode_latents
from ml.methods.cliqueflowmer.geometry import LengthPrior, MaterialBatch, PackedMaterials
from ml.methods.cliqueflowmer.model import CliqueFlowmer, FlowState
from ml.methods.cliqueflowmer.train import init_from_checkpoint, parse_args
from tests.structures import rutile_tio2

PAIR_DIM = 8


def _packed() -> PackedMaterials:
    si = Structure(Lattice.cubic(5.43), ["Si"] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]])
    cscl = Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    crystals = [Crystal.from_structure(s) for s in (si, rutile_tio2(), cscl)]
    return PackedMaterials.from_crystals(crystals, max_atoms=20)


def _pair_config() -> CliqueFlowmerConfig:
    return dataclasses.replace(tiny_config(), pair_dim=PAIR_DIM)


def _model(cfg: CliqueFlowmerConfig, seed: int = 0) -> CliqueFlowmer:
    torch.manual_seed(seed)
    packed = _packed()
    return CliqueFlowmer(cfg, LengthPrior.fit(packed.lengths, packed.num_atoms))


def _randomised(model: CliqueFlowmer) -> CliqueFlowmer:
    """Eval-mode model with every weight perturbed: AdaLN gates and the displacement
    coefficient start at zero, which would hide the attention and the read-out from a test."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _velocity(
    model: CliqueFlowmer, numbers: torch.Tensor, pos: torch.Tensor, seed: int = 2
) -> FlowState:
    gen = torch.Generator().manual_seed(seed)
    b = numbers.shape[0]
    z = torch.randn(b, model.cfg.d_z, generator=gen)
    state = FlowState(
        lengths=torch.randn(b, 3, generator=gen),
        angles=torch.rand(b, 3, generator=gen) * 2 - 1,
        pos=pos,
    )
    t = torch.rand(b, generator=gen)
    with torch.no_grad():
        return model.velocity(model.clique_tokens(z), numbers, state, t)


def test_pair_dim_zero_is_the_released_network() -> None:
    plain = _model(tiny_config())
    assert tiny_config().pair_dim == 0
    assert not any("pair" in k or "displace" in k for k in plain.state_dict())
    # Same seed, same draws: the pair parameters are created after all the released ones.
    paired = _model(_pair_config())
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(paired.state_dict()[k], v, rtol=0, atol=0)
    extra = set(paired.state_dict()) - set(plain.state_dict())
    assert any(k.endswith("attn.pair_value") for k in extra)
    assert any(k.startswith("geo_pair.") for k in extra)
    assert any(k.startswith("displace.") for k in extra)


@pytest.mark.skipif(
    not (WEIGHTS_DIR / "cliqueflowmer_eform.pt").is_file(), reason="no released checkpoint"
)
def test_released_checkpoint_still_loads() -> None:
    model, info = load_checkpoint(WEIGHTS_DIR / "cliqueflowmer_eform.pt")  # strict state dict
    assert model.cfg.pair_dim == 0 and model.geo_pair is None and model.displace is None
    assert "pair_dim" not in info["config"] or info["config"]["pair_dim"] == 0


def test_pair_run_initialised_from_plain_checkpoint_starts_as_it(tmp_path: Path) -> None:
    plain = _randomised(_model(tiny_config(), seed=3))
    path = tmp_path / "plain.pt"
    export_checkpoint(plain, path, "formation_energy", {"steps": 0})
    loaded, _ = load_checkpoint(path)  # a default-config checkpoint loads
    paired = _model(_pair_config())
    init_from_checkpoint(paired, path, "formation_energy")
    paired.eval()
    for blk in paired.flow.blocks:
        assert blk.attn.pair_value is not None and not blk.attn.pair_value.any()
    numbers = torch.tensor([[14, 14, 0], [22, 8, 8]])
    pos = torch.rand(2, 3, 3, generator=torch.Generator().manual_seed(4))
    want, got = _velocity(loaded, numbers, pos), _velocity(paired, numbers, pos)
    for f in ("lengths", "angles", "pos"):
        torch.testing.assert_close(getattr(got, f), getattr(want, f), rtol=1e-4, atol=1e-5)


def test_pair_loss_is_finite_and_reaches_the_pair_parameters() -> None:
    model = _model(_pair_config()).train()
    batch = MaterialBatch.from_packed(_packed(), y=np.array([-1.0, 0.0, -2.0]))
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    # AdaLN gates start at zero, closing the attention at step 0: one step opens them.
    for _ in range(2):
        opt.zero_grad()
        loss, parts = model.loss(batch, 1e-3, 1.0, gen)
        assert torch.isfinite(loss) and all(torch.isfinite(v) for v in parts.values())
        loss.backward()
        opt.step()
    named = dict(model.named_parameters())
    reached = [k for k in named if "pair" in k or k.startswith("displace.coef")]
    assert any(k.endswith("attn.pair_value") for k in reached)
    assert any(k.startswith("geo_pair.") for k in reached)
    for k in reached:
        grad = named[k].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, k


def test_pair_velocity_is_permutation_equivariant() -> None:
    model = _randomised(_model(_pair_config()))
    numbers = torch.tensor([[22, 22, 8, 8, 8, 8, 0]])
    pos = torch.rand(1, 7, 3, generator=torch.Generator().manual_seed(5))
    perm = torch.tensor([4, 0, 5, 2, 1, 3, 6])
    base = _velocity(model, numbers, pos)
    moved = _velocity(model, numbers[:, perm], pos[:, perm])
    torch.testing.assert_close(moved.pos, base.pos[:, perm], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(moved.lengths, base.lengths, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(moved.angles, base.angles, rtol=1e-4, atol=1e-5)
    # The displacement read-out is live in this test: without it the positions' velocity moves.
    assert model.displace is not None
    model.displace = None
    assert not torch.allclose(_velocity(model, numbers, pos).pos, base.pos, atol=1e-4)


def test_padding_atoms_do_not_change_real_atoms() -> None:
    model = _randomised(_model(_pair_config()))
    numbers = torch.tensor([[14, 14, 8]])
    pos = torch.rand(1, 3, 3, generator=torch.Generator().manual_seed(6))
    padded_numbers = torch.cat([numbers, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    # Padded positions are arbitrary (a decoded step can leave them anywhere).
    junk = torch.tensor([[[0.3, 7.0, -2.0], [-40.2, 0.7, 3.3], [1e3, 0.0, 0.5], [0.1] * 3]])
    padded_pos = torch.cat([pos, junk], dim=1)
    base = _velocity(model, numbers, pos)
    padded = _velocity(model, padded_numbers, padded_pos)
    torch.testing.assert_close(padded.pos[:, :3], base.pos, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(padded.lengths, base.lengths, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(padded.angles, base.angles, rtol=1e-4, atol=1e-5)


def test_pair_model_decodes_and_round_trips(tmp_path: Path) -> None:
    model = _randomised(_model(_pair_config()))
    path = tmp_path / "pair.pt"
    export_checkpoint(model, path, "formation_energy", {"steps": 0})
    loaded, info = load_checkpoint(path)
    assert info["config"]["pair_dim"] == PAIR_DIM and loaded.displace is not None
    z = torch.randn(2, model.cfg.d_z)
    crystals = decode_latents(
        loaded, z, beam_width=2, steps=4, guidance=2.0, generator=torch.Generator().manual_seed(1)
    )
    assert len(crystals) == 2
    for c in crystals:
        assert np.isfinite(c.lattice).all() and np.isfinite(c.frac_coords).all()


def test_train_flag_sets_pair_dim() -> None:
    base = ["--property", "formation_energy", "--out", "x.pt", "--work-dir", "w"]
    assert parse_args(base).pair_dim == 0
    assert parse_args([*base, "--pair-dim", "32"]).pair_dim == 32
