"""Judge-in-the-loop species refinement: a post-stage after the gradient optimisation (and any
polish rounds).

Why: the service judges designs after relaxing them with its stability judge, and the
gradient stage meets a gap target largely by straining wide-gap compounds; the relaxation
undoes the strain (CPU, 32 x 60: joint success 0.72 as designed, 0.19 relaxed at 1 eV), and
polish rounds at the relaxed geometry fix little because what is wrong then is the
composition (benchmarks/RESULTS.md, eighth session). So this stage changes compositions and
lets the judges decide, at the geometry they judge:

1. relax every design with the job's judge (one batched call) and score it there with the
   service's oracles; the loss is the request's, as the gradient stage optimises it (the same
   :class:`LossTerm`s), evaluated on the judges' values;
2. for each design that does not yet meet the request, propose element swaps on one site
   group at a time that keep its oxidation numbers, and paired swaps on two groups whose
   oxidation changes cancel (exact neutrality either way), within the request's elements
   (:mod:`ml.methods.smoacs.swaps`), score them unrelaxed (one batched call), relax
   the ``refine_proposals`` most promising of each design together (one call) and score them;
3. each design moves to its best relaxed swap if that is better than where it is (meeting the
   request first, then the lower loss), never onto a formula another design holds; repeat
   for ``refine_rounds`` rounds or until nothing improves.

Every candidate returns its best relaxed state, so it is never worse than its own relaxed
design, with one exception: a design whose formula a better design holds (two copies of one
template relax to one crystal) takes its best swap to a formula of its own, if any, even a
worse one, since a duplicate adds nothing to the set. With ``oversample`` > 1 the gradient
stage designed more candidates than asked for and the best by the judged loss are returned
(distinct formulas first).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ml.crystal import Crystal
from ml.methods.smoacs.engine import FinalResult
from ml.methods.smoacs.objectives import LossTerm
from ml.methods.smoacs.swaps import Swap, apply_swap, propose_swaps

__all__ = ["RefineReport", "Refined", "refine"]

Relax = Callable[[list[Crystal]], list]  # crystals -> RelaxResults (NaN energy: failed)
Score = Callable[[list[Crystal]], dict[str, np.ndarray]]  # crystals -> judged values per key


@dataclass
class RefineReport:
    round: int
    met: int  # candidates meeting the request after this round
    moved: int  # candidates that took a swap this round
    relaxed: int  # crystals relaxed this round


@dataclass
class Refined:
    result: FinalResult
    picked: list[int]  # index, in the stage's input, of each returned candidate


@dataclass
class _State:
    crystal: Crystal
    values: dict[str, float]
    loss: float
    met: bool
    relax: dict[str, object]
    oxidation: tuple[int, ...] = ()  # per site; paired swaps change it
    swaps: tuple[str, ...] = ()
    round: int = 0
    formula: str = field(init=False)

    def __post_init__(self) -> None:
        self.formula = self.crystal.formula

    @property
    def rank(self) -> tuple[bool, float]:
        return (not self.met, self.loss)


def refine(
    result: FinalResult,
    roles: Sequence[Sequence[int]],
    terms: Sequence[LossTerm],
    allowed: np.ndarray,
    relax: Relax,
    score: Score,
    rounds: int,
    proposals: int,
    species_per_group: int,
    keep: int | None = None,
    pairs: bool = True,
    check_cancelled: Callable[[], None] = lambda: None,
) -> Iterator[RefineReport | Refined]:
    """Run the stage on the gradient stage's ``result`` (``roles``: per candidate, its sites'
    perovskite roles; ``allowed``: ``TypeTables.allowed`` as a numpy array). Yields a report
    after the judged relaxation of the designs (round 0) and after every round, then the
    :class:`Refined` candidates (``keep`` of them, default all); ``pairs``: propose paired
    swaps too."""
    check_cancelled()
    states = _judge(result.crystals, relax, score, terms)
    for state, ox in zip(states, result.site_oxidation, strict=True):
        state.oxidation = tuple(int(q) for q in ox)
    n = len(states)
    yield RefineReport(0, sum(s.met for s in states), 0, n)
    for r in range(1, rounds + 1):
        check_cancelled()
        dup = _duplicates(states)
        active = [i for i, s in enumerate(states) if not s.met or dup[i]]
        if not active:
            break
        held = [s.formula for s in states]
        tried: list[tuple[int, Swap, Crystal, list[int]]] = []
        for i in active:
            others = set(held[:i] + held[i + 1 :])
            ox = states[i].oxidation
            for swap in propose_swaps(
                states[i].crystal, ox, roles[i], allowed, species_per_group, pairs
            ):
                crystal, new_ox = apply_swap(states[i].crystal, ox, swap)
                if crystal.formula not in others:  # would collapse onto another design
                    tried.append((i, swap, crystal, new_ox))
        if not tried:
            break
        # Unrelaxed judged values pick which swaps are worth a relaxation.
        pre = _evaluate([t[2] for t in tried], score, terms)
        per: dict[int, list[int]] = {}
        for k in sorted(range(len(tried)), key=lambda k: (not pre[1][k], pre[0][k])):
            chosen = per.setdefault(tried[k][0], [])
            if len(chosen) < proposals:
                chosen.append(k)
        picks = [k for ks in per.values() for k in ks]
        check_cancelled()
        relaxed = _judge([tried[k][2] for k in picks], relax, score, terms)
        options: dict[int, list[_State]] = {}
        for k, state in zip(picks, relaxed, strict=True):
            i, swap, _, new_ox = tried[k]
            state.oxidation = tuple(new_ox)
            state.swaps = (*states[i].swaps, swap.label)
            state.round = r
            options.setdefault(i, []).append(state)
        moved = _accept(states, options, dup)
        yield RefineReport(r, sum(s.met for s in states), moved, len(picks))
        if moved == 0:
            break
    picked = _select(states, n if keep is None else keep)
    yield Refined(_as_result(result, states, picked), picked)


def _evaluate(
    crystals: list[Crystal], score: Score, terms: Sequence[LossTerm]
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Judged loss (inf where a value is missing), met, and the values per key."""
    values = score(crystals)
    loss = torch.zeros(len(crystals), dtype=torch.float64)
    met = torch.ones(len(crystals), dtype=torch.bool)
    for term in terms:
        y = torch.as_tensor(np.asarray(values[term.key], dtype=np.float64))
        loss = loss + term.loss(y)
        met = met & term.met(y)
    loss = torch.where(torch.isfinite(loss), loss, torch.full_like(loss, math.inf))
    return loss.numpy(), met.numpy(), values


def _judge(
    crystals: list[Crystal], relax: Relax, score: Score, terms: Sequence[LossTerm]
) -> list[_State]:
    """Relax with the judge (a failed relaxation keeps the crystal) and score there."""
    results = relax(list(crystals))
    final = [
        res.crystal if math.isfinite(res.energy_per_atom) else c
        for res, c in zip(results, crystals, strict=True)
    ]
    loss, met, values = _evaluate(final, score, terms)
    return [
        _State(
            crystal=c,
            values={k: float(v[j]) for k, v in values.items()},
            loss=float(loss[j]),
            met=bool(met[j]),
            relax={
                "converged": bool(res.converged),
                "steps": int(res.steps),
                "failed": not math.isfinite(res.energy_per_atom),
            },
        )
        for j, (c, res) in enumerate(zip(final, results, strict=True))
    ]


def _duplicates(states: list[_State]) -> list[bool]:
    """Per candidate: another candidate with its formula ranks better (or equal and earlier).
    Relaxed by one judge, two designs of one formula from one template tend to one crystal;
    such a duplicate is worth nothing to the user, so it keeps looking for a formula of its
    own even when it meets the request."""
    best: dict[str, int] = {}
    for i in sorted(range(len(states)), key=lambda i: states[i].rank):
        best.setdefault(states[i].formula, i)
    return [best[s.formula] != i for i, s in enumerate(states)]


def _accept(states: list[_State], options: dict[int, list[_State]], dup: list[bool]) -> int:
    """Move each candidate to its best option that beats its state (for a duplicate: any
    option) and whose formula no other candidate holds; the candidates with the best options
    choose first."""
    best_first = sorted(options, key=lambda i: min(s.rank for s in options[i]))
    moved = 0
    for i in best_first:
        held = {s.formula for j, s in enumerate(states) if j != i}
        bar = (True, math.inf) if dup[i] else states[i].rank
        for option in sorted(options[i], key=lambda s: s.rank):
            if option.rank >= bar:
                break
            if option.formula not in held:
                states[i] = option
                moved += 1
                break
    return moved


def _select(states: list[_State], keep: int) -> list[int]:
    """All candidates in order, or the ``keep`` best by the judged rank: one per formula
    first, then the best of the rest if too few formulas are distinct; returned in input
    order."""
    if keep >= len(states):
        return list(range(len(states)))
    order = sorted(range(len(states)), key=lambda i: states[i].rank)
    seen: set[str] = set()
    first, rest = [], []
    for i in order:
        (rest if states[i].formula in seen else first).append(i)
        seen.add(states[i].formula)
    return sorted((first + rest)[:keep])


def _as_result(result: FinalResult, states: list[_State], picked: list[int]) -> FinalResult:
    device = result.loss.device
    keys = states[0].values.keys() if states else ()

    def tensor(xs: list[float]) -> torch.Tensor:
        return torch.tensor(xs, dtype=torch.float32, device=device)

    chosen = [states[i] for i in picked]
    return FinalResult(
        crystals=[s.crystal for s in chosen],
        predictions={k: tensor([s.values[k] for s in chosen]) for k in keys},
        loss=tensor([s.loss for s in chosen]),
        met=torch.tensor([s.met for s in chosen], dtype=torch.bool, device=device),
        soft_loss=result.soft_loss[torch.tensor(picked, dtype=torch.long, device=device)]
        if len(result.soft_loss) == len(states)
        else result.soft_loss,
        site_oxidation=[list(states[i].oxidation) for i in picked],
        meta=[
            {
                **result.meta[i],
                "relax": states[i].relax,
                "refine": {"round": states[i].round, "swaps": list(states[i].swaps)},
            }
            for i in picked
        ],
    )
