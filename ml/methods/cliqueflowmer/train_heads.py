"""Fit property heads on a frozen CliqueFlowmer checkpoint's latents (CPU, minutes).

    python -m ml.methods.cliqueflowmer.train_heads \\
        --checkpoint ml/weights/cliqueflowmer_bandgap.pt --heads band_gap formation_energy \\
        --latents /tmp/cf_bandgap_latents.npz

Encodes MP-20 train + val + test once (posterior mean and log-std, cached in ``--latents``),
fits each head on train + val with inputs drawn from the posterior q(z | x) (as the
checkpoint's own predictor was trained, so the head is smooth where ES perturbs), reports
MAE / RMSE / R^2 / Spearman of f(mu_z) on test and writes ``<checkpoint>_heads.pt``.

Labels: ``band_gap`` is the DFT PBE gap of MP-20 (``band_gap`` column); ``formation_energy``
is CHGNet-Eform from the reference table (what the service's default oracle and the
formation-energy checkpoint use).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml.methods.cliqueflowmer.checkpoint import load_checkpoint
from ml.methods.cliqueflowmer.data import label_table, load_split
from ml.methods.cliqueflowmer.heads import HeadSpec, LatentHead, heads_path, save_heads
from ml.methods.cliqueflowmer.metrics import encode_packed, spearman

SPLITS = ("train", "val", "test")
FIT_SPLITS = ("train", "val")
HEAD_TARGETS = {
    "band_gap": "DFT PBE band gap of MP-20 (eV), plain (no formation-energy term)",
    "formation_energy": "CHGNet-Eform formation energy per atom (eV/atom)",
}


def encode_all(checkpoint: Path, cache: Path, limit: int | None = None) -> dict[str, np.ndarray]:
    """mu, log_std, ids, split of every MP-20 material with coordinates (cached)."""
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    model, _ = load_checkpoint(checkpoint)
    parts: dict[str, list[np.ndarray]] = {"mu": [], "log_std": [], "ids": [], "split": []}
    for split in SPLITS:
        t0 = time.time()
        packed = load_split(split, limit)
        mu, ls = encode_packed(model, packed, "cpu", batch=256)
        parts["mu"].append(mu.numpy())
        parts["log_std"].append(ls.numpy())
        parts["ids"].append(packed.ids.astype(str))
        parts["split"].append(np.full(len(packed), split))
        print(f"encoded {split}: {len(packed)} in {time.time() - t0:.0f} s", flush=True)
    out = {k: np.concatenate(v) for k, v in parts.items()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def labels(prop: str, ids: np.ndarray) -> np.ndarray:
    if prop == "band_gap":
        table = label_table("dft", SPLITS)
        col = "gap"
    elif prop == "formation_energy":
        table = label_table("oracle", SPLITS)
        col = "eform"
    else:
        raise SystemExit(f"no head recipe for {prop!r}; known: {sorted(HEAD_TARGETS)}")
    t = table.drop_duplicates("material_id").set_index("material_id").reindex(ids.astype(str))
    return t[col].to_numpy(dtype=float)


def regression_metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    err = pred - y
    return {
        "n": len(y),
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "r2": float(1 - (err**2).sum() / ((y - y.mean()) ** 2).sum()),
        "spearman": spearman(pred, y),
    }


def fit_head(
    head: LatentHead,
    mu: np.ndarray,
    log_std: np.ndarray,
    y: np.ndarray,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
) -> list[float]:
    """AdamW on standardised labels, inputs z ~ q(z | x); cosine lr decay. Returns losses."""
    gen = torch.Generator().manual_seed(seed)
    mu_t, std_t = torch.as_tensor(mu), torch.exp(torch.as_tensor(log_std))
    head.y_mean.fill_(float(y.mean()))
    head.y_std.fill_(float(y.std()))
    y_t = (torch.as_tensor(y, dtype=torch.float32) - head.y_mean) / head.y_std
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.05)
    losses = []
    head.train()
    for _ in range(steps):
        idx = torch.randint(len(y_t), (batch,), generator=gen)
        z = mu_t[idx] + std_t[idx] * torch.randn(batch, mu_t.shape[1], generator=gen)
        loss = ((head.standardised(z) - y_t[idx]) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if len(losses) % 1000 == 0:
            print(f"step {len(losses)}: loss {np.mean(losses[-1000:]):.4f}", flush=True)
    head.eval()
    return losses


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--heads", nargs="+", choices=sorted(HEAD_TARGETS), default=["band_gap"])
    p.add_argument("--latents", type=Path, required=True, help="cache of the encoded splits")
    p.add_argument("--out", type=Path, default=None, help="default: <checkpoint>_heads.pt")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, default=None, help="default: the checkpoint's mlp_dim")
    p.add_argument("--limit", type=int, default=None, help="first N per split (tests)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)

    lat = encode_all(args.checkpoint, args.latents, args.limit)
    model, _ = load_checkpoint(args.checkpoint)
    fit = np.isin(lat["split"], FIT_SPLITS)
    test = lat["split"] == "test"
    report: dict[str, Any] = {"checkpoint": args.checkpoint.name, "heads": {}}
    with torch.no_grad():
        own = model.predict(torch.as_tensor(lat["mu"][test])).numpy()
    specs = {}
    for prop in args.heads:
        y = labels(prop, lat["ids"])
        known = np.isfinite(y)
        tr, te = fit & known, test & known
        head = LatentHead(model.cfg, args.hidden)
        t0 = time.time()
        losses = fit_head(
            head,
            lat["mu"][tr],
            lat["log_std"][tr],
            y[tr],
            args.steps,
            args.batch_size,
            args.lr,
            args.seed,
        )
        with torch.no_grad():
            pred = head(torch.as_tensor(lat["mu"][te])).numpy()
        metrics = regression_metrics(pred, y[te])
        # The checkpoint's own predictor against the same labels: how well it ranks them.
        base = regression_metrics(own[known[test]], y[te])
        meta = {
            "labels": HEAD_TARGETS[prop],
            "fit_materials": int(tr.sum()),
            "steps": args.steps,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "fit_seconds": round(time.time() - t0, 1),
            "final_loss": float(np.mean(losses[-100:])),
            "test": metrics,
            "checkpoint_predictor_on_same_labels": base,
        }
        specs[prop] = HeadSpec(head, HEAD_TARGETS[prop], meta)
        report["heads"][prop] = meta
        print(json.dumps({"head": prop, **meta}), flush=True)
    out = args.out or heads_path(args.checkpoint)
    report["bytes"] = save_heads(out, args.checkpoint, model.cfg, specs)
    report["out"] = str(out)
    print(json.dumps({"wrote": str(out), "bytes": report["bytes"]}), flush=True)
    return report


if __name__ == "__main__":
    # The heads are tiny: one thread is as fast, and immune to spin-waiting on a busy machine
    # (two threads on two loaded cores took over ten minutes for what one does in one).
    torch.set_num_threads(1)
    main()
