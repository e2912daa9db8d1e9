"""The policy: an autoregressive GRU over template tokens (:mod:`.tokens`).

Each step sees the previous token, the space group chosen so far and the grammar's state
features (phase, how full the cell is, orbits used); logits outside the grammar's allowed set
are masked, so probabilities, likelihoods and KL terms are over legal templates only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ml.methods.matinvent.tokens import (
    BOS,
    NUM_FEATURES,
    NUM_SG,
    PAD,
    VOCAB,
    Grammar,
    GrammarLimits,
    replay,
)

__all__ = ["PolicyConfig", "TemplatePolicy", "sample", "sequence_terms"]

NEG = -1e9  # masked logit (finite, so masked rows of a finished sequence stay NaN-free)


@dataclass
class PolicyConfig:
    d_model: int = 256
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.1
    max_atoms: int = 20  # primitive atoms of the training cells (MP-20)
    max_orbits: int = 20

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class TemplatePolicy(nn.Module):
    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        self.token = nn.Embedding(VOCAB, d, padding_idx=PAD)
        self.space_group = nn.Embedding(NUM_SG + 1, d)  # 0: not chosen yet
        self.features = nn.Linear(NUM_FEATURES, d)
        self.rnn = nn.GRU(
            d,
            config.hidden,
            num_layers=config.layers,
            batch_first=True,
            dropout=config.dropout if config.layers > 1 else 0.0,
        )
        self.norm = nn.LayerNorm(config.hidden)
        self.out = nn.Linear(config.hidden, VOCAB)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def limits(self, **overrides: object) -> GrammarLimits:
        """Grammar limits within the training cells' size (callers narrow them further)."""
        base = {"max_atoms": self.config.max_atoms, "max_orbits": self.config.max_orbits}
        return GrammarLimits(**{**base, **overrides})  # type: ignore[arg-type]

    def step_input(
        self, tokens: torch.Tensor, sg: torch.Tensor, feats: torch.Tensor
    ) -> torch.Tensor:
        return self.token(tokens) + self.space_group(sg) + self.features(feats)

    def logits(
        self,
        tokens: torch.Tensor,
        sg: torch.Tensor,
        feats: torch.Tensor,
        state: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, T, VOCAB) after each input token (B, T), and the GRU state."""
        h, state = self.rnn(self.step_input(tokens, sg, feats), state)
        return self.out(self.norm(h)), state


def masked_log_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(logits.float().masked_fill(~mask, NEG), dim=-1)


@torch.no_grad()
def sample(
    policy: TemplatePolicy,
    n: int,
    limits: GrammarLimits,
    generator: torch.Generator,
    temperature: float = 1.0,
) -> list[list[int]]:
    """``n`` token sequences (BOS ... EOS) drawn from the policy under the grammar."""
    device = next(policy.parameters()).device
    was_training = policy.training
    policy.eval()
    grammar = Grammar(n, limits, device)
    tokens = torch.full((n,), BOS, dtype=torch.long, device=device)
    seqs = [tokens]
    state = None
    max_len = 2 + 2 * limits.max_orbits + 1
    for _ in range(max_len):
        sg, feats = grammar.features()
        logits, state = policy.logits(tokens[:, None], sg[:, None], feats[:, None], state)
        logp = masked_log_softmax(logits[:, 0] / temperature, grammar.allowed())
        tokens = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
        grammar.push(tokens)
        seqs.append(tokens)
        if bool(grammar.done.all()):
            break
    policy.train(was_training)
    out = torch.stack(seqs, 1).cpu().tolist()
    return [[t for t in row if t != PAD] for row in out]


def sequence_terms(
    policy: TemplatePolicy,
    tokens: torch.Tensor,
    limits: GrammarLimits,
    prior: TemplatePolicy | None = None,
    grammar: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per sequence of the padded batch (B, L): the log-likelihood under ``policy`` (B,), and,
    with a ``prior``, the summed per-step KL(policy || prior) along the sequence (B,).
    ``grammar``: the output of :func:`.tokens.replay` for these tokens, when already known."""
    masks, sg, feats = grammar if grammar is not None else replay(tokens, limits)
    inputs = tokens[:, :-1]
    targets = tokens[:, 1:]
    live = targets != PAD
    logits, _ = policy.logits(inputs, sg, feats)
    logp = masked_log_softmax(logits, masks)
    taken = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    loglik = (taken * live).sum(1)
    if prior is None:
        return loglik, None
    with torch.no_grad():
        prior_logits, _ = prior.logits(inputs, sg, feats)
        prior_logp = masked_log_softmax(prior_logits, masks)
    p = logp.exp()
    kl = (p * (logp - prior_logp)).masked_fill(~masks, 0.0).sum(-1)
    return loglik, (kl * live).sum(1)
