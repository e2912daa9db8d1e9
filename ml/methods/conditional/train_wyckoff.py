"""Training CLI for the Wyckoff (symmetry-aware) conditional generator on MP-20 train + val.

    python -m ml.methods.conditional.train_wyckoff --device cuda --minutes 5.5 --workers 14 \
        --out ml/weights/conditional-wyckoff.pt

The Wyckoff decomposition of each split is cached (``--workers`` processes the first time).
One cosine learning-rate schedule over the wall-clock budget; EMA weights are released
(``--export-every`` seconds and at the end, so a run cut off early leaves usable weights),
with the template statistics that propose space groups and Wyckoff assignments.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ml.generative.assignment import TemplateStats
from ml.generative.training import EMA, Optimiser, lr_at
from ml.methods.conditional.checkpoint import (
    WEIGHTS_DIR,
    load_wyckoff_release,
    save_wyckoff_release,
)
from ml.methods.conditional.wyckoff_data import (
    WyckoffArrays,
    arrays_to_batch,
    epoch_batches,
    fit_normalisation,
    load_extra,
    load_split,
)
from ml.methods.conditional.wyckoff_flow import flow_loss
from ml.methods.conditional.wyckoff_model import PROPERTIES, WyckoffFlowModel, WyckoffModelConfig
from ml.settings import get_ml_settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=WEIGHTS_DIR / "conditional-wyckoff.pt")
    p.add_argument("--minutes", type=float, default=5.5, help="wall-clock budget of training")
    p.add_argument("--steps", type=int, default=1_000_000, help="step budget")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--d-model", type=int, default=144)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--ff-mult", type=int, default=2)
    p.add_argument(
        "--mixed-sizes",
        action="store_true",
        help="batches of random crystals (the first release) instead of size-sorted ones",
    )
    p.add_argument(
        "--pair-dim",
        type=int,
        default=64,
        help="pair features in the attention values and the displacement head (0: the first "
        "release's network)",
    )
    p.add_argument(
        "--release-dtype",
        choices=("float32", "float16"),
        default="float32",
        help="storage of the released weights (float32 continues exactly with --init; "
        "float16 halves the file, see ml.methods.conditional.convert_release)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu / cuda (default from settings)")
    p.add_argument("--workers", type=int, default=1, help="processes for the decomposition")
    p.add_argument("--limit", type=int, default=None, help="rows per split (tiny runs)")
    p.add_argument("--log-every", type=int, default=200)
    p.add_argument("--export-every", type=float, default=0.0, help="seconds (0: at end only)")
    p.add_argument("--history", type=Path, help="write the loss history (JSON) here")
    p.add_argument(
        "--extra-atoms",
        type=int,
        default=0,
        help="also train on MP 2018 structures outside MP-20 of at most this many atoms (0: "
        "MP-20 train + val only, the paper's protocol)",
    )
    p.add_argument(
        "--init",
        type=Path,
        help="continue from this release (its EMA weights and config; fresh optimiser), so a "
        "training can be spread over several GPU calls",
    )
    return p.parse_args(argv)


def training_arrays(limit: int | None, workers: int, extra_atoms: int = 0) -> WyckoffArrays:
    parts = [load_split(s, workers, limit) for s in ("train", "val")]
    if extra_atoms > 0:
        parts.append(load_extra(extra_atoms, workers, limit))
    return WyckoffArrays.concat(parts)


def train(args: argparse.Namespace) -> dict[str, Any]:
    device = args.device or get_ml_settings().torch_device()
    torch.manual_seed(args.seed)
    t_data = time.time()
    arrays = training_arrays(args.limit, args.workers, args.extra_atoms)
    stats = TemplateStats.from_arrays(arrays)
    norm, mean, std = fit_normalisation(arrays, PROPERTIES)
    config = WyckoffModelConfig(
        d_model=args.d_model,
        layers=args.layers,
        heads=args.heads,
        ff_mult=args.ff_mult,
        pair_dim=args.pair_dim,
        lattice_mu=norm.mu,
        lattice_sigma=norm.sigma,
        prop_mean=mean,
        prop_std=std,
    )
    prior: dict[str, Any] = {}
    if args.init:
        model, _, prior = load_wyckoff_release(args.init, device)
        model.train()
        # The continued model reads lattice states in its own normalisation; data added since
        # (e.g. --extra-atoms) must not shift it.
        norm = model.config.norm
    else:
        model = WyckoffFlowModel(config).to(device)
    data = arrays_to_batch(arrays, PROPERTIES, norm).to(device)
    data_s = time.time() - t_data
    prior_steps, prior_s = int(prior.get("steps", 0)), float(prior.get("wall_s", 0.0))
    ema = EMA(model, args.ema)
    optim = Optimiser(model, args.lr, betas=(0.9, 0.99), weight_decay=0.0, ema=ema)
    order_gen = torch.Generator().manual_seed(args.seed)
    sizes = None if args.mixed_sizes else data.atoms.cpu()
    noise_gen = torch.Generator(device=device).manual_seed(args.seed + 1)
    print(
        f"device={device} structures={len(arrays)} data_s={data_s:.1f} "
        f"params={model.num_parameters():,} lattice mu={norm.mu:.3f} sigma={norm.sigma:.3f}",
        flush=True,
    )
    use_amp = str(device).startswith("cuda")
    budget = args.minutes * 60.0
    start = last_export = time.time()
    step, history, window = 0, [], []

    def info() -> dict[str, Any]:
        return {
            "data": (
                "MP-20 train + val (Wyckoff decomposition, spglib symprec 0.1)"
                if args.limit is None
                else f"MP-20 train+val, first {args.limit} rows each"
            )
            + (
                f" + MP 2018 outside MP-20 up to {args.extra_atoms} atoms"
                if args.extra_atoms
                else ""
            ),
            "structures": len(arrays),
            "steps": prior_steps + step,
            "epochs": round((prior_steps + step) * args.batch_size / len(arrays), 1),
            "batch_size": args.batch_size,
            "lr": args.lr,
            "wall_s": round(prior_s + time.time() - start, 1),
            "continued_from": prior.get("command") if args.init else None,
            "data_s": round(data_s, 1),
            "device": torch.cuda.get_device_name() if use_amp else str(device),
            "final_loss": history[-1][1:] if history else None,
            "command": "python -m ml.methods.conditional.train_wyckoff " + " ".join(sys.argv[1:]),
            "params": model.num_parameters(),
        }

    def export() -> None:
        save_wyckoff_release(
            ema.module, args.out, stats.to_dict(), info(), dtype=args.release_dtype
        )

    done = False
    while not done:
        for idx in epoch_batches(len(arrays), args.batch_size, order_gen, sizes):
            elapsed = time.time() - start
            if elapsed >= budget or step >= args.steps:
                done = True
                break
            progress = max(elapsed / budget, step / args.steps)
            batch = data.index(idx.to(device)).trim()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                loss, parts = flow_loss(model, batch, noise_gen)
            optim.step(loss, lr_at(step, progress, args.lr, args.warmup), step)
            step += 1
            window.append(torch.stack([loss.detach(), parts["coord"], parts["lattice"]]))
            if step % args.log_every == 0:
                mean_parts = torch.stack(window).mean(0).tolist()
                window.clear()
                history.append([step, *(round(v, 4) for v in mean_parts)])
                print(
                    f"step {step} t={elapsed:.0f}s loss={mean_parts[0]:.4f} "
                    f"coord={mean_parts[1]:.4f} lattice={mean_parts[2]:.4f}",
                    flush=True,
                )
            if args.export_every and time.time() - last_export > args.export_every:
                export()
                last_export = time.time()
    export()
    result = info()
    if args.history:
        args.history.write_text(json.dumps({**result, "history": history}, indent=1))
    print(json.dumps(result), flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    main()
