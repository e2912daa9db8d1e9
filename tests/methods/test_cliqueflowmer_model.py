"""CliqueFlowmer with a tiny model on CPU: cliques, shapes, ES, beam search, decoding, training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from ml.crystal import Crystal
from ml.methods.cliqueflowmer.checkpoint import export_checkpoint, load_checkpoint
from ml.methods.cliqueflowmer.config import (
    PAD,
    START,
    STOP,
    VOCAB,
    CliqueFlowmerConfig,
    tiny_config,
    token_of,
)
from ml.methods.cliqueflowmer.decoding import beam_search, decode_latents, tokens_to_numbers
from ml.methods.cliqueflowmer.geometry import (
    LengthPrior,
    MaterialBatch,
    PackedMaterials,
    lengths_from_flow,
    lengths_to_flow,
    valid_angles,
)
from ml.methods.cliqueflowmer.model import CliqueFlowmer, clique_index, lifted_logit_normal
from ml.methods.cliqueflowmer.optimizer import (
    LatentOptimiser,
    OptimiserSettings,
    es_gradient,
    objective_fn,
    optimise_latents,
    standardised_ranks,
)
from tests.structures import rutile_tio2


def _crystals() -> list[Crystal]:
    nacl = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.69), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    ).get_primitive_structure()
    si = Structure(Lattice.cubic(5.43), ["Si"] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]])
    tio2 = rutile_tio2()
    cscl = Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return [Crystal.from_structure(s) for s in (nacl, si, tio2, cscl)]


@pytest.fixture(scope="module")
def packed() -> PackedMaterials:
    return PackedMaterials.from_crystals(_crystals(), max_atoms=20)


@pytest.fixture()
def model(packed: PackedMaterials) -> CliqueFlowmer:
    torch.manual_seed(0)
    return CliqueFlowmer(tiny_config(), LengthPrior.fit(packed.lengths, packed.num_atoms)).eval()


def test_clique_chain_shares_knots() -> None:
    cfg = tiny_config()  # 3 cliques of 4 with knot 1 -> d_z = 10
    assert cfg.d_z == 10
    model = CliqueFlowmer(cfg)
    z = torch.arange(cfg.d_z, dtype=torch.float32)
    chain = model.chain(z)
    assert chain.shape == (3, 4)
    for i in range(cfg.n_cliques):
        for j in range(cfg.d_clique):
            assert chain[i, j] == z[i * (cfg.d_clique - cfg.d_knot) + j]
    # Last entry of clique i is the first of clique i + 1; nothing else is shared.
    assert torch.equal(chain[:-1, -1], chain[1:, 0])
    assert sorted(set(chain.flatten().tolist())) == z.tolist()


def test_paper_defaults_give_dz_121_and_fit_16_mib() -> None:
    cfg = CliqueFlowmerConfig()
    assert cfg.d_z == 8 * (16 - 1) + 1 == 121
    idx = clique_index(cfg)
    assert idx[-1, -1] == 120
    params = CliqueFlowmer(cfg).num_parameters()
    assert params * 2 < 16 * 2**20  # bf16 weights


def test_predictor_is_sum_over_cliques(model: CliqueFlowmer) -> None:
    z = torch.randn(5, model.cfg.d_z)
    cliques = model.chain(z)
    manual = torch.zeros(5)
    for c in range(model.cfg.n_cliques):
        onehot = torch.zeros(5, model.cfg.n_cliques)
        onehot[:, c] = 1
        manual += model.predictor(torch.cat([cliques[:, c], onehot], -1)).squeeze(-1)
    torch.testing.assert_close(model.predict_standardised(z), manual)
    # Changing a non-knot entry of clique 0 only changes clique 0's term.
    z2 = z.clone()
    z2[:, 1] += 1.0
    assert not torch.allclose(model.predict(z), model.predict(z2))


def test_shapes(model: CliqueFlowmer, packed: PackedMaterials) -> None:
    batch = MaterialBatch.from_packed(packed)
    b, a = batch.numbers.shape
    mu, log_std = model.encode(batch)
    assert mu.shape == log_std.shape == (b, model.cfg.d_z)
    assert model.predict(mu).shape == (b,)
    tokens = torch.full((b, 3), START)
    tokens[:, 1:] = token_of(8)
    assert model.atom_logits(model.modulation(mu), tokens).shape == (b, 3, VOCAB)
    from ml.methods.cliqueflowmer.model import FlowState

    state = FlowState(torch.zeros(b, 3), torch.zeros(b, 3), batch.frac)
    v = model.velocity(model.clique_tokens(mu), batch.numbers, state, torch.rand(b))
    assert v.lengths.shape == (b, 3) and v.angles.shape == (b, 3) and v.pos.shape == (b, a, 3)
    # Padding atoms do not change the real atoms' velocities (masked attention).
    wide = MaterialBatch.from_packed(packed)
    pad = torch.zeros(b, 2, dtype=torch.long)
    numbers = torch.cat([wide.numbers, pad], 1)
    state2 = FlowState(state.lengths, state.angles, torch.cat([batch.frac, torch.rand(b, 2, 3)], 1))
    v2 = model.velocity(model.clique_tokens(mu), numbers, state2, torch.full((b,), 0.3))
    v1 = model.velocity(model.clique_tokens(mu), batch.numbers, state, torch.full((b,), 0.3))
    torch.testing.assert_close(v2.pos[:, :a], v1.pos, atol=1e-5, rtol=1e-4)


def test_canonical_cells_and_length_prior_round_trip(packed: PackedMaterials) -> None:
    from pymatgen.analysis.structure_matcher import StructureMatcher

    for i, original in enumerate(_crystals()):
        back = packed.crystal(i)
        assert StructureMatcher().fit(original.to_structure(), back.to_structure())
        n = int(packed.num_atoms[i])
        assert list(packed.numbers[i, :n]) == sorted(packed.numbers[i, :n])
    prior = LengthPrior.fit(packed.lengths, packed.num_atoms)
    mu, sigma = torch.tensor(prior.mu), torch.tensor(prior.sigma)
    lengths = torch.tensor(packed.lengths)
    counts = torch.tensor(packed.num_atoms)
    x = lengths_to_flow(lengths, counts, mu, sigma)
    torch.testing.assert_close(lengths_from_flow(x, counts, mu, sigma), lengths)
    assert abs(float(x.mean())) < 1e-6  # standardised on the data it was fitted on


def test_lifted_logit_normal_in_unit_interval() -> None:
    t = lifted_logit_normal(20000, 0.1, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert float(t.min()) >= 0 and float(t.max()) <= 1
    # Logit-normal mass concentrates in the middle; the uniform part keeps the edges covered.
    mid = float(((t > 0.25) & (t < 0.75)).float().mean())
    edge = float((t < 0.05).float().mean())
    assert mid > 0.6 and 0.005 < edge < 0.05


def test_standardised_ranks_match_paper_example() -> None:
    r = standardised_ranks(torch.tensor([[10.0, -1.0, 5.0]]))
    torch.testing.assert_close(r, torch.tensor([[math.sqrt(1.5), -math.sqrt(1.5), 0.0]]))


def test_es_moves_downhill_on_quadratic() -> None:
    gen = torch.Generator().manual_seed(0)
    centre = torch.linspace(-1, 1, 12)

    def g(z: torch.Tensor) -> torch.Tensor:
        return ((z - centre) ** 2).sum(-1)

    z0 = torch.zeros(64, 12) + 2.0
    grad = es_gradient(g, z0, pairs=32, sigma=0.1, generator=gen)
    true = 2 * (z0 - centre)
    cos = torch.nn.functional.cosine_similarity(grad, true, dim=-1)
    assert float(cos.mean()) > 0.6
    # One AdamW step lowers g for (nearly) every latent.
    opt = LatentOptimiser(g, z0, OptimiserSettings(steps=1, lr=0.05, weight_decay=0.0), gen)
    before = g(z0)
    opt.step()
    assert float((g(opt.latents) < before).float().mean()) > 0.9
    _z, trace = optimise_latents(
        g, z0, OptimiserSettings(steps=200, lr=0.05, weight_decay=0.0, log_every=50), gen
    )
    assert trace.mean_objective[-1] < 0.1 * trace.mean_objective[0]


def test_weight_decay_pulls_latents_to_origin() -> None:
    def flat(z: torch.Tensor) -> torch.Tensor:
        return torch.zeros(z.shape[:-1])

    z0 = torch.full((4, 6), 3.0)
    runs = {}
    for wd in (0.0, 0.5):
        s = OptimiserSettings(steps=100, lr=0.01, weight_decay=wd)
        runs[wd], _ = optimise_latents(flat, z0, s, torch.Generator().manual_seed(0))
    # Same ES steps (same noise), plus the decay z -> (1 - lr * wd) z every step.
    shrink = float(runs[0.5].abs().mean()) / float(runs[0.0].abs().mean())
    assert shrink < 0.9


def test_objective_goals() -> None:
    def f(z: torch.Tensor) -> torch.Tensor:
        return z.sum(-1)

    z = torch.tensor([[1.0, 2.0]])
    assert float(objective_fn(f, "minimize")(z)) == 3.0
    assert float(objective_fn(f, "maximize")(z)) == -3.0
    assert float(objective_fn(f, "target", 1.5)(z)) == 1.5
    with pytest.raises(ValueError):
        objective_fn(f, "target")


class _ScriptedDecoder:
    """A fake atom decoder: first token Na (0.6) or Cl (0.4); after Na a flat distribution
    over 50 elements, after Cl certainly STOP. Greedy picks Na; beam search finds [Cl]."""

    cfg = tiny_config()

    def modulation(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def atom_logits(self, zmod: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        b, n = tokens.shape
        logits = torch.full((b, n, VOCAB), -1e4)
        last = tokens[:, -1]
        out = logits[:, -1]
        out[last == START, token_of(11)] = math.log(0.6)
        out[last == START, token_of(17)] = math.log(0.4)
        na = last == token_of(11)
        out[na, token_of(20) : token_of(70)] = math.log(1 / 50)
        out[last == token_of(17), STOP] = 0.0
        out[(last != START) & ~na & (last != token_of(17)), STOP] = 0.0
        logits[:, :, PAD] = float("-inf")
        logits[:, :, START] = float("-inf")
        return logits


def test_beam_search_beats_greedy_and_ends_with_stop() -> None:
    fake = _ScriptedDecoder()
    z = torch.zeros(2, 4)
    tokens, score = beam_search(fake, z, width=3)  # type: ignore[arg-type]
    assert tokens[0, 0] == token_of(17) and tokens[0, 1] == STOP
    assert float(score[0]) == pytest.approx(math.log(0.4), abs=1e-4)
    greedy, _ = beam_search(fake, z, width=1)  # type: ignore[arg-type]
    assert greedy[0, 0] == token_of(11)


def test_beam_search_on_model_respects_limits(model: CliqueFlowmer) -> None:
    from ml.methods.cliqueflowmer.decoding import allowed_token_mask

    z = torch.randn(6, model.cfg.d_z)
    allowed = allowed_token_mask([8, 22], "cpu")
    tokens, score = beam_search(model, z, width=4, max_atoms=5, allowed=allowed)
    assert torch.isfinite(score).all()
    for row in tokens.tolist():
        stop = row.index(STOP)
        assert 1 <= stop <= 5
        assert all(t in (token_of(8), token_of(22)) for t in row[:stop])
        assert all(t == PAD for t in row[stop + 1 :])
    numbers = tokens_to_numbers(tokens)
    assert set(numbers[numbers > 0].tolist()) <= {8, 22}


def test_decoded_crystals_are_valid_structures(model: CliqueFlowmer) -> None:
    z = torch.randn(4, model.cfg.d_z)
    crystals = decode_latents(
        model, z, beam_width=3, steps=8, guidance=2.0, generator=torch.Generator().manual_seed(1)
    )
    assert len(crystals) == 4
    for c in crystals:
        s = c.to_structure()
        assert isinstance(s, Structure) and len(s) == c.num_atoms >= 1
        assert np.isfinite(c.lattice).all() and s.volume > 0
        assert (c.frac_coords >= 0).all() and (c.frac_coords < 1).all()
        assert min(s.lattice.angles) >= 30 and max(s.lattice.angles) <= 150
        Crystal.from_cif(c.to_cif())  # writes and parses as CIF


def test_decoding_is_deterministic_per_seed(model: CliqueFlowmer) -> None:
    z = torch.randn(3, model.cfg.d_z)
    kw = {"beam_width": 2, "steps": 5, "guidance": 2.0}
    a = decode_latents(model, z, generator=torch.Generator().manual_seed(3), **kw)
    b = decode_latents(model, z, generator=torch.Generator().manual_seed(3), **kw)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.lattice, y.lattice)
        np.testing.assert_array_equal(x.frac_coords, y.frac_coords)


def test_valid_angles_repairs_impossible_cells() -> None:
    fixed = valid_angles(np.array([150.0, 150.0, 150.0]))  # sum 450 > 360: no cell
    Lattice.from_parameters(3, 3, 3, *fixed)  # builds
    assert fixed.sum() < 360
    np.testing.assert_array_equal(valid_angles(np.array([90.0, 100.0, 80.0])), [90, 100, 80])


def test_a_few_training_steps_lower_the_loss(packed: PackedMaterials) -> None:
    torch.manual_seed(0)
    model = CliqueFlowmer(tiny_config(), LengthPrior.fit(packed.lengths, packed.num_atoms))
    y = np.array([-1.0, 0.0, -2.0, -0.5])
    batch = MaterialBatch.from_packed(packed, y=y)

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            vals = [
                model.loss(batch, 1e-3, 1.0, torch.Generator().manual_seed(s))[0] for s in range(8)
            ]
        model.train()
        return float(torch.stack(vals).mean())

    before = eval_loss()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):
        loss, parts = model.loss(batch, 1e-3, 1.0, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert set(parts) == {"loss", "atom", "len", "ang", "pos", "pred", "kl"}
    after = eval_loss()
    assert after < 0.7 * before


def test_checkpoint_round_trip_in_bf16(tmp_path, model: CliqueFlowmer) -> None:  # type: ignore[no-untyped-def]
    model.set_label_stats(-1.5, 0.8)
    path = tmp_path / "cf.pt"
    size = export_checkpoint(model, path, "formation_energy", {"steps": 0})
    assert size < 16 * 2**20
    loaded, info = load_checkpoint(path)
    assert info["property"] == "formation_energy" and info["meta"] == {"steps": 0}
    assert float(loaded.y_mean) == -1.5
    z = torch.randn(8, model.cfg.d_z)
    torch.testing.assert_close(loaded.predict(z), model.predict(z), atol=0.05, rtol=0.05)
