"""Pretraining CLI for MatInvent's prior: the template policy on MP-20 train + val.

    python -m ml.methods.matinvent.pretrain --device cuda --minutes 3 --workers 14 \
        --out ml/weights/matinvent-prior.pt

Templates (space group + Wyckoff orbits) come from the Wyckoff decomposition that issue 13's
generator trains on (cached per split). Teacher-forced maximum likelihood under the grammar's
masks; 5 % of the templates are held out (seeded) to pick the exported weights by their
likelihood, so a long budget cannot export an over-fitted policy. The release holds the
config and training facts (model card), plus statistics of 1,000 samples of the exported
policy: legal, charge neutral, new compositions and distinct templates.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml.generative.training import Optimiser, lr_at
from ml.methods.conditional.wyckoff_data import WyckoffArrays, load_split
from ml.methods.matinvent.checkpoint import PRIOR_FILE, WEIGHTS_DIR, save_prior
from ml.methods.matinvent.policy import PolicyConfig, TemplatePolicy, sample, sequence_terms
from ml.methods.matinvent.tokens import (
    MAX_Z,
    PAD,
    decode,
    encode,
    pad,
    template_counts,
    template_formula,
)
from ml.settings import get_ml_settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=WEIGHTS_DIR / PRIOR_FILE)
    p.add_argument("--minutes", type=float, default=3.0, help="wall-clock budget of training")
    p.add_argument("--steps", type=int, default=1_000_000, help="step budget")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--eval-every", type=int, default=200, help="steps between held-out checks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu / cuda (default from settings)")
    p.add_argument("--workers", type=int, default=1, help="processes for the decomposition")
    p.add_argument("--limit", type=int, default=None, help="rows per split (tiny runs)")
    p.add_argument("--samples", type=int, default=1000, help="samples for the model card")
    p.add_argument("--history", type=Path, help="write the loss history (JSON) here")
    return p.parse_args(argv)


def template_sequences(arrays: WyckoffArrays, config: PolicyConfig) -> list[list[int]]:
    """Token sequences of the crystals that fit the policy (cell size, orbits, elements)."""
    out = []
    for i in range(len(arrays)):
        w = arrays.wyckoff(i)
        orbits = [(o.letter, o.number) for o in w.orbits]
        if len(orbits) > config.max_orbits or max(z for _, z in orbits) > MAX_Z:
            continue
        if sum(template_counts(w.space_group, orbits).values()) > config.max_atoms:
            continue
        out.append(encode(w.space_group, orbits))
    return out


def nll_per_token(
    policy: TemplatePolicy, batch: torch.Tensor, config: PolicyConfig
) -> tuple[torch.Tensor, int]:
    loglik, _ = sequence_terms(policy, batch, policy.limits())
    tokens = int((batch[:, 1:] != PAD).sum())
    return -loglik.sum() / tokens, tokens


@torch.no_grad()
def held_out_nll(policy: TemplatePolicy, data: torch.Tensor, batch_size: int) -> float:
    policy.eval()
    total, count = 0.0, 0
    for start in range(0, len(data), batch_size):
        batch = data[start : start + batch_size]
        loss, n = nll_per_token(policy, batch, policy.config)
        total += float(loss) * n
        count += n
    policy.train()
    return total / max(count, 1)


def sample_stats(
    policy: TemplatePolicy, n: int, known_formulas: set[str], seed: int
) -> dict[str, Any]:
    """Of ``n`` samples: fraction that decode to templates, are charge neutral (pymatgen /
    ICSD oxidation states), have a formula outside the training set, distinct templates."""
    from ml.constraints import is_charge_neutral

    if n <= 0:
        return {}
    device = next(policy.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    seqs = sample(policy, n, policy.limits(), gen)
    templates = [t for t in map(decode, seqs) if t is not None]
    formulas = [template_formula(g, o) for g, o in templates]
    neutral = sum(is_charge_neutral(f) for f in formulas)
    return {
        "samples": n,
        "legal": round(len(templates) / n, 4),
        "charge_neutral": round(neutral / max(len(templates), 1), 4),
        "new_formula": round(
            sum(f not in known_formulas for f in formulas) / max(len(formulas), 1), 4
        ),
        "distinct_templates": round(len(set(templates)) / max(len(templates), 1), 4),
        "distinct_formulas": round(len(set(formulas)) / max(len(formulas), 1), 4),
        "space_groups": len({g for g, _ in templates}),
    }


def split_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    k = round(n * fraction) if n > 1 else 0
    return perm[k:], perm[:k]


def train(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device or get_ml_settings().torch_device())
    torch.manual_seed(args.seed)
    t_data = time.time()
    arrays = WyckoffArrays.concat(
        [load_split(s, args.workers, args.limit) for s in ("train", "val")]
    )
    config = PolicyConfig(
        d_model=args.d_model, hidden=args.hidden, layers=args.layers, dropout=args.dropout
    )
    seqs = template_sequences(arrays, config)
    formulas = {template_formula(*t) for t in map(decode, seqs) if t is not None}
    train_idx, val_idx = split_indices(len(seqs), args.val_fraction, args.seed)
    train_data = pad([seqs[i] for i in train_idx], device)
    val_data = pad([seqs[i] for i in val_idx], device) if len(val_idx) else train_data[:0]
    data_s = time.time() - t_data
    policy = TemplatePolicy(config).to(device).train()
    optim = Optimiser(policy, args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    print(
        f"device={device} structures={len(arrays)} templates={len(seqs)} "
        f"train={len(train_idx)} held_out={len(val_idx)} data_s={data_s:.1f} "
        f"params={policy.num_parameters():,}",
        flush=True,
    )
    gen = torch.Generator().manual_seed(args.seed)
    budget = args.minutes * 60.0
    start = time.time()
    step, history, window = 0, [], []
    best = {"nll": math.inf, "step": 0, "state": None}

    def check() -> None:
        nll = held_out_nll(policy, val_data, 1024) if len(val_data) else float(window[-1])
        train_nll = float(np.mean(window)) if window else math.nan
        window.clear()
        history.append([step, round(train_nll, 4), round(nll, 4)])
        print(f"step {step} t={time.time() - start:.0f}s train={train_nll:.4f} held_out={nll:.4f}")
        if nll < best["nll"]:
            state = {k: v.detach().clone() for k, v in policy.state_dict().items()}
            best.update(nll=nll, step=step, state=state)

    done = False
    while not done:
        perm = torch.randperm(len(train_data), generator=gen)
        for k in range(0, max(len(perm) - args.batch_size + 1, 1), args.batch_size):
            elapsed = time.time() - start
            if elapsed >= budget or step >= args.steps:
                done = True
                break
            batch = train_data[perm[k : k + args.batch_size].to(device)]
            batch = batch[:, : int((batch != PAD).sum(1).max())]  # cut shared padding
            loss, _ = nll_per_token(policy, batch, config)
            lr = lr_at(step, max(elapsed / budget, step / args.steps), args.lr, args.warmup)
            optim.step(loss, lr, step)
            step += 1
            window.append(float(loss.detach()))
            if step % args.eval_every == 0:
                check()
    if window or not history:
        check()
    if best["state"] is not None:
        policy.load_state_dict(best["state"])  # type: ignore[arg-type]
    policy.eval()
    stats = sample_stats(policy, args.samples, formulas, args.seed)
    info = {
        "data": "MP-20 train + val templates (Wyckoff decomposition, spglib symprec 0.1)"
        if args.limit is None
        else f"MP-20 train+val, first {args.limit} rows each",
        "templates": len(seqs),
        "held_out": len(val_idx),
        "steps": step,
        "best_step": best["step"],
        "epochs": round(step * args.batch_size / max(len(train_idx), 1), 1),
        "batch_size": args.batch_size,
        "lr": args.lr,
        "held_out_nll_per_token": round(float(best["nll"]), 4),  # type: ignore[arg-type]
        "wall_s": round(time.time() - start, 1),
        "data_s": round(data_s, 1),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else str(device),
        "params": policy.num_parameters(),
        "samples": stats,
        "command": "python -m ml.methods.matinvent.pretrain " + " ".join(sys.argv[1:]),
    }
    save_prior(policy, args.out, info)
    if args.history:
        args.history.write_text(json.dumps({**info, "history": history}, indent=1))
    print(json.dumps(info), flush=True)
    return info


def main(argv: Sequence[str] | None = None) -> None:
    train(parse_args(list(argv) if argv is not None else None))


if __name__ == "__main__":
    main()
