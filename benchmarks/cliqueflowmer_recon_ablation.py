"""Why does CliqueFlowmer reconstruct only a third of MP-20 test crystals? (issue 15)

Inference only. Encodes the same materials (posterior mean unless said) and decodes them with
parts of the answer given, so each step of decoding is charged with its share of the loss:

- ``base``: beam-searched types, flow from the prior (the reconstruction benchmark, w = 2);
- ``types``: the true atom types (no beam search): what the geometry decoder alone reaches;
- ``types+lengths`` / ``types+lattice``: the lengths (and angles) follow their exact
  conditional path x_t = (1 - t) x0 + t x1 while the flow integrates the rest: what the
  length prior (and angles) cost;
- ``types+steps500``: 500 Euler steps instead of 100 (integration error);
- ``types+best4``: any of 4 flow samples matches (sampling noise of the geometry prior);
- ``types+w0`` / ``types+w4``: guidance with the true types;
- ``sampled_z``: z drawn from q(z | x) instead of its mean (how sharp the latent is);
- ``types@val``: the true types on trained-on materials (under- or over-fitting).

Match: StructureMatcher (ltol 0.2, stol 0.3, angle_tol 5), as everywhere. Results are written
after every variant (``--out``), so a run cut off by ``--time-budget`` or ``timeout`` keeps
what it measured.

    python benchmarks/cliqueflowmer_recon_ablation.py \\
        --checkpoint ml/weights/cliqueflowmer_eform.pt --n 500 --out ablation.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml.crystal import Crystal
from ml.methods.cliqueflowmer.checkpoint import load_checkpoint
from ml.methods.cliqueflowmer.data import load_split
from ml.methods.cliqueflowmer.decoding import beam_search, state_to_crystals, tokens_to_numbers
from ml.methods.cliqueflowmer.geometry import (
    MaterialBatch,
    PackedMaterials,
    angles_to_flow,
    lengths_to_flow,
)
from ml.methods.cliqueflowmer.metrics import autocast, encode_packed, match_flags
from ml.methods.cliqueflowmer.model import CliqueFlowmer, FlowState

VARIANTS = (
    "base",
    "types",
    "types+lengths",
    "types+lattice",
    "types+steps500",
    "types+best4",
    "types+w0",
    "types+w4",
    "sampled_z",
    "types@val",
)


@dataclass
class Variant:
    true_types: bool = False
    given: tuple[str, ...] = ()  # flow parts that follow their exact path: lengths, angles
    steps: int = 100
    guidance: float = 2.0
    samples: int = 1
    sampled_z: bool = False
    split: str = "test"


def variant(name: str) -> Variant:
    base, _, split = name.partition("@")
    parts = base.split("+")
    v = Variant(split=split or "test", true_types="types" in parts)
    for p in parts:
        if p == "lengths":
            v.given = ("lengths",)
        elif p == "lattice":
            v.given = ("lengths", "angles")
        elif p.startswith("steps"):
            v.steps = int(p[5:])
        elif p.startswith("best"):
            v.samples = int(p[4:])
        elif p.startswith("w"):
            v.guidance = float(p[1:])
        elif p == "sampled_z":
            v.sampled_z = True
        elif p not in ("base", "types"):
            raise SystemExit(f"unknown variant part {p!r}")
    return v


@torch.no_grad()
def integrate(
    model: CliqueFlowmer,
    z: torch.Tensor,
    numbers: torch.Tensor,
    truth: FlowState,
    given: tuple[str, ...],
    steps: int,
    w: float,
    gen: torch.Generator,
) -> FlowState:
    """Euler with classifier-free guidance (as ``decoding.sample_geometry``); the ``given``
    parts are set on their exact path (1 - t) x0 + t x1 at every step."""
    b, a = numbers.shape
    dev = z.device
    x0 = FlowState(
        lengths=torch.randn(b, 3, device=dev, generator=gen),
        angles=torch.rand(b, 3, device=dev, generator=gen) * 2 - 1,
        pos=torch.rand(b, a, 3, device=dev, generator=gen),
    )
    state = FlowState(x0.lengths.clone(), x0.angles.clone(), x0.pos.clone())
    ztok = torch.cat(
        [
            model.clique_tokens(z),
            model.clique_tokens(torch.randn(z.shape, device=dev, generator=gen)),
        ]
    )
    nums2 = torch.cat([numbers, numbers])
    dt = 1.0 / steps
    for i in range(steps):
        t = torch.full((b,), i * dt, device=dev)
        both = FlowState(
            *(torch.cat([getattr(state, f)] * 2) for f in ("lengths", "angles", "pos"))
        )
        v2 = model.velocity(ztok, nums2, both, torch.cat([t, t]))
        v = {
            f: (1 + w) * getattr(v2, f)[:b].float() - w * getattr(v2, f)[b:].float()
            for f in ("lengths", "angles", "pos")
        }
        nxt = {f: getattr(state, f) + dt * v[f] for f in ("lengths", "angles", "pos")}
        t1 = (i + 1) * dt
        for f in given:
            nxt[f] = (1 - t1) * getattr(x0, f) + t1 * getattr(truth, f)
        state = FlowState(**nxt)
    return state


def decode_variant(
    model: CliqueFlowmer, packed: PackedMaterials, v: Variant, device: str, seed: int, chunk: int
) -> tuple[list[list[Crystal]], float]:
    """``v.samples`` decodings of every material and the exact-type-sequence ratio."""
    gen = torch.Generator(device=device).manual_seed(seed)
    mu, log_std = encode_packed(model, packed, device)
    z = (
        mu + torch.exp(log_std) * torch.randn(mu.shape, device=device, generator=gen)
        if v.sampled_z
        else mu
    )
    out: list[list[Crystal]] = [[] for _ in range(v.samples)]
    exact = 0
    for lo in range(0, len(packed), chunk):
        idx = np.arange(lo, min(lo + chunk, len(packed)))
        batch = MaterialBatch.from_packed(packed, idx, device=device)
        with autocast(device):
            tokens, _ = beam_search(model, z[idx], 10)
        decoded = tokens_to_numbers(tokens)
        for row, i in enumerate(idx):
            got = decoded[row][decoded[row] > 0].cpu().numpy()
            n = int(packed.num_atoms[i])
            exact += int(len(got) == n and np.array_equal(got, packed.numbers[i, :n]))
        numbers = batch.numbers if v.true_types else decoded
        truth = FlowState(
            lengths=lengths_to_flow(batch.lengths, batch.num_atoms, model.len_mu, model.len_sigma),
            angles=angles_to_flow(batch.angles),
            pos=batch.frac,
        )
        for s in range(v.samples):
            with autocast(device):
                state = integrate(model, z[idx], numbers, truth, v.given, v.steps, v.guidance, gen)
            out[s].extend(state_to_crystals(model, numbers, state))
    return out, exact / max(len(packed), 1)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    p.add_argument("--chunk", type=int, default=512)
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-budget", type=float, default=None, help="stop starting variants after")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    t_start = time.time()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, info = load_checkpoint(args.checkpoint, device)
    data: dict[str, PackedMaterials] = {}
    results: dict[str, Any] = {
        "checkpoint": str(args.checkpoint),
        "property": info["property"],
        "n": args.n,
        "device": torch.cuda.get_device_name() if device == "cuda" else device,
        "variants": {},
    }
    for name in args.variants:
        if args.time_budget is not None and time.time() - t_start > args.time_budget:
            results["stopped_before"] = name
            break
        v = variant(name)
        if v.split not in data:
            packed = load_split(v.split)
            pick = np.sort(np.random.default_rng(args.seed).permutation(len(packed))[: args.n])
            data[v.split] = packed.subset(pick)
        sub = data[v.split]
        t = time.time()
        samples, exact = decode_variant(model, sub, v, device, args.seed, args.chunk)
        t_dec = time.time() - t
        originals = [sub.crystal(i) for i in range(len(sub))]
        flags = np.array([match_flags(originals, s, args.workers) for s in samples])
        row = {
            "match": round(float(flags.any(0).mean()), 4),
            "match_first_sample": round(float(flags[0].mean()), 4),
            "exact_types": round(exact, 4),
            "split": v.split,
            "decode_s": round(t_dec, 1),
            "total_s": round(time.time() - t, 1),
        }
        results["variants"][name] = row
        print(f"{name:16s} {json.dumps(row)}", flush=True)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
