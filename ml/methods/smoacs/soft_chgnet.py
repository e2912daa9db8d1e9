"""CHGNet 0.3.0 and the trained band-gap model as one differentiable function of soft species,
fractional coordinates and lattice (SMOACS's default predictors).

One forward pass through CHGNet's own modules gives
  * the energy per atom (CHGNet's energy head plus its composition model, AtomRef),
  * the formation energy: that minus the probability-weighted elemental references of
    ``chgnet-eform`` (:mod:`ml.oracles.references`),
  * the band gap of ``gap-chgnet-ft``: its heads on the same (frozen) backbone's features,
  * with ``forces=True`` also the force and stress magnitudes, by differentiating the energy
    with respect to the atom positions and a cell strain, as CHGNet itself does.

Soft species: CHGNet embeds atom ``Z`` as row ``Z - 1`` of ``atom_embedding``; here a site's
distribution D over SMOACS's vocabulary gives ``D @ W[Z(vocab) - 1]``, and the composition
model and the references are the same expectations. The graph indices come from
:mod:`ml.methods.smoacs.chgnet_graph` (rebuilt from the current geometry each call); bond
lengths and angles are recomputed from the differentiable positions. On one-hot D this equals
the stock models (``tests/test_smoacs_soft_chgnet.py``).
"""

from __future__ import annotations

import copy
import math
import threading
from dataclasses import dataclass

import numpy as np
import torch
from pymatgen.core import Element
from torch import nn

from ml.methods.smoacs.chgnet_graph import chgnet_topology
from ml.methods.smoacs.elements import ELEMENTS
from ml.methods.smoacs.neighbors import NeighborList

__all__ = ["CHGNET_CUTOFF", "SoftChgnet", "SoftChgnetOutput", "load_soft_chgnet"]

CHGNET_CUTOFF = 6.0  # CHGNet 0.3.0's atom-graph cutoff (Å)
_BOND_CUTOFF = 3.0
_GPA = 160.21766208  # eV/Å^3 -> GPa
# Soft formation-energy penalty (eV/atom per unit probability) on an element without a
# reference (only Ne): it keeps the distribution off it; the exact value is NaN.
_NO_REF_PENALTY = 10.0

_CACHE: dict[str, SoftChgnet] = {}
_LOCK = threading.Lock()


class _SoftSpecies(nn.Module):
    """Stands in for CHGNet's ``AtomEmbedding``: CHGNet calls it with ``atomic_numbers - 1``,
    and SoftChgnet passes the (S, K) distribution as ``atomic_numbers``, so ``x + 1`` is D."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 1.0) @ self.weight


@dataclass
class SoftChgnetOutput:
    energy: torch.Tensor  # (B,) eV/atom
    formation_energy: torch.Tensor  # (B,) eV/atom
    band_gap: torch.Tensor  # (B,) eV (expected gap while soft; the oracle's rule when hard)
    force: torch.Tensor | None  # (B,) RMS force (eV/Å)
    stress: torch.Tensor | None  # (B,) Frobenius norm of the stress (GPa)
    lonely: torch.Tensor  # (B,) bool: an atom without a neighbour within 6 Å (oracle: NaN)


class SoftChgnet(nn.Module):
    """CHGNet backbone (a private copy with a soft atom embedding) plus the gap heads."""

    cutoff = CHGNET_CUTOFF

    def __init__(self, gap_model: nn.Module, refs: dict[str, float]) -> None:
        super().__init__()
        backbone = copy.deepcopy(gap_model.backbone)
        z = torch.tensor([Element(s).Z - 1 for s in ELEMENTS])
        emb = backbone.atom_embedding.embedding.weight
        backbone.atom_embedding = _SoftSpecies(emb[z.to(emb.device)])
        self.backbone = backbone
        self.gap_model = gap_model  # heads only; its backbone is not called
        comp = backbone.composition_model.fc.weight.detach().view(-1)
        self.register_buffer("atom_ref", comp[z.to(comp.device)].clone())
        ref = np.array([refs.get(s, math.nan) for s in ELEMENTS])
        self.register_buffer(
            "elemental_ref", torch.tensor(np.nan_to_num(ref, nan=0.0), dtype=torch.float32)
        )
        self.register_buffer("no_ref", torch.tensor(~np.isfinite(ref), dtype=torch.float32))
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(
        self,
        frac: torch.Tensor,
        lattice: torch.Tensor,
        nl: NeighborList,
        types: torch.Tensor,
        site_batch: torch.Tensor,
        num_graphs: int,
        forces: bool = False,
        hard: bool = False,
    ) -> SoftChgnetOutput:
        """``frac`` (S, 3), ``lattice`` (B, 3, 3), ``nl`` a neighbour list reaching >= 6 Å,
        ``types`` (S, K) distributions; ``hard``: the oracle's metal rule for the gap and NaN
        formation energy for an element without a reference."""
        from chgnet.model.model import BatchedGraph

        m = self.backbone
        strain = None
        if forces:
            strain = torch.zeros_like(lattice).requires_grad_(True)
            eye = torch.eye(3, device=lattice.device, dtype=lattice.dtype)
            lattice = lattice @ (eye + strain)
        site_lat = lattice[site_batch]
        pos = torch.einsum("si,sij->sj", frac, site_lat)
        if forces and not pos.requires_grad:
            pos = pos.detach().requires_grad_(True)
        shift = torch.einsum("ei,eij->ej", nl.images, site_lat[nl.src])
        with torch.no_grad():
            vec = pos[nl.dst] + shift - pos[nl.src]
            dist = vec.norm(dim=-1)
        topo = chgnet_topology(nl, dist, len(frac), self.cutoff, _BOND_CUTOFF)
        e = topo.edges
        e_shift = torch.einsum("ei,eij->ej", e.images, site_lat[e.src])
        zeros = torch.zeros_like(e_shift)
        eye = torch.eye(3, device=pos.device, dtype=pos.dtype)
        bases_ag, bases_bg, bond_vectors = m.bond_basis_expansion(
            center=pos[e.src],
            neighbor=pos[e.dst] + e_shift,
            undirected2directed=topo.undirected2directed,
            image=zeros,
            lattice=eye,
        )
        bg = topo.bond_graph
        if len(bg):
            angle_bases = m.angle_basis_expansion(bond_vectors[bg[:, 2]], bond_vectors[bg[:, 4]])
            bond_graph = bg[:, [0, 1, 3]]
        else:
            angle_bases, bond_graph = torch.tensor([]), torch.tensor([])
        graph = BatchedGraph(
            atomic_numbers=types,  # read only by the soft embedding (see _SoftSpecies)
            bond_bases_ag=bases_ag,
            bond_bases_bg=bases_bg,
            angle_bases=angle_bases,
            batched_atom_graph=torch.stack([e.src, e.dst], dim=1),
            batched_bond_graph=bond_graph,
            atom_owners=site_batch,
            directed2undirected=topo.directed2undirected,
            atom_positions=[pos],
            strains=[strain] if strain is not None else [],
            volumes=torch.linalg.det(lattice).abs(),
        )
        out = m._compute(graph, return_atom_feas=True, return_crystal_feas=True)
        n = out["atoms_per_graph"].to(pos.dtype)
        e_model = out["e"]  # per atom, without the composition model
        comp = torch.zeros(num_graphs, device=pos.device).index_add(
            0, site_batch, types @ self.atom_ref
        )
        energy = e_model + comp / n
        ref = torch.zeros(num_graphs, device=pos.device).index_add(
            0, site_batch, types @ self.elemental_ref
        )
        no_ref = torch.zeros(num_graphs, device=pos.device).index_add(
            0, site_batch, types @ self.no_ref
        )
        eform = energy - ref / n
        if hard:
            eform = torch.where(no_ref > 0, torch.full_like(eform, math.nan), eform)
        else:
            eform = eform + _NO_REF_PENALTY * no_ref / n
        gap = self._gap(out, site_batch, num_graphs, n, hard)
        force = stress = None
        if forces:
            assert strain is not None
            total = (e_model * n).sum()
            g_pos, g_strain = torch.autograd.grad(total, [pos, strain], create_graph=True)
            f2 = torch.zeros(num_graphs, device=pos.device).index_add(
                0, site_batch, (g_pos * g_pos).sum(-1)
            )
            force = torch.sqrt(f2 / n + 1e-12)
            volume = torch.linalg.det(lattice).abs().clamp_min(1e-3)
            s = g_strain / volume[:, None, None] * _GPA
            stress = torch.sqrt((s * s).sum((-1, -2)) + 1e-12)
        degree = torch.bincount(e.src, minlength=len(frac))
        lonely = torch.zeros(num_graphs, device=pos.device).index_add(
            0, site_batch, (degree == 0).float()
        )
        return SoftChgnetOutput(energy, eform, gap, force, stress, lonely > 0)

    def _gap(
        self,
        out: dict,
        site_batch: torch.Tensor,
        num_graphs: int,
        n: torch.Tensor,
        hard: bool,
    ) -> torch.Tensor:
        """The gap model's features (``ml.oracles.gap_model.crystal_features``) from the same
        pass, then its heads: mean of the final atom features, mean and max of those before
        the last convolution."""
        pre = torch.cat(out["atom_fea"], dim=0)
        mean_final = out["crystal_fea"] / n[:, None]
        mean_pre = (
            torch.zeros(num_graphs, pre.shape[1], device=pre.device).index_add(0, site_batch, pre)
            / n[:, None]
        )
        idx = site_batch[:, None].expand_as(pre)
        max_pre = torch.full((num_graphs, pre.shape[1]), -math.inf, device=pre.device)
        max_pre = max_pre.scatter_reduce(0, idx, pre, reduce="amax", include_self=False)
        logit, gap = self.gap_model.heads(torch.cat([mean_final, mean_pre, max_pre], dim=1))
        if hard:
            return torch.where(logit >= 0, gap, torch.zeros_like(gap))
        # The expected gap: differentiable through the metal/non-metal decision.
        return torch.sigmoid(logit) * gap


def load_soft_chgnet(device: str) -> SoftChgnet:
    """The SMOACS CHGNet predictor on ``device`` (cached): the ``gap-chgnet-ft`` checkpoint's
    frozen CHGNet 0.3.0 backbone and heads, and CHGNet's elemental references."""
    from ml.oracles.gap import load_trained_gap
    from ml.oracles.references import load_elemental_refs

    with _LOCK:
        if device not in _CACHE:
            model = SoftChgnet(load_trained_gap(device), load_elemental_refs()).to(device)
            model.eval()
            _CACHE[device] = model
        return _CACHE[device]
