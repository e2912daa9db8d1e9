"""Latents -> crystals: beam search over atom types, then Euler integration of the flow with
classifier-free guidance v = (1 + w) v(G, t | z) - w v(G, t | noise)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ml.crystal import Crystal
from ml.methods.cliqueflowmer.config import MAX_Z, PAD, START, STOP, VOCAB, token_of
from ml.methods.cliqueflowmer.geometry import (
    MaterialBatch,
    angles_from_flow,
    crystal_from_params,
    lengths_from_flow,
)
from ml.methods.cliqueflowmer.model import CliqueFlowmer, FlowState

# The oracles (CHGNet, MEGNet) know elements up to Pu; nothing heavier is ever emitted.
MAX_DECODED_Z = 94


def allowed_token_mask(elements: list[int] | None, device: torch.device | str) -> torch.Tensor:
    """(VOCAB,) bool: element tokens beam search may emit (Z 1..94 when ``elements`` None)."""
    allowed = torch.zeros(VOCAB, dtype=torch.bool, device=device)
    if elements is None:
        allowed[token_of(1) : token_of(MAX_DECODED_Z) + 1] = True
    else:
        for z in elements:
            if 1 <= z <= min(MAX_Z, MAX_DECODED_Z):
                allowed[token_of(z)] = True
    return allowed


@torch.no_grad()
def beam_search(
    model: CliqueFlowmer,
    z: torch.Tensor,
    width: int = 10,
    max_atoms: int | None = None,
    allowed: torch.Tensor | None = None,
    top: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Most likely atom-type sequence per latent.

    Returns tokens (B, L) of the best finished beam (element tokens, then STOP, then PAD) and
    its log-probability (B,). Sequences have at least one atom and at most ``max_atoms``.
    ``top`` > 1: the ``top`` best finished beams, (B, top, L) and (B, top), best first; where
    fewer beams finished, the best one stands in for the missing.
    """
    b, dev = z.shape[0], z.device
    k = width
    limit = min(max_atoms or model.cfg.max_atoms, model.cfg.max_atoms)
    allowed = allowed_token_mask(None, dev) if allowed is None else allowed.to(dev)
    zmod = model.modulation(z).repeat_interleave(k, dim=0)
    seqs = torch.full((b, k, 1), START, dtype=torch.long, device=dev)
    scores = torch.full((b, k), float("-inf"), device=dev)
    scores[:, 0] = 0.0  # one live beam at the start; the others fill from its expansions
    done = torch.zeros(b, k, dtype=torch.bool, device=dev)
    neg_inf = torch.tensor(float("-inf"), device=dev)
    for step in range(limit + 1):
        logits = model.atom_logits(zmod, seqs.view(b * k, -1))[:, -1].float()
        logp = torch.log_softmax(logits, dim=-1).view(b, k, VOCAB)
        ok = allowed.clone()
        ok[STOP] = step > 0
        if step == limit:
            ok[:] = False
            ok[STOP] = True
        logp = torch.where(ok, logp, neg_inf)
        # A finished beam only extends with PAD, at no cost, so it keeps its score.
        pad_only = torch.full((VOCAB,), float("-inf"), device=dev)
        pad_only[PAD] = 0.0
        logp = torch.where(done[..., None], pad_only, logp)
        cand = (scores[..., None] + logp).view(b, k * VOCAB)
        scores, flat = cand.topk(k, dim=-1)
        beam, tok = flat // VOCAB, flat % VOCAB
        seqs = torch.cat(
            [torch.gather(seqs, 1, beam[..., None].expand_as(seqs)), tok[..., None]], 2
        )
        done = torch.gather(done, 1, beam) | (tok == STOP)
        if bool(done.all()):
            break
    final = torch.where(done, scores, neg_inf)
    arange = torch.arange(b, device=dev)
    if top == 1:
        best = final.argmax(-1)
        return seqs[arange, best, 1:], final[arange, best]
    order = final.argsort(-1, descending=True)[:, : min(top, k)]
    ranked = torch.gather(final, 1, order)
    order = torch.where(torch.isfinite(ranked), order, order[:, :1])
    if order.shape[1] < top:
        order = torch.cat([order, order[:, :1].expand(-1, top - order.shape[1])], 1)
    return seqs[arange[:, None], order, 1:], torch.gather(final, 1, order)


def tokens_to_numbers(tokens: torch.Tensor) -> torch.Tensor:
    """Beam output (B, L) -> padded atomic numbers (B, A) with A the longest sequence."""
    is_atom = tokens > STOP
    # Everything after the first STOP is padding.
    stopped = torch.cumsum(tokens == STOP, dim=1) > 0
    keep = is_atom & ~stopped
    numbers = torch.where(keep, tokens - 2, torch.zeros_like(tokens))
    width = max(int(keep.sum(1).max()), 1)
    return numbers[:, :width]


@torch.no_grad()
def sample_geometry(
    model: CliqueFlowmer,
    z: torch.Tensor,
    numbers: torch.Tensor,
    steps: int = 100,
    guidance: float = 2.0,
    generator: torch.Generator | None = None,
    anneal: float = 0.0,
) -> FlowState:
    """Euler integration from the prior at t = 0 to t = 1; returns the normalised geometry.

    ``anneal`` = s scales the position velocity by (1 + s t) (FlowMM's inference anti-annealing:
    late steps commit harder to the mode, where the under-fitted field is blurred).
    """
    b, a = numbers.shape
    dev = z.device
    state = FlowState(
        lengths=torch.randn(b, 3, device=dev, generator=generator),
        angles=torch.rand(b, 3, device=dev, generator=generator) * 2 - 1,
        pos=torch.rand(b, a, 3, device=dev, generator=generator),
    )
    ztok = model.clique_tokens(z)
    if guidance != 0.0:
        noise = torch.randn(z.shape, device=dev, generator=generator)
        ztok = torch.cat([ztok, model.clique_tokens(noise)], dim=0)
        numbers2 = torch.cat([numbers, numbers], dim=0)
    dt = 1.0 / steps
    for i in range(steps):
        t = torch.full((b,), i * dt, device=dev)
        if guidance != 0.0:
            both = FlowState(
                torch.cat([state.lengths] * 2),
                torch.cat([state.angles] * 2),
                torch.cat([state.pos] * 2),
            )
            v2 = model.velocity(ztok, numbers2, both, torch.cat([t, t]))
            w = guidance
            v = FlowState(
                *(
                    (1 + w) * getattr(v2, f)[:b].float() - w * getattr(v2, f)[b:].float()
                    for f in ("lengths", "angles", "pos")
                )
            )
        else:
            raw = model.velocity(ztok, numbers, state, t)
            v = FlowState(raw.lengths.float(), raw.angles.float(), raw.pos.float())
        state = FlowState(
            state.lengths + dt * v.lengths,
            state.angles + dt * v.angles,
            state.pos + dt * (1.0 + anneal * i * dt) * v.pos,
        )
    return state


def most_consistent(
    model: CliqueFlowmer, z: torch.Tensor, numbers: torch.Tensor, state: FlowState, k: int
) -> torch.Tensor:
    """Of k geometries sampled per latent (rows grouped by latent), the index (B,) of the one
    whose re-encoding lies nearest its latent: the encoder, which the flow never sees, judges
    which draw is the material the latent describes."""
    counts = (numbers > 0).sum(1).clamp(min=1)
    batch = MaterialBatch(
        lengths=lengths_from_flow(state.lengths.float(), counts, model.len_mu, model.len_sigma),
        angles=angles_from_flow(state.angles.float()),
        frac=torch.remainder(state.pos.float(), 1.0),
        numbers=numbers,
        num_atoms=counts,
    )
    mu, _ = model.encode(batch)
    dist = ((mu.float() - z.float()) ** 2).sum(-1).nan_to_num(float("inf"))
    return dist.view(-1, k).argmin(1)


def state_to_crystals(
    model: CliqueFlowmer, numbers: torch.Tensor, state: FlowState
) -> list[Crystal]:
    counts = (numbers > 0).sum(1)
    lengths = lengths_from_flow(state.lengths, counts.clamp(min=1), model.len_mu, model.len_sigma)
    angles = angles_from_flow(state.angles)
    lengths_np = lengths.double().cpu().numpy()
    angles_np = angles.double().cpu().numpy()
    pos_np = state.pos.double().cpu().numpy()
    nums_np = numbers.cpu().numpy()
    out = []
    for i in range(len(nums_np)):
        n = int(counts[i])
        out.append(crystal_from_params(lengths_np[i], angles_np[i], pos_np[i, :n], nums_np[i, :n]))
    return out


@torch.no_grad()
def decode_latents(
    model: CliqueFlowmer,
    z: torch.Tensor,
    *,
    beam_width: int = 10,
    steps: int = 100,
    guidance: float = 2.0,
    max_atoms: int | None = None,
    allowed_elements: list[int] | None = None,
    generator: torch.Generator | None = None,
    chunk: int = 1024,
    on_chunk: Callable[[int, int], None] | None = None,
    anneal: float = 0.0,
    samples: int = 1,
    beams: int = 1,
) -> list[Crystal]:
    """Decode latents (B, d_z) into crystals, ``chunk`` latents at a time.

    ``beams`` x ``samples`` > 1: the ``beams`` best atom-type sequences, ``samples`` geometries
    each, and the candidate whose re-encoding lies nearest the latent is kept (the type
    decoder's best beam has the true composition for 79 % of MP-20 test latents, its best
    three for 86 %)."""
    allowed = allowed_token_mask(allowed_elements, z.device)
    out: list[Crystal] = []
    per = beams * samples
    chunk = max(1, chunk // per)
    for lo in range(0, z.shape[0], chunk):
        zc = z[lo : lo + chunk]
        if per == 1:
            tokens, _ = beam_search(model, zc, beam_width, max_atoms, allowed)
            numbers = tokens_to_numbers(tokens)
            state = sample_geometry(model, zc, numbers, steps, guidance, generator, anneal)
        else:
            tokens, _ = beam_search(model, zc, max(beam_width, beams), max_atoms, allowed, beams)
            if beams == 1:
                tokens = tokens[:, None]
            # Rows grouped by latent: beam 0's samples, then beam 1's, ...
            tokens = tokens.repeat_interleave(samples, 1).flatten(0, 1)
            numbers = tokens_to_numbers(tokens)
            zk = zc.repeat_interleave(per, 0)
            state = sample_geometry(model, zk, numbers, steps, guidance, generator, anneal)
            rows = most_consistent(model, zk, numbers, state, per)
            rows = rows + torch.arange(len(zc), device=rows.device) * per
            state = FlowState(state.lengths[rows], state.angles[rows], state.pos[rows])
            numbers = numbers[rows]
        out.extend(state_to_crystals(model, numbers, state))
        if on_chunk is not None:
            on_chunk(min(lo + chunk, z.shape[0]), z.shape[0])
    return out
