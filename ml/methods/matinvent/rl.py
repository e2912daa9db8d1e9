"""MatInvent's reinforcement-learning loop over the template policy.

Per iteration (paper section 4, ``docs/methods.md`` section 4):

1. the agent samples a batch of templates under the request's grammar limits;
2. the evaluator turns them into crystals and filters them (valid, neutral, unique, novel,
   metastable); the survivors' properties are evaluated, one oracle call each, never past the
   budget;
3. rewards in [0, 1] from the objectives, lowered by the composition diversity filter;
4. the top ``top_fraction`` of the batch by reward plus ``replay_samples`` drawn from the
   replay buffer (the best templates seen, reward >= ``replay_cutoff``) update the agent with
   ``-alpha r log p(x) + beta (lambda - r) KL(agent || prior)`` summed over the tokens of x
   (eq. 17; the KL is exact per token, both policies being categorical at every step).

The loop stops at the oracle-call budget or after ``iterations``. ``learn=False`` keeps the
agent equal to the prior: the paper's baseline, plain sampling with the same filter.
"""

from __future__ import annotations

import copy
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ml.generative.training import clipped_step
from ml.methods.matinvent.policy import TemplatePolicy, sample, sequence_terms
from ml.methods.matinvent.tokens import GrammarLimits, decode, pad, replay, template_formula

__all__ = [
    "DiversityFilter",
    "IterationStats",
    "MatInventLoop",
    "Outcome",
    "RLConfig",
    "ReplayBuffer",
    "Sample",
]

Template = tuple[int, tuple[tuple[str, int], ...]]


@dataclass(frozen=True)
class Sample:
    tokens: tuple[int, ...]
    template: Template | None  # None: not a whole template (no orbit)
    formula: str  # reduced formula; "" without a template


@dataclass
class Outcome:
    """What the evaluator found for one sample. ``scored``: it passed the filter and its
    properties were evaluated (one oracle call). ``payload``: whatever the caller keeps for a
    hit (e.g. the scored candidate)."""

    scored: bool = False
    values: dict[str, float | None] = field(default_factory=dict)
    hit: bool = False
    valid: bool = False
    judged: bool = False  # its uniqueness was judged (valid, and it reached the pipeline)
    unique: bool = False  # judged, and no earlier generated crystal matches it
    survived: bool = False  # passed the filter (may still be unscored: budget spent)
    reason: str = ""  # why it was filtered out
    objective_loss: float = math.inf
    payload: Any = None


# (samples, iteration, oracle calls left) -> one outcome per sample
Evaluator = Callable[[Sequence[Sample], int, int], list[Outcome]]
RewardFn = Callable[[Mapping[str, float | None]], float]


class DiversityFilter:
    """Lowers the reward of a composition seen before: full up to ``tolerance`` earlier
    occurrences, then linearly less, 0 from ``buffer`` occurrences on (eq. 18; the paper's
    printed factor (Occ - Tol)/(Buff - Tol) rises with Occ, which contradicts its text, so
    the decreasing (Buff - Occ)/(Buff - Tol) is used)."""

    def __init__(self, tolerance: int, buffer: int) -> None:
        if buffer <= tolerance:
            raise ValueError("the diversity buffer must exceed the tolerance")
        self.tolerance = tolerance
        self.buffer = buffer
        self.counts: Counter[str] = Counter()

    def factor(self, key: str) -> float:
        occ = self.counts[key]
        if occ <= self.tolerance:
            return 1.0
        if occ >= self.buffer:
            return 0.0
        return (self.buffer - occ) / (self.buffer - self.tolerance)

    def apply(self, key: str, reward: float) -> float:
        """The filtered reward of one more occurrence of ``key`` (which is then counted)."""
        out = reward * self.factor(key)
        self.counts[key] += 1
        return out


class ReplayBuffer:
    """The ``size`` best distinct templates seen (reward >= ``cutoff``), with their reward."""

    def __init__(self, size: int, cutoff: float) -> None:
        self.size = size
        self.cutoff = cutoff
        self.items: dict[tuple[int, ...], float] = {}

    def __len__(self) -> int:
        return len(self.items)

    def add(self, tokens: tuple[int, ...], reward: float) -> None:
        if self.size <= 0 or reward < self.cutoff:
            return
        self.items[tokens] = max(reward, self.items.get(tokens, 0.0))
        if len(self.items) > self.size:
            worst = min(self.items, key=self.items.__getitem__)
            del self.items[worst]

    def sample(self, k: int, rng: np.random.Generator) -> list[tuple[tuple[int, ...], float]]:
        if not self.items or k <= 0:
            return []
        keys = list(self.items)
        picks = rng.choice(len(keys), size=min(k, len(keys)), replace=False)
        return [(keys[i], self.items[keys[i]]) for i in picks]


@dataclass
class RLConfig:
    batch_size: int = 64
    iterations: int = 50
    oracle_call_budget: int = 512
    learning_rate: float = 1e-3
    likelihood_weight: float = 1.0  # alpha of eq. 17
    kl_weight: float = 0.2  # beta of eq. 17
    reward_ceiling: float = 1.1  # lambda: slightly above the largest reward
    top_fraction: float = 0.5
    replay_size: int = 100
    replay_samples: int = 16
    replay_cutoff: float = 0.1
    updates_per_iteration: int = 4
    diversity_tolerance: int = 3
    diversity_buffer: int = 8
    temperature: float = 1.0
    learn: bool = True


@dataclass
class IterationStats:
    iteration: int
    sampled: int
    valid: int
    survivors: int
    scored: int
    hits: int  # new hits this iteration
    oracle_calls: int  # so far
    unique_hits: int  # so far
    mean_reward: float  # over the batch, 0 for filtered samples
    mean_scored_reward: float | None  # over the scored survivors
    max_reward: float
    best_objective_loss: float | None  # lowest objective loss of a scored crystal so far
    loss: float | None
    kl: float | None

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


class MatInventLoop:
    def __init__(
        self,
        prior: TemplatePolicy,
        limits: GrammarLimits,
        config: RLConfig,
        reward_fn: RewardFn,
        evaluator: Evaluator,
        seed: int = 0,
    ) -> None:
        self.config = config
        self.limits = limits
        self.reward_fn = reward_fn
        self.evaluator = evaluator
        self.prior = prior.eval().requires_grad_(False)
        # The agent is this job's copy; dropout stays off so the likelihood that is trained
        # is the one that samples.
        self.agent = copy.deepcopy(prior).eval().requires_grad_(config.learn)
        self.device = next(prior.parameters()).device
        self.opt = (
            torch.optim.Adam(self.agent.parameters(), lr=config.learning_rate)
            if config.learn
            else None
        )
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        self.diversity = DiversityFilter(config.diversity_tolerance, config.diversity_buffer)
        self.buffer = ReplayBuffer(config.replay_size, config.replay_cutoff)
        self.oracle_calls = 0
        self.unique_hits = 0
        self.generated = 0
        self.unique_valid = 0
        self.judged = 0
        self.best_loss: float | None = None
        self.timings = {"sample_s": 0.0, "evaluate_s": 0.0, "update_s": 0.0}
        self.history: list[IterationStats] = []
        # Scored crystals that missed the request: what a job returns when hits are too few.
        self.misses: list[tuple[Outcome, float]] = []

    @property
    def budget_left(self) -> int:
        return max(self.config.oracle_call_budget - self.oracle_calls, 0)

    def draw(self, n: int) -> list[Sample]:
        seqs = sample(self.agent, n, self.limits, self.gen, self.config.temperature)
        out = []
        for s in seqs:
            template = decode(s)
            formula = template_formula(*template) if template is not None else ""
            out.append(Sample(tuple(s), template, formula))
        return out

    def iterations(self) -> Iterator[tuple[IterationStats, list[tuple[Outcome, float]]]]:
        """Run the loop; after each iteration its statistics and its new hits with their
        (unfiltered) reward, best first."""
        for it in range(1, self.config.iterations + 1):
            if self.budget_left <= 0:
                return
            t0 = time.perf_counter()
            samples = self.draw(self.config.batch_size)
            t1 = time.perf_counter()
            outcomes = self.evaluator(samples, it, self.budget_left)
            t2 = time.perf_counter()
            self.timings["sample_s"] += t1 - t0
            self.timings["evaluate_s"] += t2 - t1
            rewards, raw = self._rewards(samples, outcomes)
            scored = [k for k, o in enumerate(outcomes) if o.scored]
            self.oracle_calls += len(scored)
            hits = [(outcomes[k], raw[k]) for k in scored if outcomes[k].hit]
            self.misses += [(outcomes[k], raw[k]) for k in scored if not outcomes[k].hit]
            self.unique_hits += len(hits)
            self.generated += len(samples)
            self.unique_valid += sum(o.unique for o in outcomes)
            self.judged += sum(o.judged for o in outcomes)
            for k in scored:
                loss_k = outcomes[k].objective_loss
                if math.isfinite(loss_k) and (self.best_loss is None or loss_k < self.best_loss):
                    self.best_loss = loss_k
            loss = kl = None
            if self.config.learn:
                loss, kl = self._update(samples, rewards)
            self.timings["update_s"] += time.perf_counter() - t2
            self.history.append(
                IterationStats(
                    iteration=it,
                    sampled=len(samples),
                    valid=sum(o.valid for o in outcomes),
                    survivors=sum(o.survived for o in outcomes),
                    scored=len(scored),
                    hits=len(hits),
                    oracle_calls=self.oracle_calls,
                    unique_hits=self.unique_hits,
                    mean_reward=float(np.mean(raw)) if raw else 0.0,
                    mean_scored_reward=float(np.mean([raw[k] for k in scored])) if scored else None,
                    max_reward=max(raw, default=0.0),
                    best_objective_loss=self.best_loss,
                    loss=loss,
                    kl=kl,
                )
            )
            hits.sort(key=lambda h: (-h[1], h[0].objective_loss))
            yield self.history[-1], hits

    def best_misses(self, count: int) -> list[tuple[Outcome, float]]:
        """The ``count`` scored non-hits with the highest reward (then lowest objective loss)."""
        ranked = sorted(self.misses, key=lambda m: (-m[1], m[0].objective_loss))
        return ranked[: max(count, 0)]

    def _rewards(
        self, samples: Sequence[Sample], outcomes: Sequence[Outcome]
    ) -> tuple[list[float], list[float]]:
        """(diversity-filtered rewards for learning, raw rewards for reporting) per sample;
        0 for samples that were not scored."""
        filtered, raw = [], []
        for s, o in zip(samples, outcomes, strict=True):
            if not o.scored:
                filtered.append(0.0)
                raw.append(0.0)
                continue
            r = min(max(float(self.reward_fn(o.values)), 0.0), 1.0)
            raw.append(r)
            filtered.append(self.diversity.apply(s.formula, r))
        return filtered, raw

    def _update(self, samples: Sequence[Sample], rewards: Sequence[float]) -> tuple[float, float]:
        cfg = self.config
        assert self.opt is not None
        # Top of the batch by reward (random order first, so ties are not broken by position).
        order = self.rng.permutation(len(samples))
        order = sorted(order, key=lambda k: -rewards[k])
        keep = order[: max(1, math.ceil(cfg.top_fraction * len(samples)))]
        seqs = [samples[k].tokens for k in keep]
        rs = [rewards[k] for k in keep]
        for tokens, r in self.buffer.sample(cfg.replay_samples, self.rng):
            seqs.append(tokens)
            rs.append(r)
        for s, r in zip(samples, rewards, strict=True):
            self.buffer.add(s.tokens, r)
        tokens = pad(seqs, self.device)
        reward = torch.tensor(rs, dtype=torch.float32, device=self.device)
        grammar = replay(tokens, self.limits)
        losses, kls = [], []
        for _ in range(cfg.updates_per_iteration):
            # cuDNN's GRU has no backward in eval mode; the agent stays in eval mode (no
            # dropout: the likelihood trained is the one that samples), so the update runs on
            # PyTorch's own RNN kernels (the same on CPU, where cuDNN is never used).
            with torch.backends.cudnn.flags(enabled=False):
                loglik, kl = sequence_terms(self.agent, tokens, self.limits, self.prior, grammar)
            assert kl is not None
            loss = (
                -cfg.likelihood_weight * reward * loglik
                + cfg.kl_weight * (cfg.reward_ceiling - reward) * kl
            ).mean()
            clipped_step(self.opt, loss, self.agent.parameters(), 1.0)
            losses.append(float(loss.detach()))
            kls.append(float(kl.detach().mean()))
        return float(np.mean(losses)), float(np.mean(kls))

    def summary(self) -> dict[str, Any]:
        """Budget, oracle calls, unique hits, burden (oracle calls per unique hit; None
        without hits), diversity ratio (unique crystals among the valid ones whose uniqueness
        was judged) and the per-iteration curves."""
        calls, hits = self.oracle_calls, self.unique_hits
        return {
            "oracle_call_budget": self.config.oracle_call_budget,
            "oracle_calls": calls,
            "unique_hits": hits,
            "burden": round(calls / hits, 3) if hits else None,
            "generated": self.generated,
            "judged": self.judged,
            "unique_valid": self.unique_valid,
            "diversity_ratio": round(self.unique_valid / self.judged, 4) if self.judged else None,
            "distinct_formulas_scored": len(self.diversity.counts),
            "iterations": len(self.history),
            "fine_tuned": self.config.learn,
            "timings": {k: round(v, 2) for k, v in self.timings.items()},
            "curves": {
                "mean_reward": [round(h.mean_reward, 4) for h in self.history],
                "mean_scored_reward": [
                    None if h.mean_scored_reward is None else round(h.mean_scored_reward, 4)
                    for h in self.history
                ],
                "hits": [h.unique_hits for h in self.history],
                "oracle_calls": [h.oracle_calls for h in self.history],
            },
        }
