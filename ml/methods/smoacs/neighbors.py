"""Batched periodic neighbour lists in torch, and differentiable edge lengths on them.

The list (which pairs, which periodic image) is discrete and built without gradients; the
edge lengths are recomputed from the current lattice and fractional coordinates at every step,
so gradients reach both. Built with a skin (a Verlet list): between rebuilds the exact
per-model graph (d < cutoff) is selected from it at every step, which equals matgl's own graph
as long as no pair moved by more than the skin.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["NeighborList", "build_neighbor_list", "edge_lengths"]

# Bounds the image search for nearly flat cells (lengths >= 2 Å and angles in [30, 150] deg
# keep real candidates far below it).
_MAX_IMAGES = 6
# Pair-image distances evaluated per chunk (memory bound on the GPU).
_CHUNK_ELEMENTS = 1 << 22


@dataclass
class NeighborList:
    """Edges ``src -> dst`` (global site indices) with integer image offsets of ``dst``.

    ``images`` are relative to the *unwrapped* fractional coordinates the list was built from:
    the edge vector is ``(frac[dst] + images - frac[src]) @ lattice[batch[src]]``.
    """

    src: torch.Tensor  # (E,) long
    dst: torch.Tensor  # (E,) long
    images: torch.Tensor  # (E, 3) float
    cutoff: float

    @property
    def num_edges(self) -> int:
        return int(self.src.numel())

    def select(self, mask: torch.Tensor) -> NeighborList:
        return NeighborList(self.src[mask], self.dst[mask], self.images[mask], self.cutoff)


def edge_lengths(
    nl: NeighborList, frac: torch.Tensor, lattice: torch.Tensor, batch: torch.Tensor
) -> torch.Tensor:
    """Differentiable lengths (E,) of the list's edges for the current geometry."""
    df = frac[nl.dst] + nl.images - frac[nl.src]
    vec = torch.einsum("ei,eij->ej", df, lattice[batch[nl.src]])
    # The tiny floor keeps the gradient finite if two atoms ever coincide.
    return torch.sqrt((vec * vec).sum(-1) + 1e-12)


def _image_ranges(lattice: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Images needed per axis (B, 3): floor(cutoff / plane spacing) + 1."""
    volume = torch.linalg.det(lattice).abs().clamp_min(1e-6)
    a, b, c = lattice[:, 0], lattice[:, 1], lattice[:, 2]
    cross = torch.stack(
        [torch.linalg.cross(b, c), torch.linalg.cross(c, a), torch.linalg.cross(a, b)], dim=1
    )
    spacing = volume[:, None] / cross.norm(dim=-1).clamp_min(1e-6)
    n = torch.floor(cutoff / spacing) + 1
    return n.clamp(max=_MAX_IMAGES).long()


@torch.no_grad()
def build_neighbor_list(
    lattice: torch.Tensor,
    frac: torch.Tensor,
    batch: torch.Tensor,
    num_atoms: torch.Tensor,
    cutoff: float,
) -> NeighborList:
    """All pairs (i, j, image) of the same crystal with 0 < distance < ``cutoff``.

    ``lattice`` (B, 3, 3), ``frac`` (S, 3) unwrapped, ``batch`` (S,), ``num_atoms`` (B,).
    """
    lattice = lattice.detach()
    frac = frac.detach()
    device = frac.device
    shift = torch.floor(frac)
    wrapped = frac - shift
    offsets = torch.zeros(len(num_atoms) + 1, dtype=torch.long, device=device)
    offsets[1:] = torch.cumsum(num_atoms, 0)
    ranges = _image_ranges(lattice, cutoff)
    counts = num_atoms.tolist()
    ranges_list = ranges.tolist()

    srcs, dsts, imgs = [], [], []
    start = 0
    num_crystals = len(counts)
    while start < num_crystals:
        # Grow the chunk while its padded pair-image tensor stays within the memory bound.
        stop = start + 1
        n_max = counts[start]
        r_max = list(ranges_list[start])
        while stop < num_crystals:
            n_new = max(n_max, counts[stop])
            r_new = [max(x, y) for x, y in zip(r_max, ranges_list[stop], strict=True)]
            n_img = (2 * r_new[0] + 1) * (2 * r_new[1] + 1) * (2 * r_new[2] + 1)
            if (stop + 1 - start) * n_new * n_new * n_img > _CHUNK_ELEMENTS:
                break
            n_max, r_max = n_new, r_new
            stop += 1
        s, d, m = _chunk_pairs(
            lattice[start:stop], wrapped, offsets, start, stop, n_max, r_max, cutoff
        )
        srcs.append(s)
        dsts.append(d)
        imgs.append(m)
        start = stop

    src = torch.cat(srcs)
    dst = torch.cat(dsts)
    img = torch.cat(imgs)
    # Images relative to the unwrapped coordinates: wrapped = frac - shift.
    img = img - shift[dst] + shift[src]
    return NeighborList(src, dst, img.to(frac.dtype), cutoff)


def _chunk_pairs(
    lattice: torch.Tensor,
    wrapped: torch.Tensor,
    offsets: torch.Tensor,
    start: int,
    stop: int,
    n_max: int,
    r_max: list[int],
    cutoff: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    device = wrapped.device
    local = torch.arange(n_max, device=device)
    first = offsets[start:stop]
    count = offsets[start + 1 : stop + 1] - first
    valid = local[None, :] < count[:, None]  # (nb, n)
    gidx = (first[:, None] + local[None, :]).clamp(max=max(int(offsets[-1]) - 1, 0))
    pos = wrapped[gidx] * valid[..., None]  # (nb, n, 3)

    axes = [torch.arange(-r, r + 1, device=device, dtype=wrapped.dtype) for r in r_max]
    grid = torch.cartesian_prod(*axes)  # (I, 3)
    # df[b, i, j, m] = pos_j + image_m - pos_i, in fractional units.
    df = pos[:, None, :, None, :] - pos[:, :, None, None, :] + grid[None, None, None]
    cart = torch.einsum("bijmk,bkl->bijml", df, lattice)
    dist2 = (cart * cart).sum(-1)
    pair_ok = valid[:, :, None] & valid[:, None, :]
    keep = (dist2 < cutoff * cutoff) & (dist2 > 1e-16) & pair_ok[..., None]
    b, i, j, m = keep.nonzero(as_tuple=True)
    src = first[b] + i
    dst = first[b] + j
    return src, dst, grid[m]
