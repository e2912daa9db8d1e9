"""Train the Crystal-GFN proxy on MP-20 train + val (DFT labels); MAE on MP-20 test.

    python -m ml.methods.crystal_gfn.train_proxy --device cuda --workers 14 \
        --out ml/weights/crystal_gfn_proxy.pt

Features come from :mod:`ml.methods.crystal_gfn.proxy_data` (cached after the first run).
One cosine learning-rate schedule over ``--epochs`` (or the ``--minutes`` budget, whichever
ends first), L1 loss on both standardised targets, EMA weights released. The test split is
used once, at the end, for the MAE written into the checkpoint's info.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml.generative.training import EMA, Optimiser
from ml.methods.crystal_gfn.proxy import (
    TARGETS,
    LatticeBox,
    ProxyConfig,
    ProxyModel,
    centring_table,
    lattice_features,
    quantiles,
    save_proxy,
)
from ml.methods.crystal_gfn.proxy_data import ProxyData, load_split
from ml.settings import get_ml_settings

WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / "crystal_gfn_proxy.pt"
# The paper's element subset (appendix C): the proxy MAE is also reported on it.
PAPER_ELEMENTS = (1, 3, 6, 7, 8, 9, 12, 14, 15, 16, 17, 26)
GAP_WEIGHT = 0.5  # the energy is the reward's main term; the gap head is secondary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=WEIGHTS)
    p.add_argument("--epochs", type=int, default=400)
    p.add_argument("--minutes", type=float, default=2.0, help="wall-clock budget of training")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--ema", type=float, default=0.998)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu / cuda (default from settings)")
    p.add_argument("--workers", type=int, default=1, help="processes for the featurisation")
    p.add_argument("--limit", type=int, default=None, help="rows per split (tiny runs)")
    p.add_argument("--history", type=Path, help="write the loss history (JSON) here")
    return p.parse_args(argv)


def tensors(data: ProxyData, device: str) -> dict[str, torch.Tensor]:
    return {
        "sg": torch.tensor(data.space_group, device=device),
        "z": torch.tensor(data.z, device=device),
        "count": torch.tensor(data.count, device=device),
        "lattice": torch.tensor(data.lattice, dtype=torch.float32, device=device),
        "y": torch.tensor(
            np.stack([data.formation_energy, data.band_gap], 1), dtype=torch.float32, device=device
        ),
    }


def fit_config(data: ProxyData, args: argparse.Namespace, groups_seen: list[int]) -> ProxyConfig:
    """Standardisation, the lattice box and the seen groups/elements from training data."""
    t = tensors(data, "cpu")
    conv = t["count"].sum(1) * centring_table()[t["sg"]]
    feats = lattice_features(t["lattice"], conv).numpy()
    y = t["y"].numpy()
    g = data.space_group
    default = LatticeBox()
    box = LatticeBox(
        size=quantiles(feats[:, :3].mean(1), 0.005, 0.995),
        ratio_b=_quantiles_or(feats[g < 75, 1] - feats[g < 75, 0], default.ratio_b),
        ratio_c=_quantiles_or(feats[g < 195, 2] - feats[g < 195, 0], default.ratio_c),
        monoclinic_beta=_clip(
            _quantiles_or(data.lattice[(g >= 3) & (g <= 15), 4], default.monoclinic_beta),
            90.0,
            135.0,
        ),
        triclinic_angle=_clip(
            _quantiles_or(data.lattice[g <= 2, 3:].ravel(), default.triclinic_angle), 65.0, 115.0
        ),
    )
    return ProxyConfig(
        d_model=args.d_model,
        hidden=args.hidden,
        lattice_mean=tuple(feats.mean(0)),
        lattice_std=tuple(np.maximum(feats.std(0), 1e-3)),
        target_mean=tuple(np.nanmean(y, 0)),
        target_std=tuple(np.maximum(np.nanstd(y, 0), 1e-3)),
        lattice_box=box.to_dict(),
        space_groups_seen=tuple(groups_seen),
        elements_seen=tuple(sorted({int(z) for z in np.unique(data.z) if z > 0})),
    )


def _quantiles_or(values: np.ndarray, default: tuple[float, float]) -> tuple[float, float]:
    """0.5 % and 99.5 % quantiles; the default box edge with too few values (tiny runs)."""
    return quantiles(values, 0.005, 0.995) if len(values) >= 20 else default


def _clip(bounds: tuple[float, float], lo: float, hi: float) -> tuple[float, float]:
    """Data quantiles kept inside [lo, hi] (triclinic angles there always make a cell)."""
    return max(bounds[0], lo), min(bounds[1], hi)


@torch.no_grad()
def evaluate(model: ProxyModel, data: ProxyData, device: str, batch: int = 4096) -> np.ndarray:
    """(n, 2) predictions (physical units)."""
    t = tensors(data, device)
    out = []
    for i in range(0, len(data), batch):
        s = slice(i, i + batch)
        out.append(model.predict(t["sg"][s], t["z"][s], t["count"][s], t["lattice"][s]).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 2))


def mae_report(pred: np.ndarray, data: ProxyData) -> dict[str, Any]:
    y = np.stack([data.formation_energy, data.band_gap], 1)
    paper = np.array([set(map(int, row[row > 0])) <= set(PAPER_ELEMENTS) for row in data.z])
    out: dict[str, Any] = {"n": len(data)}
    for k, name in enumerate(TARGETS):
        ok = ~np.isnan(y[:, k])
        out[f"mae_{name}"] = round(float(np.abs(pred[ok, k] - y[ok, k]).mean()), 4)
    ok = paper & ~np.isnan(y[:, 0])
    out["n_paper_elements"] = int(ok.sum())
    if ok.any():
        out["mae_formation_energy_paper_elements"] = round(
            float(np.abs(pred[ok, 0] - y[ok, 0]).mean()), 4
        )
    return out


def train(args: argparse.Namespace) -> dict[str, Any]:
    device = args.device or get_ml_settings().torch_device()
    torch.manual_seed(args.seed)
    t0 = time.time()
    parts = {s: load_split(s, args.workers, args.limit) for s in ("train", "val", "test")}
    seen = sorted(set(parts["train"].space_group.tolist()) & set(parts["val"].space_group.tolist()))
    data = ProxyData.concat([parts["train"], parts["val"]])
    keep = ~np.isnan(data.formation_energy)
    data = data.subset(np.flatnonzero(keep))
    data_s = time.time() - t0
    config = fit_config(data, args, seen)
    model = ProxyModel(config).to(device)
    ema = EMA(model, args.ema)
    optim = Optimiser(model, args.lr, weight_decay=args.weight_decay, ema=ema)
    t = tensors(data, device)
    y_norm = (t["y"] - model.y_mean) / model.y_std
    weights = torch.tensor([1.0, GAP_WEIGHT], device=device)
    n = len(data)
    steps_per_epoch = max(1, n // args.batch_size)
    total = args.epochs * steps_per_epoch
    budget = args.minutes * 60.0
    gen = torch.Generator().manual_seed(args.seed)
    print(
        f"device={device} train={n} test={len(parts['test'])} data_s={data_s:.1f} "
        f"params={model.num_parameters():,} groups_seen={len(seen)}",
        flush=True,
    )
    start, step, history = time.time(), 0, []
    done = False
    for epoch in range(args.epochs):
        perm = torch.randperm(n, generator=gen).to(device)
        losses = []
        for b in range(steps_per_epoch):
            progress = max(step / total, (time.time() - start) / budget)
            if progress >= 1.0:
                done = True
                break
            lr = args.lr * min(1.0, (step + 1) / 200) * 0.5 * (1 + math.cos(math.pi * progress))
            idx = perm[b * args.batch_size : (b + 1) * args.batch_size]
            pred = model(t["sg"][idx], t["z"][idx], t["count"][idx], t["lattice"][idx])
            target = y_norm[idx]
            ok = ~torch.isnan(target)
            err = (pred - torch.nan_to_num(target)).abs() * ok * weights
            loss = err.sum() / ok.sum().clamp(min=1)
            optim.step(loss, lr, step)
            losses.append(loss.item())
            step += 1
        if losses:
            history.append([epoch, step, round(float(np.mean(losses)), 4)])
            if epoch % 20 == 0:
                t_s, mean = time.time() - start, np.mean(losses)
                print(f"epoch {epoch} step {step} t={t_s:.0f}s loss={mean:.4f}", flush=True)
        if done:
            break
    wall = time.time() - start
    report = mae_report(evaluate(ema.module, parts["test"], device), parts["test"])
    info = {
        "data": "MP-20 train + val (rows with structures), DFT labels"
        if args.limit is None
        else f"MP-20 train + val, first {args.limit} rows each",
        "train_structures": n,
        "test": report,
        "epochs": history[-1][0] + 1 if history else 0,
        "steps": step,
        "wall_s": round(wall, 1),
        "data_s": round(data_s, 1),
        "device": torch.cuda.get_device_name() if str(device).startswith("cuda") else str(device),
        "params": model.num_parameters(),
        "command": "python -m ml.methods.crystal_gfn.train_proxy " + " ".join(sys.argv[1:]),
    }
    save_proxy(ema.module, args.out, info)
    if args.history:
        args.history.write_text(json.dumps({**info, "history": history}, indent=1))
    print(json.dumps(info), flush=True)
    return info


def main(argv: list[str] | None = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    main()
