"""Train a Crystal-GFN for a fixed configuration and save it as a pretrained GFlowNet, which
the ``crystal_gfn`` method then uses for every job with exactly that environment and reward.

    python -m ml.methods.crystal_gfn.train --config paper --device cuda --minutes 3 \
        --proxy ml/weights/crystal_gfn_proxy.pt --out ml/weights/crystal_gfn-paper.pt

Configurations: ``paper`` (appendix C: 12 elements, <= 5 per composition, <= 16 atoms per
element, cells <= 20 atoms, exp(-beta E_form)); ``default`` (the service's request without
objectives or constraints: every element the proxy knows, cells <= 20 atoms).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ml.methods.crystal_gfn.checkpoint import WEIGHTS_DIR, find_proxy, load_proxy_cached
from ml.methods.crystal_gfn.env import CrystalEnv
from ml.methods.crystal_gfn.gfn import GFNConfig, new_policy, save_gfn, train
from ml.methods.crystal_gfn.method import CrystalGFNParams
from ml.methods.crystal_gfn.request_spec import env_spec, paper_request
from ml.methods.crystal_gfn.reward import Reward, terms_from_request
from ml.request import DesignRequest
from ml.settings import get_ml_settings


def config_request(name: str, beta: float) -> DesignRequest:
    if name == "paper":
        return paper_request(beta=beta)
    if name == "default":
        return DesignRequest.model_validate(
            {"method": "crystal_gfn", "params": {"beta": beta}, "num_candidates": 64}
        )
    raise ValueError(f"unknown configuration {name!r}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="paper", choices=("paper", "default"))
    p.add_argument("--proxy", type=Path, default=None, help="default: the installed proxy")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--beta", type=float, default=CrystalGFNParams().beta)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--history", type=Path)
    return p.parse_args(argv)


def train_config(args: argparse.Namespace, log: Any = print) -> dict[str, Any]:
    device = args.device or get_ml_settings().torch_device()
    proxy, _, proxy_id = load_proxy_cached(args.proxy or find_proxy(), str(device))
    request = config_request(args.config, args.beta)
    params = CrystalGFNParams.model_validate(request.params)
    spec = env_spec(request, params.max_elements, params.max_per_element, proxy.config)
    env = CrystalEnv(spec, device)
    terms, _ = terms_from_request(request)
    reward = Reward(terms, proxy, params.beta)
    torch.manual_seed(args.seed)
    policy = new_policy(env, params.hidden, params.layers, params.mixtures)
    cfg = GFNConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=params.lr,
        lr_log_z=params.lr_log_z,
        explore=params.explore,
        replay_fraction=params.replay_fraction,
        max_seconds=args.minutes * 60.0,
    )
    log(
        f"crystal_gfn {args.config}: {len(spec.elements)} elements, "
        f"{len(spec.space_groups)} space groups, device={device}"
    )
    history = []
    start = time.time()
    for st in train(env, policy, reward, cfg, report_every=100):
        row = [st.step, st.loss, st.log_z, st.mean_log_r, st.dead_fraction, st.mean_energy]
        history.append([round(v, 3) for v in row])
        log(
            f"step {st.step} t={st.seconds:.0f}s loss={st.loss:.3f} logZ={st.log_z:.2f} "
            f"logR={st.mean_log_r:.2f} E={st.mean_energy:.3f} dead={st.dead_fraction:.3f}"
        )
    info = {
        "config": args.config,
        "steps": history[-1][0] if history else 0,
        "batch_size": args.batch_size,
        "train_s": round(time.time() - start, 1),
        "device": torch.cuda.get_device_name() if str(device).startswith("cuda") else str(device),
        "final": history[-1] if history else None,
        "command": "python -m ml.methods.crystal_gfn.train " + " ".join(sys.argv[1:]),
    }
    out = args.out or WEIGHTS_DIR / f"crystal_gfn-{args.config}.pt"
    save_gfn(out, policy, spec, reward, proxy_id, info)
    if args.history:
        args.history.write_text(json.dumps({**info, "history": history}, indent=1))
    log(json.dumps(info))
    return {"info": info, "policy": policy, "env": env, "reward": reward, "spec": spec}


def main(argv: list[str] | None = None) -> None:
    train_config(parse_args(argv))


if __name__ == "__main__":
    main()
