"""Training CLI for the conditional generator on MP-20 train + val (DFT labels).

    python -m ml.methods.conditional.train --prior uniform --minutes 6

Resumable: the training state is saved every ``--save-every`` seconds and at the end; running
the same command again continues from it (``--fresh`` starts over). The time budget and the
step budget both drive one cosine learning-rate schedule, so a resumed run ends where an
uninterrupted one would. bf16 autocast on GPU. ``--compile`` compiles the model (batches then
keep the full padding width, so shapes are static); ``--export-every`` writes the release
checkpoint while training, so a run cut off early still leaves usable weights.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml.generative.training import EMA, Optimiser, lr_at
from ml.methods.conditional.checkpoint import (
    WEIGHTS_DIR,
    load_release,
    load_training_state,
    save_release,
    save_training_state,
)
from ml.methods.conditional.data import (
    CrystalArrays,
    PaddedDataset,
    fit_normalisation,
    load_split,
)
from ml.methods.conditional.flow import flow_loss
from ml.methods.conditional.geometry import COORD_PRIORS
from ml.methods.conditional.model import PROPERTIES, ConditionalFlowModel, ModelConfig
from ml.settings import get_ml_settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--prior", choices=COORD_PRIORS, default="uniform")
    p.add_argument("--out", type=Path, help="release checkpoint (default ml/weights/...)")
    p.add_argument("--state", type=Path, help="resumable training state (default in cache)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing training state")
    p.add_argument("--init", type=Path, help="start from a release checkpoint's weights")
    p.add_argument("--minutes", type=float, default=6.0, help="wall-clock budget")
    p.add_argument("--steps", type=int, default=1_000_000, help="step budget")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu / cuda (default from settings)")
    p.add_argument("--workers", type=int, default=1, help="processes for CIF parsing")
    p.add_argument("--limit", type=int, default=None, help="rows per split (tiny runs)")
    p.add_argument("--save-every", type=float, default=60.0, help="seconds between states")
    p.add_argument("--log-every", type=int, default=200)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument(
        "--export-every", type=float, default=0.0, help="seconds between releases (0: at end)"
    )
    return p.parse_args(argv)


def training_arrays(limit: int | None, workers: int) -> CrystalArrays:
    return CrystalArrays.concat([load_split(s, workers, limit) for s in ("train", "val")])


def train(args: argparse.Namespace) -> dict[str, Any]:
    device = args.device or get_ml_settings().torch_device()
    torch.manual_seed(args.seed)
    out = args.out or WEIGHTS_DIR / f"conditional-{args.prior}.pt"
    cache = get_ml_settings().cache_dir / "conditional"
    state_path = args.state or cache / f"train-{args.prior}.pt"

    arrays = training_arrays(args.limit, args.workers)
    prior, mean, std = fit_normalisation(arrays, PROPERTIES)
    config = ModelConfig(
        d_model=args.d_model,
        layers=args.layers,
        heads=args.heads,
        coord_prior=args.prior,
        length_mu=prior.mu,
        length_sigma=prior.sigma,
        prop_mean=mean,
        prop_std=std,
    )
    model = ConditionalFlowModel(config).to(device)
    ema = EMA(model, args.ema, warmup=True)
    optim = Optimiser(model, args.lr, betas=(0.9, 0.99), weight_decay=0.0, ema=ema)
    data = PaddedDataset(arrays, prior, PROPERTIES, device)
    order_gen = torch.Generator().manual_seed(args.seed)
    noise_gen = torch.Generator(device=device).manual_seed(args.seed + 1)

    step, elapsed, history = 0, 0.0, []
    prior_steps, prior_wall = 0, 0.0
    if args.init is not None:
        init_model, init_info = load_release(args.init, device)
        if init_model.config.to_dict() != config.to_dict():
            raise SystemExit(f"{args.init} has another config than this run")
        model.load_state_dict(init_model.state_dict())
        ema.module.load_state_dict(init_model.state_dict())
        prior_steps = int(init_info.get("total_steps", init_info.get("steps", 0)))
        prior_wall = float(init_info.get("total_wall_s", init_info.get("wall_s", 0.0)))
        print(f"initialised from {args.init} ({prior_steps} earlier steps)", flush=True)
    if state_path.exists() and not args.fresh:
        st = load_training_state(state_path)
        if st["config"] != config.to_dict():
            raise SystemExit(f"{state_path} was trained with another config; use --fresh")
        model.load_state_dict(st["model"])
        ema.module.load_state_dict(st["ema"])
        optim.opt.load_state_dict(st["opt"])
        order_gen.set_state(st["order_gen"])
        noise_gen.set_state(st["noise_gen"])
        step, elapsed, history = st["step"], st["elapsed"], st["history"]
        print(f"resumed from {state_path} at step {step} ({elapsed:.0f} s)", flush=True)

    print(
        f"prior={args.prior} device={device} structures={len(data)} "
        f"params={model.num_parameters():,} length_prior mu={prior.mu} sigma={prior.sigma}",
        flush=True,
    )
    use_amp = str(device).startswith("cuda")
    budget = args.minutes * 60.0
    start, last_save = time.time() - elapsed, time.time()
    window: list[torch.Tensor] = []
    batches: list[torch.Tensor] = []

    def snapshot() -> None:
        save_training_state(
            state_path,
            config=config.to_dict(),
            model=model.state_dict(),
            ema=ema.module.state_dict(),
            opt=optim.opt.state_dict(),
            order_gen=order_gen.get_state(),
            noise_gen=noise_gen.get_state().cpu(),
            step=step,
            elapsed=time.time() - start,
            history=history,
        )

    def release_info() -> dict[str, Any]:
        wall = time.time() - start
        return {
            "data": "MP-20 train (10,047 recovered) + val (9,047), DFT labels"
            if args.limit is None
            else f"MP-20 train+val, first {args.limit} rows each",
            "structures": len(data),
            "steps": step,
            "epochs": round(step * args.batch_size / len(data), 1),
            "batch_size": args.batch_size,
            "lr": args.lr,
            "wall_s": round(wall, 1),
            "init_from": str(args.init) if args.init else None,
            "total_steps": prior_steps + step,
            "total_wall_s": round(prior_wall + wall, 1),
            "device": torch.cuda.get_device_name() if use_amp else str(device),
            "final_loss": history[-1][2:] if history else None,
            "history": history,
            "command": "python -m ml.methods.conditional.train " + " ".join(sys.argv[1:]),
            "params": model.num_parameters(),
        }

    forward = model
    if args.compile:
        forward = torch.compile(model)
    model.train()
    last_export = time.time()
    while step < args.steps and time.time() - start < budget:
        if not batches:
            batches = data.epoch_batches(args.batch_size, order_gen)
        batch = data.batch(batches.pop(), trim=not args.compile)
        progress = max(step / args.steps, (time.time() - start) / budget)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            loss, parts = flow_loss(forward, batch, noise_gen)  # type: ignore[arg-type]
        optim.step(loss, lr_at(step, progress, args.lr, args.warmup), step)
        window.append(torch.stack([loss.detach(), parts["coord"], parts["lattice"]]))
        step += 1
        if step % args.log_every == 0:
            mean_parts = torch.stack(window).mean(0).tolist()
            window.clear()
            history.append([step, time.time() - start, *mean_parts])
            print(
                f"step {step} t={time.time() - start:.0f}s loss={mean_parts[0]:.4f} "
                f"coord={mean_parts[1]:.4f} lattice={mean_parts[2]:.4f} "
                f"lr={optim.lr:.2e}",
                flush=True,
            )
        if args.export_every > 0 and time.time() - last_export > args.export_every:
            save_release(ema.module, out, {**release_info(), "partial": True})
            last_export = time.time()
        if time.time() - last_save > args.save_every:
            snapshot()
            last_save = time.time()
    snapshot()

    info = release_info()
    save_release(ema.module, out, info)
    print(f"saved {out} ({out.stat().st_size / 2**20:.1f} MiB) after {step} steps", flush=True)
    return {k: v for k, v in info.items() if k != "history"}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    np.seterr(all="ignore")
    print(json.dumps(train(args)), flush=True)


if __name__ == "__main__":
    main()
