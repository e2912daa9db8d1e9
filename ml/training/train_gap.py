"""Train the band-gap oracle (:mod:`ml.oracles.gap_model`) on MP-20 DFT band gaps.

Data: MP-20 train (the 10,047 materials with coordinates) + val, MP-20 test held out entirely.
A seeded 5 % of train + val is the hold-out used to pick the best epoch. ``--extra`` adds the
mp2018 structures (MEGNet's 2018 MP set; labels from the 2018 database) up to ``--extra-max-atoms``.

Loss: binary cross-entropy of "non-metal" (DFT gap > 0) plus ``--gap-weight`` x L1 of the gap on
non-metals; the backbone is fine-tuned at a lower learning rate than the heads.

    python -m ml.training.train_gap --device cuda --minutes 6 --out ml/weights/bandgap_chgnet.pt
    python -m ml.training.train_gap --device cpu --limit 64 --epochs 1 --out /tmp/gap.pt   # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ml.data.cache import parse_cif
from ml.oracles.chgnet import ChgnetGraphBuilder
from ml.oracles.gap_model import (
    GapModelConfig,
    GapNet,
    _chgnet_backbone,
    crystal_features,
    load_gap_model,
    save_gap_model,
)
from ml.parallel import pool_map


def _graph(cif: str):  # -> CrystalGraph | None (a pool worker)
    crystal = parse_cif(cif)
    return None if crystal is None else ChgnetGraphBuilder()(crystal)


def _init_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def load_rows(data_dir: Path, extra: bool, extra_max_atoms: int, limit: int | None) -> pd.DataFrame:
    frames = []
    for dataset, split in (("mp20", "train"), ("mp20", "val")) + (
        (("mp2018", "extra"),) if extra else ()
    ):
        df = pd.read_csv(data_dir / dataset / f"{split}.csv.gz")
        if dataset == "mp2018":
            df = df[df["n_atoms"] <= extra_max_atoms]
        df = df.assign(source=f"{dataset}/{split}")
        frames.append(df.head(limit) if limit else df)
    return pd.concat(frames, ignore_index=True)


def build_graphs(cifs: list[str], workers: int) -> list:
    if workers <= 1:
        return [_graph(c) for c in cifs]
    with mp.get_context("fork").Pool(workers, initializer=_init_worker) as pool:
        return pool_map(pool, _graph, cifs, chunksize=64)


def evaluate(model: GapNet, graphs: list, gaps: np.ndarray, batch: int) -> dict[str, float]:
    model.eval()
    preds = []
    for start in range(0, len(graphs), batch):
        preds.append(model.predict(graphs[start : start + batch]).double().cpu().numpy())
    return _metrics(np.concatenate(preds), gaps)


def train_heads_on_frozen_backbone(
    args: argparse.Namespace,
    graphs: list,
    gaps: np.ndarray,
    train_idx: np.ndarray,
    hold: np.ndarray,
    rng: np.random.Generator,
    t0: float,
) -> None:
    """The pretrained backbone stays as it is: its features are computed once, then the heads
    train on them for ``--epochs`` (or ``--minutes``), keeping the best hold-out epoch."""
    model = GapNet(_chgnet_backbone(), GapModelConfig(freeze_backbone=True)).to(args.device)
    model.backbone.requires_grad_(False)
    with torch.no_grad():
        feats = torch.cat(
            [
                crystal_features(model.backbone, graphs[s : s + 64])
                for s in range(0, len(graphs), 64)
            ]
        )
    print(f"features {tuple(feats.shape)} by {time.time() - t0:.0f} s", flush=True)
    y = torch.tensor(gaps, dtype=torch.float32, device=args.device)
    head_params = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    opt = torch.optim.AdamW(head_params, lr=args.lr, weight_decay=args.weight_decay)
    hold_t = torch.as_tensor(hold)
    best: dict = {"mae": math.inf}
    t_train = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.as_tensor(rng.permutation(train_idx))
        for start in range(0, len(order), args.batch):
            idx = order[start : start + args.batch]
            logit, gap = model.heads(feats[idx])
            loss = gap_loss(logit, gap, y[idx], args.gap_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            logit, gap = model.heads(feats[hold_t])
            p = torch.where(logit >= 0, gap, torch.zeros_like(gap)).double().cpu().numpy()
        metrics = _metrics(p, gaps[hold])
        if metrics["mae"] < best["mae"]:
            best = {**metrics, "epoch": epoch}
            meta = {
                "data": "MP-20 train (10,047 with coordinates) + val",
                "training": "frozen CHGNet 0.3.0 backbone, heads only",
                "n_train": len(train_idx),
                "n_holdout": len(hold),
                "holdout": {k: round(v, 4) for k, v in metrics.items()},
                "epoch": epoch,
                "batch": args.batch,
                "lr": args.lr,
                "seconds": round(time.time() - t0),
                "command": "python -m ml.training.train_gap " + " ".join(sys.argv[1:]),
            }
            save_gap_model(model, args.out, meta)
        if epoch % 10 == 0:
            print(json.dumps({"epoch": epoch, **{k: round(v, 4) for k, v in metrics.items()}}))
        if time.time() - t_train > args.minutes * 60:
            break
    print(f"best hold-out {best} after {time.time() - t0:.0f} s; wrote {args.out}")


def gap_loss(
    logit: torch.Tensor, gap: torch.Tensor, y: torch.Tensor, weight: float
) -> torch.Tensor:
    """BCE of "non-metal" plus ``weight`` x L1 of the gap on the non-metals."""
    nonmetal = (y > 0).float()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, nonmetal)
    if nonmetal.sum() > 0:
        loss = loss + weight * (torch.abs(gap - y) * nonmetal).sum() / nonmetal.sum()
    return loss


def _metrics(p: np.ndarray, gaps: np.ndarray) -> dict[str, float]:
    return {
        "mae": float(np.mean(np.abs(p - gaps))),
        "r2": 1.0 - float(np.sum((p - gaps) ** 2) / np.sum((gaps - gaps.mean()) ** 2)),
        "metal_accuracy": float(np.mean((p > 0) == (gaps > 0))),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="train the band-gap oracle")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--extra", action="store_true", help="add mp2018 structures")
    ap.add_argument("--extra-max-atoms", type=int, default=40)
    ap.add_argument("--limit", type=int, default=None, help="first N rows per split (smoke)")
    ap.add_argument("--epochs", type=int, default=1000)
    ap.add_argument("--minutes", type=float, default=6.0, help="training time budget")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3, help="heads; the backbone gets lr/3")
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--gap-weight", type=float, default=1.0)
    ap.add_argument("--holdout", type=float, default=0.05)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log", type=Path, default=None, help="JSON lines per epoch")
    ap.add_argument("--init", type=Path, default=None, help="continue from this checkpoint")
    ap.add_argument(
        "--freeze-backbone",
        action="store_true",
        help="train the heads only, on features computed once (fast on a CPU)",
    )
    args = ap.parse_args(argv)

    from ml.settings import get_ml_settings

    data_dir = args.data_dir or Path(get_ml_settings().data_dir)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    rows = load_rows(data_dir, args.extra, args.extra_max_atoms, args.limit)
    graphs = build_graphs(rows["cif"].tolist(), args.workers)
    keep = [i for i, g in enumerate(graphs) if g is not None]
    rows = rows.iloc[keep].reset_index(drop=True)
    graphs = [graphs[i].to(args.device) for i in keep]
    gaps = rows["band_gap"].to_numpy(dtype=np.float64)
    print(
        f"{len(graphs)} graphs ({rows['source'].value_counts().to_dict()}) "
        f"in {time.time() - t0:.0f} s"
    )

    # Hold-out from MP-20 rows only, so the model is picked on the distribution it serves.
    mp20 = np.flatnonzero(rows["source"].str.startswith("mp20").to_numpy())
    hold = rng.choice(mp20, size=max(1, int(args.holdout * len(mp20))), replace=False)
    train_idx = np.setdiff1d(np.arange(len(graphs)), hold)
    hold_graphs = [graphs[i] for i in hold]

    if args.freeze_backbone:
        train_heads_on_frozen_backbone(args, graphs, gaps, train_idx, hold, rng, t0)
        return
    if args.init is not None:
        model, init_meta = load_gap_model(args.init, args.device)
        print(f"continuing from {args.init}: {init_meta.get('holdout')}")
    else:
        model = GapNet(_chgnet_backbone(), GapModelConfig()).to(args.device)
    head_params = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    opt = torch.optim.AdamW(
        [
            {"params": model.backbone.parameters(), "lr": args.lr / 3},
            {"params": head_params, "lr": args.lr},
        ],
        weight_decay=args.weight_decay,
    )
    steps_per_epoch = math.ceil(len(train_idx) / args.batch)
    budget_s = args.minutes * 60
    target = torch.tensor(gaps, dtype=torch.float32, device=args.device)
    best: dict = {"mae": math.inf}
    log = args.log.open("w") if args.log else None
    t_train = time.time()
    step = 0
    for epoch in range(args.epochs):
        model.train()
        order = rng.permutation(train_idx)
        losses = []
        for start in range(0, len(order), args.batch):
            # Cosine decay over the time budget (epochs are cut by time, not counted).
            frac = min(1.0, (time.time() - t_train) / budget_s)
            for group, base in zip(opt.param_groups, (args.lr / 3, args.lr), strict=True):
                group["lr"] = base * 0.5 * (1 + math.cos(math.pi * frac))
            idx = order[start : start + args.batch]
            logit, gap = model([graphs[i] for i in idx])
            loss = gap_loss(logit, gap, target[idx], args.gap_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            losses.append(float(loss))
            step += 1
        metrics = evaluate(model, hold_graphs, gaps[hold], args.batch * 2)
        elapsed = time.time() - t_train
        entry = {"epoch": epoch, "step": step, "loss": float(np.mean(losses)), "s": round(elapsed)}
        entry.update({f"holdout_{k}": round(v, 4) for k, v in metrics.items()})
        print(json.dumps(entry), flush=True)
        if log:
            log.write(json.dumps(entry) + "\n")
        if metrics["mae"] < best["mae"]:
            best = {**metrics, "epoch": epoch, "step": step}
            meta = {
                "data": "MP-20 train (10,047 with coordinates) + val"
                + (f" + mp2018 extra (<= {args.extra_max_atoms} atoms)" if args.extra else ""),
                "n_train": len(train_idx),
                "n_holdout": len(hold),
                "holdout": {k: round(v, 4) for k, v in metrics.items()},
                "epoch": epoch,
                "step": step,
                "steps_per_epoch": steps_per_epoch,
                "batch": args.batch,
                "lr": args.lr,
                "seconds": round(elapsed),
                "device": str(torch.cuda.get_device_name() if args.device == "cuda" else "cpu"),
                "command": "python -m ml.training.train_gap " + " ".join(argv or sys.argv[1:]),
            }
            save_gap_model(model, args.out, meta)
        if elapsed > budget_s:
            break
    print(f"best hold-out {best} after {time.time() - t0:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
