"""CliqueFlowmer latent search settings, judged by the oracles on decoded structures.

The paper protocol (``cliqueflowmer_paper.py``) fixes T = 2000 ES steps, AdamW lr 3e-4 and
weight decay 0.5. This sweep encodes the same N MP-20 test seeds once and, for each setting
(steps, weight decay, ES sigma), optimises, decodes (beam 10, Euler + CFG w = 2, the same
decoding noise for every setting) and scores all candidates and the top-k % by the predictor.
Steps 0 is the decode-and-select baseline. It answers whether any setting of the paper's
search beats decoding the seeds alone, at the current decoder quality.

    python benchmarks/cliqueflowmer_es_sweep.py --checkpoint ml/weights/cliqueflowmer_eform.pt \\
        --n-seeds 10000 --settings 0:0.5:0.1 250:0.5:0.1 2000:0.5:0.1 2000:0:0.1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cliqueflowmer_paper import (
    Scorer,
    _init_worker,
    add_decode_args,
    decode_seeded,
    summary,
    validity,
)

from ml.methods.cliqueflowmer.checkpoint import load_checkpoint
from ml.methods.cliqueflowmer.data import load_split
from ml.methods.cliqueflowmer.metrics import encode_packed
from ml.methods.cliqueflowmer.optimizer import OptimiserSettings, optimise_latents


def parse_setting(text: str) -> tuple[int, float, float]:
    """'steps:weight_decay:sigma' -> (steps, weight_decay, sigma)."""
    steps, wd, sigma = text.split(":")
    return int(steps), float(wd), float(sigma)


def _num(x: float | None) -> str:
    """A mean for the table; None when nothing in the group could be scored."""
    return "nan" if x is None else f"{x:.3f}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--n-seeds", type=int, default=10_000)
    p.add_argument(
        "--settings",
        nargs="+",
        default=["0:0.5:0.1", "250:0.5:0.1", "500:0.5:0.1", "2000:0.5:0.1", "500:0:0.1"],
        help="steps:weight_decay:sigma, one optimisation each",
    )
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--top-percent", type=float, default=10.0)
    add_decode_args(p)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pool = ProcessPoolExecutor(args.workers, initializer=_init_worker) if args.workers > 1 else None
    scorer = Scorer(device, pool)
    model, info = load_checkpoint(args.checkpoint, device)
    prop = info["property"]
    test = load_split("test")
    n = min(args.n_seeds, len(test))
    seeds = test.subset(np.sort(np.random.default_rng(args.seed).permutation(len(test))[:n]))
    z0, _ = encode_packed(model, seeds, device)
    k = max(1, round(n * args.top_percent / 100))
    results: dict[str, Any] = {
        "checkpoint": str(args.checkpoint),
        "property": prop,
        "n_seeds": n,
        "lr": args.lr,
        "pairs": args.pairs,
        "rows": [],
    }
    print(
        f"{'steps':>5} {'wd':>4} {'sigma':>5} | {'f all':>7} {'f top':>7} | "
        f"{'oracle all':>10} {'oracle top':>10} | {'valid':>5} {'|z|':>5} | s",
        flush=True,
    )
    for text in args.settings:
        steps, wd, sigma = parse_setting(text)
        t = time.time()
        cfg = OptimiserSettings(
            steps=steps, lr=args.lr, weight_decay=wd, pairs=args.pairs, sigma=sigma
        )
        gen = torch.Generator(device=device).manual_seed(args.seed)
        z, _ = optimise_latents(model.predict, z0, cfg, gen) if steps > 0 else (z0, None)
        with torch.no_grad():
            pred = model.predict(z).float().cpu().numpy()
        top = np.argsort(pred)[:k]
        cands = decode_seeded(model, z, args, device, args.seed + 1)
        valid = validity(cands, pool)
        values = scorer.score(prop, cands, valid)
        row = {
            "steps": steps,
            "weight_decay": wd,
            "sigma": sigma,
            "predicted_all": float(pred.mean()),
            "predicted_top": float(pred[top].mean()),
            "all": summary(values),
            "top": summary(values, top),
            "validity": float(valid.mean()),
            "latent_norm": float(z.norm(dim=-1).mean()),
            "seconds": round(time.time() - t, 1),
        }
        results["rows"].append(row)
        print(
            f"{steps:>5} {wd:>4g} {sigma:>5g} | {row['predicted_all']:>7.3f} "
            f"{row['predicted_top']:>7.3f} | {_num(row['all']['objective']):>10} "
            f"{_num(row['top']['objective']):>10} | {row['validity']:>5.3f} "
            f"{row['latent_norm']:>5.1f} | {row['seconds']}",
            flush=True,
        )
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1))
    if pool is not None:
        pool.shutdown()
    return results


if __name__ == "__main__":
    main()
