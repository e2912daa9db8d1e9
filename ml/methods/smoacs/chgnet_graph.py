"""CHGNet's crystal graph for a whole population, built in torch from SMOACS's neighbour list.

CHGNet (0.3.0) reads three index sets from its ``CrystalGraph``: the directed atom-graph edges
(``d < 6`` Å), their pairing into undirected bonds (``i -> j`` at image ``n`` with ``j -> i`` at
``-n``; both share one bond basis), and the line graph of "angles": every ordered pair of two
distinct directed edges that leave the same atom, both shorter than 3 Å. chgnet builds these per
structure on the CPU; here they are made for all candidates at once (sort/unique on the
device), so the graph follows the geometry at every step at little cost. Only the indices are
built here (no gradients); lengths and angles are recomputed from the differentiable geometry.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ml.methods.smoacs.neighbors import NeighborList

__all__ = ["ChgnetTopology", "chgnet_topology"]


@dataclass
class ChgnetTopology:
    """Index sets of one batched CHGNet graph (edges are rows of ``edges``)."""

    edges: NeighborList  # directed atom-graph edges (src = center atom)
    directed2undirected: torch.Tensor  # (E,) long
    undirected2directed: torch.Tensor  # (U,) long
    bond_graph: (
        torch.Tensor
    )  # (A, 5) long: atom, undirected 1, directed 1, undirected 2, directed 2


@torch.no_grad()
def chgnet_topology(
    nl: NeighborList,
    dist: torch.Tensor,
    num_sites: int,
    atom_cutoff: float,
    bond_cutoff: float,
) -> ChgnetTopology:
    """CHGNet's graph indices from a (skin) neighbour list and its current edge lengths."""
    dist = dist.detach()
    keep = dist <= atom_cutoff  # chgnet's neighbour search includes d == cutoff
    edges = nl.select(keep)
    d = dist[keep]
    src, dst = edges.src, edges.dst
    img = edges.images.round().long()
    # The canonical member of a pair (i, j, n) ~ (j, i, -n): i < j, or i == j with the first
    # non-zero image component positive (a self-image bond).
    first_nz = torch.where(img != 0, img, torch.zeros_like(img))
    lead = torch.gather(first_nz, 1, (img != 0).long().argmax(1, keepdim=True)).squeeze(1)
    canonical = (src < dst) | ((src == dst) & (lead > 0))
    a = torch.where(canonical, src, dst)
    b = torch.where(canonical, dst, src)
    n = torch.where(canonical[:, None], img, -img)
    key = torch.stack([a, b, n[:, 0], n[:, 1], n[:, 2]], dim=1)
    _, d2u = torch.unique(key, dim=0, return_inverse=True)
    num_u = int(d2u.max()) + 1 if len(d2u) else 0
    u2d = torch.zeros(num_u, dtype=torch.long, device=src.device)
    order = torch.arange(len(src), device=src.device)
    u2d.scatter_(0, d2u[canonical], order[canonical])
    # Line graph: ordered pairs of distinct short edges sharing their center atom.
    short = torch.nonzero(d < bond_cutoff).flatten()
    short = short[torch.argsort(src[short], stable=True)]
    center = src[short]
    count = torch.bincount(center, minlength=num_sites)
    start = torch.cumsum(count, 0) - count
    reps = count[center]
    e1 = torch.repeat_interleave(short, reps)
    c1 = torch.repeat_interleave(center, reps)
    offsets = torch.cumsum(reps, 0) - reps
    within = torch.arange(int(reps.sum()), device=src.device) - torch.repeat_interleave(
        offsets, reps
    )
    e2 = short[start[c1] + within]
    distinct = e1 != e2
    e1, e2, c1 = e1[distinct], e2[distinct], c1[distinct]
    bond_graph = torch.stack([c1, d2u[e1], e1, d2u[e2], e2], dim=1)
    return ChgnetTopology(edges, d2u, u2d, bond_graph)
