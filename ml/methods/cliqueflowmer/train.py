"""Train a CliqueFlowmer checkpoint on MP-20 train + val.

    python -m ml.methods.cliqueflowmer.train --property formation_energy \\
        --out ml/weights/cliqueflowmer_eform.pt --work-dir .cache/cliqueflowmer/runs/eform \\
        --time-budget 330

Either ``--steps`` fixes the run length or ``--time-budget`` (seconds of training) sets it
from the measured speed of the first steps. Warm-ups follow the paper, scaled to the run:
beta rises linearly from 0 to 1e-3 over the first ``warmup-frac`` of the steps, then tau_pred
from 1e-4 to 1 over the next ``warmup-frac``. The learning rate warms up for 200 steps and
decays by a cosine to 10 % at the end. ``--resume`` continues from ``work-dir/state.pt``
(saved every ``--save-every`` seconds and at the end). bf16 autocast on CUDA.

``--init CHECKPOINT`` starts from an exported checkpoint's weights (fresh optimiser and
schedule); from another property's checkpoint the autoencoder is reused and the predictor
starts afresh; from a checkpoint without pair geometry, a ``--pair-dim`` run keeps its new pair
parameters, with the pair values zeroed so it starts as the checkpoint's network.
``--pair-dim`` > 0 adds pair geometry to the geometry decoder (``model.py``).
``--export-every`` writes the averaged weights to ``--out`` while training, so a run cut off
early still leaves a usable checkpoint. ``--compile`` compiles the three
transformers (static shapes: batches are padded to ``max_atoms``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml.generative.training import EMA, Optimiser
from ml.methods.cliqueflowmer.checkpoint import export_checkpoint, load_checkpoint
from ml.methods.cliqueflowmer.config import CliqueFlowmerConfig, tiny_config
from ml.methods.cliqueflowmer.data import PROPERTIES, labels_for, load_split
from ml.methods.cliqueflowmer.geometry import LengthPrior, MaterialBatch, PackedMaterials
from ml.methods.cliqueflowmer.metrics import autocast, composition_accuracy, predictor_metrics
from ml.methods.cliqueflowmer.model import CliqueFlowmer

TRAIN_SPLITS = ("train", "val")
LR_WARMUP = 200


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--property", choices=PROPERTIES, required=True)
    p.add_argument("--out", type=Path, required=True, help="inference checkpoint (bf16) path")
    p.add_argument("--work-dir", type=Path, required=True, help="resumable state and logs")
    p.add_argument("--labels", choices=("oracle", "dft"), default="oracle")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--time-budget", type=float, default=None, help="seconds of training")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-frac", type=float, default=0.25)
    p.add_argument("--ema", type=float, default=0.999, help="weight-average decay")
    p.add_argument("--limit", type=int, default=None, help="first N materials per split")
    p.add_argument("--tiny", action="store_true", help="tiny model (tests)")
    p.add_argument(
        "--pair-dim", type=int, default=0, help="pair geometry in the geometry decoder (0: off)"
    )
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--init", type=Path, default=None, help="exported checkpoint to start from")
    p.add_argument("--compile", action="store_true", help="torch.compile the transformers")
    p.add_argument(
        "--export-every", type=float, default=0.0, help="seconds between exports (0: at end)"
    )
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--save-every", type=float, default=60.0, help="seconds between states")
    p.add_argument("--eval-size", type=int, default=2000, help="test materials for metrics")
    return p.parse_args(argv)


def schedule(
    step: int, total: int, warmup_frac: float, cfg: CliqueFlowmerConfig, lr: float
) -> tuple[float, float, float]:
    """(learning rate, beta, tau_pred) at ``step``: beta then tau_pred warmed up linearly."""
    w = max(1, int(warmup_frac * total))
    beta = cfg.beta_max * min(1.0, step / w)
    frac = min(1.0, max(0.0, (step - w) / w))
    tau = cfg.tau_pred_init + (cfg.tau_pred_max - cfg.tau_pred_init) * frac
    if step < LR_WARMUP:
        cur = lr * (step + 1) / LR_WARMUP
    else:
        prog = min(1.0, (step - LR_WARMUP) / max(1, total - LR_WARMUP))
        cur = lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog)))
    return cur, beta, tau


def load_training_data(
    prop: str, labels: str, limit: int | None
) -> tuple[PackedMaterials, np.ndarray]:
    parts = [load_split(s, limit) for s in TRAIN_SPLITS]
    packed = PackedMaterials.concat(parts)
    y = labels_for(packed, prop, labels, TRAIN_SPLITS)  # type: ignore[arg-type]
    return packed, y


def init_from_checkpoint(model: CliqueFlowmer, path: Path, prop: str) -> dict[str, Any]:
    """Copy an exported checkpoint's weights into ``model`` (same config required).

    The model's own length prior and label statistics are kept; from a checkpoint of another
    property the predictor is left at its fresh initialisation."""
    src, info = load_checkpoint(path)
    if _without_pair(src.cfg) != _without_pair(model.cfg):
        raise SystemExit(f"{path} has another model config than this run")
    keep = {"len_mu", "len_sigma", "y_mean", "y_std"}
    if info.get("property") != prop:
        keep |= {k for k in model.state_dict() if k.startswith("predictor.")}
    own = model.state_dict()
    theirs = src.state_dict()
    if src.cfg.pair_dim != model.cfg.pair_dim:
        if src.cfg.pair_dim:
            raise SystemExit(f"{path} has pair geometry of another width than this run")
        theirs = {**theirs, **_pair_start(own, theirs)}
    state = {k: (own[k] if k in keep else v) for k, v in theirs.items()}
    model.load_state_dict(state)
    meta = info.get("meta", {})
    return {
        "path": str(path),
        "property": info.get("property"),
        "steps": int(meta.get("total_steps", meta.get("steps", 0))),
        "train_seconds": float(meta.get("total_train_seconds", meta.get("train_seconds", 0.0))),
    }


def _without_pair(cfg: CliqueFlowmerConfig) -> dict[str, Any]:
    pair = {"pair_dim", "pair_freqs", "distance_rbf", "distance_max"}
    return {k: v for k, v in cfg.to_dict().items() if k not in pair}


def _pair_start(own: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The pair parameters a checkpoint without them lacks: fresh, except the attention's pair
    values, zeroed, so the network starts as the checkpoint's (the displacement read-out's
    coefficient is zero already); they still get gradients and grow from there."""
    fresh = {k: v for k, v in own.items() if k not in theirs}
    return {k: torch.zeros_like(v) if k.endswith("pair_value") else v for k, v in fresh.items()}


def log_line(fh: Any, record: dict[str, Any]) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    fh.write(line + "\n")
    fh.flush()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.steps is None and args.time_budget is None:
        raise SystemExit("give --steps or --time-budget")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(args.seed)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    state_path = args.work_dir / "state.pt"
    log_fh = (args.work_dir / "train_log.jsonl").open("a")
    t_start = time.time()

    packed, y = load_training_data(args.property, args.labels, args.limit)
    known = np.isfinite(y)
    prior = LengthPrior.fit(packed.lengths, packed.num_atoms)
    cfg = tiny_config() if args.tiny else CliqueFlowmerConfig()
    cfg = dataclasses.replace(cfg, pair_dim=args.pair_dim)
    model = CliqueFlowmer(cfg, prior).to(device)
    model.set_label_stats(float(y[known].mean()), float(y[known].std()))
    init: dict[str, Any] | None = None
    if args.init is not None and not (args.resume and state_path.is_file()):
        init = init_from_checkpoint(model, args.init, args.property)
        print(f"initialised from {args.init} ({init['steps']} earlier steps)", flush=True)
    # Exponential moving average of the weights: the exported model (smoother samples). Its
    # copy of the model is made before compiling, so it exports and evaluates at any shape.
    ema = EMA(model, args.ema, warmup=True)
    optim = Optimiser(model, args.lr, weight_decay=args.weight_decay, ema=ema)
    if args.compile:
        for sub in (model.encoder, model.atom_decoder, model.flow):
            sub.compile()
    y_std = (y - float(model.y_mean)) / float(model.y_std)
    data = MaterialBatch.from_packed(packed, y=y_std, device=device)
    n = len(packed)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    step, total, trained_s = 0, args.steps, 0.0
    if args.resume and state_path.is_file():
        st = torch.load(state_path, map_location="cpu", weights_only=False)
        model.load_state_dict(st["model"])
        optim.opt.load_state_dict(st["opt"])  # moves the moments onto the parameters' device
        for e, v in zip(ema.averaged, st["ema"], strict=True):
            e.copy_(v)
        gen.set_state(st["gen"])
        step, total, trained_s = st["step"], st["total"], st["trained_s"]
        if args.steps is not None:
            total = args.steps
        print(f"resumed at step {step}/{total}", flush=True)
    log_line(
        log_fh,
        {
            "event": "start",
            "property": args.property,
            "labels": args.labels,
            "materials": n,
            "labelled": int(known.sum()),
            "params": model.num_parameters(),
            "device": str(device),
            "prior_mu": prior.mu.tolist(),
            "prior_sigma": prior.sigma.tolist(),
            "y_mean": float(model.y_mean),
            "y_std": float(model.y_std),
            "data_s": round(time.time() - t_start, 1),
            "init": init,
        },
    )

    def save_state() -> None:
        torch.save(
            {
                "model": model.state_dict(),
                "opt": optim.opt.state_dict(),
                "ema": [e.detach() for e in ema.averaged],
                "gen": gen.get_state(),
                "step": step,
                "total": total,
                "trained_s": trained_s,
                "config": cfg.to_dict(),
            },
            state_path,
        )

    def export_ema(meta: dict[str, Any]) -> int:
        return export_checkpoint(ema.module, args.out, args.property, meta)

    model.train()
    last_export = time.time()
    perm = torch.randperm(n, device=device, generator=gen)
    cursor = 0
    sums: dict[str, torch.Tensor] = {}
    count = 0
    history: list[dict[str, Any]] = []
    last_save = time.time()
    t_loop = time.time()
    calib_at, calib_t = 20, 0.0
    provisional = total or 10**9
    while step < (total or provisional):
        if cursor + args.batch_size > n:
            perm = torch.randperm(n, device=device, generator=gen)
            cursor = 0
        idx = perm[cursor : cursor + min(args.batch_size, n)]
        cursor += len(idx)
        batch = data.index(idx)
        lr, beta, tau = schedule(step, total or provisional, args.warmup_frac, cfg, args.lr)
        with autocast(device):
            loss, parts = model.loss(batch, beta, tau, gen)
        optim.step(loss, lr, step)
        step += 1
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v
        count += 1
        if total is None:
            if step == calib_at:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                calib_t = time.time()
            elif step == calib_at + 50:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                per_step = (time.time() - calib_t) / 50
                elapsed = trained_s + time.time() - t_loop
                total = step + int(max(0.0, args.time_budget - elapsed) / per_step)
                log_line(log_fh, {"event": "calibrated", "s_per_step": per_step, "total": total})
        if step % args.log_every == 0 or step == total:
            rec = {k: round(float(v) / count, 5) for k, v in sums.items()}
            rec.update(
                step=step,
                lr=lr,
                beta=beta,
                tau_pred=tau,
                elapsed=round(trained_s + time.time() - t_loop, 1),
            )
            history.append(rec)
            log_line(log_fh, rec)
            sums, count = {}, 0
        if args.export_every > 0 and time.time() - last_export > args.export_every:
            export_ema({"partial": True, "steps": step, "total": total, "last": history[-1:]})
            last_export = time.time()
        if time.time() - last_save > args.save_every:
            trained_s += time.time() - t_loop
            t_loop = time.time()
            save_state()
            last_save = time.time()
    trained_s += time.time() - t_loop
    save_state()

    # Held-out checks on MP-20 test (never trained on), with the averaged weights, on the
    # uncompiled copy (evaluation batches have other shapes than training ones). Its weights
    # require gradients again, as the metrics were always computed: frozen, the attention
    # pool's query projection takes another CPU kernel and the figures move in the 9th digit.
    model = ema.module.requires_grad_(True).eval()
    final = history[-1] if history else {}
    meta: dict[str, Any] = {
        "data": f"MP-20 {'+'.join(TRAIN_SPLITS)}: {n} materials, {int(known.sum())} labelled",
        "labels": args.labels,
        "steps": step,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "warmup_frac": args.warmup_frac,
        "ema": args.ema,
        "train_seconds": round(trained_s, 1),
        "init": init,
        "total_steps": step + (init["steps"] if init else 0),
        "total_train_seconds": round(trained_s + (init["train_seconds"] if init else 0.0), 1),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "final_losses": final,
        "command": "python -m ml.methods.cliqueflowmer.train "
        + " ".join(sys.argv[1:] if argv is None else argv),
    }
    # Export first, so a failure in the checks below never loses the trained weights.
    export_checkpoint(model, args.out, args.property, meta)
    test = load_split("test", args.limit)
    rng = np.random.default_rng(0)
    pick = rng.permutation(len(test))[: args.eval_size]
    test_sub = test.subset(np.sort(pick))
    y_test = labels_for(test_sub, args.property, args.labels, ("test",))  # type: ignore[arg-type]
    meta["test_predictor"] = predictor_metrics(model, test_sub, y_test, device)
    meta["test_composition_accuracy"] = composition_accuracy(
        model, test_sub.subset(np.arange(min(500, len(test_sub)))), device
    )
    size = export_checkpoint(model, args.out, args.property, meta)
    log_line(log_fh, {"event": "done", "checkpoint_bytes": size, **meta})
    with (args.work_dir / "history.json").open("w") as fh:
        json.dump(history, fh)
    return meta


if __name__ == "__main__":
    main()
