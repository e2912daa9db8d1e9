"""The CliqueFlowmer network: encoder, clique-chain predictor, atom-type and geometry decoders.

Follows ``docs/methods.md`` section 1 (which restates the paper's section 3):

- encoder: MLP embeddings of lengths, angles and each fractional position; atom-type
  embeddings condition the transformer through AdaLN; the (2 + N_atom) output tokens are pooled
  by attention with one learned query; GELU + LayerNorm + Linear give mean and log-std of z;
- clique chain Z[i, j] = z[i * (d_clique - d_knot) + j] and the decomposed predictor
  f(z) = sum_c MLP([Z_c, onehot(c)]);
- atom decoder: causal transformer over [START, a_1 .. a_N] predicting [a_1 .. a_N, STOP],
  conditioned on z_mod = LayerNorm(GELU(Linear(z))) through AdaLN;
- geometry decoder: flow-matching velocity of (lengths, angles, positions) from a non-causal
  transformer with AdaLN on atom-type (plus time) embeddings and, in every block, cross-attention
  to the clique tokens LayerNorm(GELU(MLP([Z_c, onehot(c)]))). With ``pair_dim`` > 0 (not in
  the paper) the atoms' pair geometry at the current flow state joins the self-attention's
  values and a displacement read-out adds position velocities along the atoms' differences,
  as in the conditional generator (``ml/methods/conditional/displacement.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ml.crystal import lattice_from_params_torch
from ml.generative.periodic import min_image
from ml.methods.cliqueflowmer.config import PAD, START, STOP, VOCAB, CliqueFlowmerConfig
from ml.methods.cliqueflowmer.geometry import (
    ANGLE_MAX,
    ANGLE_MIN,
    LengthPrior,
    MaterialBatch,
    angles_from_flow,
    angles_to_flow,
    lengths_from_flow,
    lengths_to_flow,
)
from ml.methods.cliqueflowmer.layers import (
    AdaLNTransformer,
    AttentionPool,
    init_pair_values,
    mlp,
    time_embedding,
)
from ml.methods.conditional.displacement import DisplacementHead
from ml.methods.conditional.model import pair_features

LOG_STD_MIN, LOG_STD_MAX = -9.0, 2.0


def clique_index(cfg: CliqueFlowmerConfig) -> torch.Tensor:
    """(n_cliques, d_clique) indices into z: neighbouring cliques share d_knot entries."""
    step = cfg.d_clique - cfg.d_knot
    rows = torch.arange(cfg.n_cliques)[:, None] * step
    return rows + torch.arange(cfg.d_clique)[None, :]


POSITION_FREQS = 4


def position_features(frac: torch.Tensor) -> torch.Tensor:
    """Fourier features sin/cos(2 pi k x), k = 1..4, per coordinate (24 values per atom):
    periodic, so a position and its periodic images look the same to the model."""
    k = torch.arange(1, POSITION_FREQS + 1, device=frac.device, dtype=frac.dtype)
    ang = 2 * math.pi * frac[..., None] * k
    return torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1).flatten(-2)


def atom_tokens(numbers: torch.Tensor) -> torch.Tensor:
    """Atomic numbers (0 = padding) -> tokens (PAD for padding)."""
    return torch.where(numbers > 0, numbers + 2, torch.full_like(numbers, PAD))


def lifted_logit_normal(
    n: int, p_uniform: float, device: torch.device, generator: torch.Generator | None = None
) -> torch.Tensor:
    """t = sigmoid(N(0, 1)) with probability 1 - p_uniform, else U[0, 1]."""
    normal = torch.sigmoid(torch.randn(n, device=device, generator=generator))
    uniform = torch.rand(n, device=device, generator=generator)
    pick = torch.rand(n, device=device, generator=generator) < p_uniform
    return torch.where(pick, uniform, normal)


@dataclass
class FlowState:
    """Geometry in the flow's normalised coordinates (see ``geometry.py``)."""

    lengths: torch.Tensor  # (B, 3)
    angles: torch.Tensor  # (B, 3)
    pos: torch.Tensor  # (B, A, 3)


class CliqueFlowmer(nn.Module):
    def __init__(self, cfg: CliqueFlowmerConfig, prior: LengthPrior | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        d, h, r = cfg.d_model, cfg.mlp_dim, cfg.n_registers
        prior = prior or LengthPrior.default()
        self.register_buffer("len_mu", torch.tensor(prior.mu, dtype=torch.float32))
        self.register_buffer("len_sigma", torch.tensor(prior.sigma, dtype=torch.float32))
        # Labels are standardised for the predictor; f(z) is reported in label units.
        self.register_buffer("y_mean", torch.zeros(()))
        self.register_buffer("y_std", torch.ones(()))
        self.register_buffer("clique_idx", clique_index(cfg), persistent=False)
        self.register_buffer("clique_onehot", torch.eye(cfg.n_cliques), persistent=False)

        def transformer(cross: bool = False, pair_dim: int = 0) -> AdaLNTransformer:
            return AdaLNTransformer(
                d,
                cfg.n_blocks,
                cfg.n_heads,
                cfg.ffn_dim,
                cfg.dropout,
                cfg.ada_rank,
                cross,
                pair_dim,
            )

        # Encoder.
        self.enc_len = mlp(3, h, d, cfg.n_mlp)
        self.enc_ang = mlp(3, h, d, cfg.n_mlp)
        self.enc_pos = mlp(6 * POSITION_FREQS, h, d, cfg.n_mlp)
        self.enc_atom = nn.Embedding(VOCAB, d)
        # AdaLN conditioning of the non-atom tokens: registers, lengths, angles.
        self.enc_role = nn.Embedding(r + 2, d)
        self.enc_registers = nn.Parameter(torch.randn(r, d) * 0.02)
        self.encoder = transformer()
        self.pool = AttentionPool(d, cfg.n_heads)
        self.enc_post = nn.Sequential(nn.GELU(), nn.LayerNorm(d))
        self.enc_out = nn.Linear(d, 2 * cfg.d_z)

        # Clique-decomposed predictor.
        d_in = cfg.d_clique + cfg.n_cliques
        self.predictor = mlp(d_in, h, 1, cfg.n_mlp)

        # Atom-type decoder.
        self.z_mod = nn.Sequential(nn.Linear(cfg.d_z, d), nn.GELU(), nn.LayerNorm(d))
        self.dec_tok = nn.Embedding(VOCAB, d)
        self.dec_pos = nn.Embedding(cfg.max_atoms + 2, d)
        self.dec_registers = nn.Parameter(torch.randn(r, d) * 0.02)
        self.atom_decoder = transformer()
        self.atom_head = mlp(d, h, VOCAB, cfg.n_mlp)

        # Geometry decoder (flow).
        self.geo_len = mlp(3, h, d, cfg.n_mlp)
        self.geo_ang = mlp(3, h, d, cfg.n_mlp)
        self.geo_pos = mlp(6 * POSITION_FREQS, h, d, cfg.n_mlp)
        self.geo_atom = nn.Embedding(VOCAB, d)
        self.geo_role = nn.Embedding(r + 2, d)
        self.geo_registers = nn.Parameter(torch.randn(r, d) * 0.02)
        self.geo_time = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.geo_latent = nn.Sequential(mlp(d_in, h, d, cfg.n_mlp), nn.GELU(), nn.LayerNorm(d))
        self.flow = transformer(cross=True, pair_dim=cfg.pair_dim)
        self.out_len = mlp(d, h, 3, cfg.n_mlp)
        self.out_ang = mlp(d, h, 3, cfg.n_mlp)
        self.out_pos = mlp(d, h, 3, cfg.n_mlp)
        # Pair geometry: created last and only when asked for, so pair_dim = 0 draws the same
        # initial weights and has the released checkpoints' state dict keys.
        self.geo_pair: nn.Module | None = None
        self.displace: DisplacementHead | None = None
        if cfg.pair_dim:
            pair_in = 6 * cfg.pair_freqs + cfg.distance_rbf
            self.geo_pair = mlp(pair_in, cfg.pair_dim, cfg.pair_dim, 1)
            self.displace = DisplacementHead(d, cfg.n_heads, cfg.pair_dim)
            init_pair_values(self.flow)

    # ------------------------------------------------------------------ prior and labels
    def set_prior(self, prior: LengthPrior) -> None:
        self.len_mu.copy_(torch.as_tensor(prior.mu, dtype=torch.float32))
        self.len_sigma.copy_(torch.as_tensor(prior.sigma, dtype=torch.float32))

    def set_label_stats(self, mean: float, std: float) -> None:
        self.y_mean.fill_(float(mean))
        self.y_std.fill_(max(float(std), 1e-6))

    # ------------------------------------------------------------------ encoder
    def encode(self, batch: MaterialBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-std of q(z | material), each (B, d_z)."""
        b = batch.numbers.shape[0]
        r = self.cfg.n_registers
        len_in = lengths_to_flow(batch.lengths, batch.num_atoms, self.len_mu, self.len_sigma)
        ang_in = angles_to_flow(batch.angles)
        x = torch.cat(
            [
                self.enc_registers.expand(b, -1, -1),
                self.enc_len(len_in)[:, None],
                self.enc_ang(ang_in)[:, None],
                self.enc_pos(position_features(batch.frac)),
            ],
            dim=1,
        )
        roles = self.enc_role.weight.expand(b, -1, -1)
        cond = torch.cat([roles, self.enc_atom(atom_tokens(batch.numbers))], dim=1)
        mask = batch.mask
        valid = torch.cat([mask.new_ones(b, r + 2), mask], dim=1)
        out = self.encoder(x, cond, mask=valid[:, None, None, :])
        # Pool the (2 + N_atom) lengths/angles/atom tokens; registers are scratch space.
        pooled = self.pool(out[:, r:], valid[:, r:])
        mu, log_std = self.enc_out(self.enc_post(pooled)).chunk(2, dim=-1)
        return mu, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    # ------------------------------------------------------------------ cliques, predictor
    def chain(self, z: torch.Tensor) -> torch.Tensor:
        """(..., d_z) -> (..., n_cliques, d_clique)."""
        return z[..., self.clique_idx]

    def _clique_inputs(self, z: torch.Tensor) -> torch.Tensor:
        cliques = self.chain(z)
        onehot = self.clique_onehot.to(cliques.dtype).expand(*cliques.shape[:-1], -1)
        return torch.cat([cliques, onehot], dim=-1)

    def predict_standardised(self, z: torch.Tensor) -> torch.Tensor:
        return self.predictor(self._clique_inputs(z)).squeeze(-1).sum(-1)

    def predict(self, z: torch.Tensor) -> torch.Tensor:
        """f(z) in label units, (...,)."""
        return self.predict_standardised(z).float() * self.y_std + self.y_mean

    # ------------------------------------------------------------------ atom decoder
    def modulation(self, z: torch.Tensor) -> torch.Tensor:
        return self.z_mod(z)

    def atom_logits(self, zmod: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, L, VOCAB) for input tokens (B, L) starting with START."""
        b, n = tokens.shape
        r = self.cfg.n_registers
        pos = torch.arange(n, device=tokens.device)
        x = torch.cat(
            [self.dec_registers.expand(b, -1, -1), self.dec_tok(tokens) + self.dec_pos(pos)],
            dim=1,
        )
        total = n + r
        causal = torch.ones(total, total, dtype=torch.bool, device=tokens.device).tril()
        valid = torch.cat([tokens.new_ones(b, r, dtype=torch.bool), tokens != PAD], dim=1)
        mask = causal[None, None] & valid[:, None, None, :]
        out = self.atom_decoder(x, zmod[:, None], mask=mask)[:, r:]
        logits = self.atom_head(out)
        # Padding and START are never predicted.
        never = torch.zeros(VOCAB, dtype=torch.bool, device=tokens.device)
        never[PAD] = never[START] = True
        return logits.masked_fill(never, float("-inf"))

    # ------------------------------------------------------------------ geometry decoder
    def clique_tokens(self, z: torch.Tensor) -> torch.Tensor:
        return self.geo_latent(self._clique_inputs(z))

    def pair_geometry(
        self, numbers: torch.Tensor, state: FlowState
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Pair embedding (B, A, A, pair_dim) and minimum-image displacements (B, A, A, 3)
        from atom i to atom j in the current flow state; None for the released network."""
        if self.geo_pair is None:
            return None
        num_atoms = (numbers > 0).sum(1).clamp(min=1)
        # Noisy or mid-integration states can leave the data's range: clamp so the cell stays
        # finite (lengths) and non-degenerate (angles).
        lengths = lengths_from_flow(
            state.lengths.float().clamp(-8.0, 8.0), num_atoms, self.len_mu, self.len_sigma
        )
        angles = angles_from_flow(state.angles.float()).clamp(ANGLE_MIN, ANGLE_MAX)
        matrix = lattice_from_params_torch(lengths, angles)
        pos = state.pos.float()
        diff = pos[:, :, None] - pos[:, None, :]
        pair = self.geo_pair(pair_features(diff, matrix, self.cfg))
        # Zero, not merely masked, at padding: a masked key still multiplies its pair values
        # by a zero weight, and 0 * NaN from a stray padded position would reach real atoms.
        real = numbers > 0
        both = (real[:, :, None] & real[:, None, :])[..., None]
        pair = torch.where(both, pair, torch.zeros_like(pair))
        return pair, torch.where(both, min_image(-diff), torch.zeros_like(diff))

    def velocity(
        self,
        ztok: torch.Tensor,
        numbers: torch.Tensor,
        state: FlowState,
        t: torch.Tensor,
    ) -> FlowState:
        """Predicted velocity of the geometry at time t (B,), given clique tokens (B, C, d)."""
        b = numbers.shape[0]
        r = self.cfg.n_registers
        x = torch.cat(
            [
                self.geo_registers.expand(b, -1, -1),
                self.geo_len(state.lengths)[:, None],
                self.geo_ang(state.angles)[:, None],
                self.geo_pos(position_features(state.pos)),
            ],
            dim=1,
        )
        temb = self.geo_time(time_embedding(t, self.cfg.d_model).to(x.dtype))
        roles = self.geo_role.weight.expand(b, -1, -1)
        cond = torch.cat([roles, self.geo_atom(atom_tokens(numbers))], dim=1) + temb[:, None]
        mask = numbers > 0
        valid = torch.cat([mask.new_ones(b, r + 2), mask], dim=1)
        geo = self.pair_geometry(numbers, state)
        # Registers, lengths and angles have no pair geometry: zero rows and columns.
        pair_tok = None if geo is None else F.pad(geo[0], (0, 0, r + 2, 0, r + 2, 0))
        out = self.flow(x, cond, mask=valid[:, None, None, :], context=ztok, pair=pair_tok)
        atoms = out[:, r + 2 :]
        pos = self.out_pos(atoms)
        if self.displace is not None and geo is not None:
            pos = pos + self.displace(atoms, geo[0], geo[1], mask)
        return FlowState(
            lengths=self.out_len(out[:, r]),
            angles=self.out_ang(out[:, r + 1]),
            pos=pos,
        )

    # ------------------------------------------------------------------ training loss
    def loss(
        self,
        batch: MaterialBatch,
        beta: float,
        tau_pred: float,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and its detached parts (atom NLL + flow + tau_pred * pred + beta * KL).

        Parts stay tensors so a training loop can average them without a device sync per step.
        """
        cfg = self.cfg
        dev = batch.numbers.device
        b = batch.numbers.shape[0]
        mask = batch.mask
        mu, log_std = self.encode(batch)
        mu, log_std = mu.float(), log_std.float()
        z = mu + torch.exp(log_std) * torch.randn(mu.shape, device=dev, generator=generator)

        # Atom types: next-token NLL summed over the sequence (STOP included).
        tokens = atom_tokens(batch.numbers)
        start = torch.full((b, 1), START, dtype=torch.long, device=dev)
        inputs = torch.cat([start, tokens], dim=1)
        targets = torch.cat([tokens, torch.full_like(start, PAD)], dim=1)
        targets[torch.arange(b, device=dev), batch.num_atoms] = STOP
        logits = self.atom_logits(self.modulation(z), inputs).float()
        nll = F.cross_entropy(
            logits.reshape(-1, VOCAB), targets.reshape(-1), ignore_index=PAD, reduction="none"
        )
        atom_loss = nll.view(b, -1).sum(1).mean()

        # Geometry: flow matching from the prior to the data.
        t = lifted_logit_normal(b, cfg.p_time_uniform, dev, generator)
        x1_len = lengths_to_flow(batch.lengths, batch.num_atoms, self.len_mu, self.len_sigma)
        x1_ang = angles_to_flow(batch.angles)
        x0_len = torch.randn(x1_len.shape, device=dev, generator=generator)
        x0_ang = torch.rand(x1_ang.shape, device=dev, generator=generator) * 2 - 1
        x0_pos = torch.rand(batch.frac.shape, device=dev, generator=generator)
        # Positions move along the shortest periodic path (same crystal, shorter flow).
        d_pos = min_image(batch.frac - x0_pos)
        tt = t[:, None]
        state = FlowState(
            lengths=(1 - tt) * x0_len + tt * x1_len,
            angles=(1 - tt) * x0_ang + tt * x1_ang,
            pos=x0_pos + tt[:, None] * d_pos,
        )
        drop = torch.rand(b, device=dev, generator=generator) < cfg.p_latent_drop
        noise = torch.randn(z.shape, device=dev, generator=generator)
        z_flow = torch.where(drop[:, None], noise, z)
        v = self.velocity(self.clique_tokens(z_flow), batch.numbers, state, t)
        len_loss = ((v.lengths.float() - (x1_len - x0_len)) ** 2).mean()
        ang_loss = ((v.angles.float() - (x1_ang - x0_ang)) ** 2).mean()
        pos_err = ((v.pos.float() - d_pos) ** 2).mean(-1) * mask
        pos_loss = (pos_err.sum(1) / batch.num_atoms.clamp(min=1)).mean()
        flow_loss = len_loss + ang_loss + cfg.tau_pos * pos_loss

        # Property prediction on standardised labels (unlabelled rows are skipped).
        pred = self.predict_standardised(z).float()
        if batch.y is not None:
            known = torch.isfinite(batch.y)
            y = torch.where(known, batch.y, torch.zeros_like(batch.y))
            pred_loss = (((pred - y) ** 2) * known).sum() / known.sum().clamp(min=1)
        else:
            pred_loss = pred.new_zeros(())

        # KL of one random clique per material against N(0, I).
        c = torch.randint(cfg.n_cliques, (b,), device=dev, generator=generator)
        zc_mu = self.chain(mu)[torch.arange(b, device=dev), c]
        zc_ls = self.chain(log_std)[torch.arange(b, device=dev), c]
        kl = 0.5 * (zc_mu**2 + torch.exp(2 * zc_ls) - 1 - 2 * zc_ls).sum(-1).mean()

        total = cfg.temp_atom * atom_loss + flow_loss + tau_pred * pred_loss + beta * kl
        parts = {
            "loss": total.detach(),
            "atom": atom_loss.detach(),
            "len": len_loss.detach(),
            "ang": ang_loss.detach(),
            "pos": pos_loss.detach(),
            "pred": pred_loss.detach(),
            "kl": kl.detach(),
        }
        return total, parts

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
