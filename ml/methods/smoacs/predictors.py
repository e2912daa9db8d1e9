"""MEGNet (matgl 4.x) as a differentiable function of soft element distributions and geometry.

matgl's ``MEGNet.forward`` takes integer node types and a prebuilt graph. Here the element
lookup becomes ``D @ embedding_matrix`` (D: per-site distribution over the vocabulary), edge
lengths come from :func:`~ml.methods.smoacs.neighbors.edge_lengths` (differentiable in lattice
and coordinates), and everything after that reuses the checkpoint's own modules (bond
expansion, encoders, MEGNet blocks, Set2Set readouts, output MLP, target normaliser), so a
one-hot D on a real structure reproduces the stock prediction.
"""

from __future__ import annotations

import torch
from torch import nn

from ml.methods.smoacs.elements import ELEMENTS
from ml.methods.smoacs.neighbors import NeighborList

__all__ = ["EFORM_MODEL", "GAP_MODEL", "SoftMEGNet", "load_soft_megnet"]

GAP_MODEL = "MEGNet-MP-2019.4.1-BandGap-mfi"
EFORM_MODEL = "MEGNet-MP-2018.6.1-Eform"


def _load_matgl(model_dir: str, device: str) -> nn.Module:
    """The oracle's own matgl checkpoint (one copy per process and device), frozen: SMOACS
    differentiates through the inputs, never the weights."""
    from ml.oracles.megnet import load_megnet

    model = load_megnet(model_dir, device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class SoftMEGNet(nn.Module):
    """One MEGNet checkpoint taking (D, edges, edge lengths) instead of a DGL/PyG graph.

    ``state``: the fidelity index of a multi-fidelity checkpoint (band gap: 0 PBE, 1 GLLB-SC,
    2 HSE, 3 SCAN); ``None`` for single-fidelity checkpoints (zero two-component state).
    """

    def __init__(self, wrapped: nn.Module, state: int | None = None) -> None:
        super().__init__()
        inner = wrapped.model
        if tuple(inner.element_types) != ELEMENTS:
            raise ValueError("MEGNet element vocabulary differs from matgl DEFAULT_ELEMENTS")
        self.megnet = inner
        self.transformer = wrapped.transformer
        self.cutoff = float(inner.cutoff)
        self.state = state
        if (state is None) != (inner.embedding.ntypes_state is None):
            raise ValueError("state index must be given exactly for multi-fidelity models")

    @property
    def embedding_matrix(self) -> torch.Tensor:
        return self.megnet.embedding.layer_node_embedding.weight

    def _state_feat(self, num_graphs: int, like: torch.Tensor) -> torch.Tensor:
        emb = self.megnet.embedding
        if self.state is None:
            return like.new_zeros((num_graphs, 2))
        idx = torch.full((num_graphs,), self.state, dtype=torch.long, device=like.device)
        return emb.layer_state_embedding(idx)

    # cuDNN's LSTM (Set2Set readouts) refuses backward in eval mode; the native kernel
    # computes the same thing and differentiates in eval mode.
    @torch.backends.cudnn.flags(enabled=False)
    def forward(
        self,
        dist: torch.Tensor,
        nl: NeighborList,
        types: torch.Tensor,
        site_batch: torch.Tensor,
        num_graphs: int,
    ) -> torch.Tensor:
        """Predictions (num_graphs,) in the model's units.

        ``dist`` (E,) lengths of ``nl``'s edges (all below this model's cutoff);
        ``types`` (S, K) soft element distribution (rows sum to 1).
        """
        m = self.megnet
        edge_index = torch.stack([nl.src, nl.dst])
        edge_batch = site_batch[nl.src]
        num_nodes = types.shape[0]

        node_feat = types @ self.embedding_matrix
        edge_feat = m.bond_expansion(dist)
        if m.embedding.dim_edge_embedding is not None:
            edge_feat = m.embedding.layer_edge_embedding(edge_feat)
        state_feat = self._state_feat(num_graphs, node_feat)

        edge_feat = m.edge_encoder(edge_feat)
        node_feat = m.node_encoder(node_feat)
        state_feat = m.state_encoder(state_feat)
        for block in m.blocks:
            edge_feat, node_feat, state_feat = block(
                edge_index,
                edge_feat,
                node_feat,
                state_feat,
                site_batch,
                edge_batch,
                num_nodes,
                num_graphs,
            )
            if state_feat.dim() == 1:
                state_feat = state_feat.unsqueeze(0)
        node_vec = m.node_s2s(node_feat, site_batch, dim_size=num_graphs)
        edge_vec = m.edge_s2s(edge_feat, edge_batch, num_graphs=num_graphs)
        vec = torch.cat(
            [
                node_vec.view(num_graphs, -1),
                edge_vec.view(num_graphs, -1),
                state_feat.view(num_graphs, -1),
            ],
            dim=-1,
        )
        out = m.output_proj(vec).view(num_graphs)
        return self.transformer.inverse_transform(out)


def load_soft_megnet(model_dir: str, device: str, state: int | None = None) -> SoftMEGNet:
    """A :class:`SoftMEGNet` over the checkpoint in ``MATDESIGN_MODELS_DIR/matgl/<model_dir>``."""
    return SoftMEGNet(_load_matgl(model_dir, device), state).to(device)
