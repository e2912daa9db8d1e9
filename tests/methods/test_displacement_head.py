"""The displacement read-out of the Wyckoff generator: vectors along the atoms' differences."""

from __future__ import annotations

import torch

from ml.generative.periodic import min_image
from ml.methods.conditional.displacement import DisplacementHead


def _head(seed: int = 0) -> DisplacementHead:
    torch.manual_seed(seed)
    head = DisplacementHead(d=16, heads=4, pair_dim=8)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return head.eval()


def _inputs(n: int, seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(1, n, 3, generator=g)
    h = torch.randn(1, n, 16, generator=g)
    pair = torch.randn(1, n, n, 8, generator=g)
    delta = min_image(pos[:, None, :, :] - pos[:, :, None, :])  # [b, i, j] = from i to j
    return h, pair, delta, torch.ones(1, n, dtype=torch.bool)


def test_an_atom_with_one_neighbour_moves_along_the_difference_to_it() -> None:
    head = _head()
    h, pair, delta, _ = _inputs(3)
    mask = torch.tensor([[True, True, False]])  # the third atom is padding
    out = head(h, pair, delta, mask)
    # Each attends itself (displacement 0) and the other: out_i = sum_h c_h(i) a_h(i, j) d_ij.
    for i, j in ((0, 1), (1, 0)):
        att = torch.softmax(
            torch.stack([_score(head, h, pair, i, k) for k in (0, 1)], dim=-1), dim=-1
        )[:, j]
        expected = (head.coef(h)[0, i] * att).sum() * delta[0, i, j]
        assert torch.allclose(out[0, i], expected, atol=1e-5), (i, out[0, i], expected)
        cos = torch.nn.functional.cosine_similarity(out[0, i], delta[0, i, j], dim=0)
        assert abs(float(cos)) > 0.999


def _score(
    head: DisplacementHead, h: torch.Tensor, pair: torch.Tensor, i: int, k: int
) -> torch.Tensor:
    """Per-head attention logit of atom i on atom k, written out."""
    d, heads = h.shape[-1], head.heads
    q, kk = head.qk(h)[0].view(-1, 2, heads, d // heads).unbind(1)
    return (q[i] * kk[k]).sum(-1) * (d // heads) ** -0.5 + head.pair_bias(pair[0, i, k])


def test_permuting_atoms_permutes_the_output() -> None:
    head = _head()
    h, pair, delta, mask = _inputs(6)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    out = head(h, pair, delta, mask)
    permuted = head(
        h[:, perm], pair[:, perm][:, :, perm], delta[:, perm][:, :, perm], mask[:, perm]
    )
    assert torch.allclose(permuted, out[:, perm], atol=1e-5)


def test_padding_does_not_change_the_real_atoms() -> None:
    head = _head()
    h, pair, delta, mask = _inputs(5)
    out = head(h[:, :3], pair[:, :3, :3], delta[:, :3, :3], mask[:, :3])
    padded = head(h, pair, delta, torch.tensor([[True, True, True, False, False]]))
    assert torch.allclose(padded[:, :3], out, atol=1e-5)
