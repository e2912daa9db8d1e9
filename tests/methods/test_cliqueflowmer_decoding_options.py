"""CliqueFlowmer decoding options on a tiny CPU model: position anti-annealing, the best few
atom-type beams, and keeping the most self-consistent of several candidates per latent."""

from __future__ import annotations

import torch
from pymatgen.core import Lattice, Structure

from ml.crystal import Crystal
from ml.methods.cliqueflowmer.config import tiny_config
from ml.methods.cliqueflowmer.decoding import (
    beam_search,
    decode_latents,
    most_consistent,
    sample_geometry,
    tokens_to_numbers,
)
from ml.methods.cliqueflowmer.geometry import (
    LengthPrior,
    MaterialBatch,
    PackedMaterials,
    angles_to_flow,
    lengths_to_flow,
)
from ml.methods.cliqueflowmer.model import CliqueFlowmer, FlowState
from tests.structures import rutile_tio2


def _packed() -> PackedMaterials:
    nacl = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.69), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    ).get_primitive_structure()
    crystals = [Crystal.from_structure(s) for s in (nacl, rutile_tio2())]
    return PackedMaterials.from_crystals(crystals, max_atoms=20)


def _model(packed: PackedMaterials) -> CliqueFlowmer:
    torch.manual_seed(0)
    return CliqueFlowmer(tiny_config(), LengthPrior.fit(packed.lengths, packed.num_atoms)).eval()


def test_anneal_changes_only_positions_and_zero_is_plain_euler() -> None:
    packed = _packed()
    model = _model(packed)
    z = torch.randn(2, model.cfg.d_z)
    numbers = MaterialBatch.from_packed(packed).numbers

    def draw(anneal: float | None) -> FlowState:
        gen = torch.Generator().manual_seed(5)
        if anneal is None:
            return sample_geometry(model, z, numbers, steps=6, guidance=2.0, generator=gen)
        return sample_geometry(model, z, numbers, 6, 2.0, gen, anneal=anneal)

    plain, zero, hot = draw(None), draw(0.0), draw(5.0)
    for f in ("lengths", "angles", "pos"):
        assert torch.equal(getattr(plain, f), getattr(zero, f))
    # The lattice is integrated as before; only the position steps are scaled by (1 + s t).
    assert torch.equal(hot.lengths, plain.lengths)
    assert torch.equal(hot.angles, plain.angles)
    assert not torch.allclose(hot.pos, plain.pos)


def test_most_consistent_picks_the_draw_that_re_encodes_to_the_latent() -> None:
    packed = _packed()
    model = _model(packed)
    batch = MaterialBatch.from_packed(packed)
    with torch.no_grad():
        z, _ = model.encode(batch)
    k = 3
    truth = FlowState(
        lengths=lengths_to_flow(batch.lengths, batch.num_atoms, model.len_mu, model.len_sigma),
        angles=angles_to_flow(batch.angles),
        pos=batch.frac,
    )
    gen = torch.Generator().manual_seed(1)
    rows = []
    # Material i's true geometry sits at draw i + 1 of its k; the others are noise.
    for i in range(2):
        for j in range(k):
            if j == i + 1:
                rows.append((truth.lengths[i], truth.angles[i], truth.pos[i]))
            else:
                rows.append(
                    (
                        torch.randn(3, generator=gen),
                        torch.rand(3, generator=gen) * 2 - 1,
                        torch.rand(truth.pos.shape[1:], generator=gen),
                    )
                )
    state = FlowState(*(torch.stack([r[f] for r in rows]) for f in range(3)))
    picked = most_consistent(
        model, z.repeat_interleave(k, 0), batch.numbers.repeat_interleave(k, 0), state, k
    )
    assert picked.tolist() == [1, 2]


def test_several_samples_per_latent_decode_one_crystal_each_deterministically() -> None:
    packed = _packed()
    model = _model(packed)
    z = torch.randn(3, model.cfg.d_z)
    kw = {"beam_width": 2, "steps": 4, "guidance": 2.0, "anneal": 5.0, "samples": 4, "chunk": 2}
    a = decode_latents(model, z, generator=torch.Generator().manual_seed(2), **kw)
    b = decode_latents(model, z, generator=torch.Generator().manual_seed(2), **kw)
    assert len(a) == 3
    for x, y in zip(a, b, strict=True):
        assert x.num_atoms >= 1
        assert torch.equal(torch.as_tensor(x.frac_coords), torch.as_tensor(y.frac_coords))


def test_beam_search_top_returns_the_best_beams_best_first() -> None:
    model = _model(_packed())
    z = torch.randn(5, model.cfg.d_z)
    best, best_score = beam_search(model, z, width=4, max_atoms=6)
    tokens, scores = beam_search(model, z, width=4, max_atoms=6, top=3)
    assert tokens.shape[:2] == (5, 3) and scores.shape == (5, 3)
    assert torch.equal(tokens[:, 0, : best.shape[1]], best)
    assert torch.equal(scores[:, 0], best_score)
    assert torch.isfinite(scores).all()
    assert (scores[:, :-1] >= scores[:, 1:]).all()


def test_several_beams_decode_one_crystal_per_latent_from_one_of_its_beams() -> None:
    model = _model(_packed())
    z = torch.randn(4, model.cfg.d_z)
    tokens, _ = beam_search(model, z, width=4, top=2)
    options = [
        {tuple(sorted(r[r > 0].tolist())) for r in tokens_to_numbers(tokens[i])}
        for i in range(len(z))
    ]
    crystals = decode_latents(
        model, z, beam_width=4, steps=4, beams=2, samples=2, generator=torch.Generator()
    )
    assert len(crystals) == 4
    for crystal, allowed in zip(crystals, options, strict=True):
        assert tuple(sorted(crystal.numbers.tolist())) in allowed
