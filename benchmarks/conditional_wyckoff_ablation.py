"""Why the Wyckoff generator misses test crystals given their own template (issue 13).

On the first ``--n`` of the 1,000 MP-20 test crystals ``conditional_wyckoff_paper.py`` draws,
each decomposed into its own Wyckoff template (DiffCSP++'s setting, the ``oracle`` row), one
sample per crystal per variant:

* ``base``: the sampler as the service runs it;
* ``anneal<s>``: FlowMM's inference anti-annealing, orbit velocity times ``1 + s t``;
* ``lattice_exact``: the lattice state moves on its exact path from the prior draw to the
  test crystal's (the model still sees it at every step), coordinates sampled;
* ``coords_exact``: the orbit parameters on their exact path, the lattice sampled;
* ``best<k>``: any of k samples matches.

A variant that gives part of the answer and matches far more says that part is what fails.
StructureMatcher(0.2, 0.3, 5) as in the paper benchmark.

    PYTHONPATH=.:benchmarks python benchmarks/conditional_wyckoff_ablation.py \
        --wyckoff ml/weights/conditional-wyckoff.pt --n 200 --workers 2 --device cpu
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import parallel_map  # benchmarks/common.py
from conditional_wyckoff_paper import _decompose, _rms_pair, sane_cell, test_sample

from ml.crystal import Crystal
from ml.generative.periodic import min_image
from ml.generative.wyckoff import WyckoffCrystal
from ml.methods.conditional.checkpoint import load_wyckoff_release
from ml.methods.conditional.wyckoff_data import OrbitBatch, apply_ties, pad_templates
from ml.methods.conditional.wyckoff_flow import _velocity, prior_sample
from ml.methods.conditional.wyckoff_model import WyckoffFlowModel, wrap
from ml.methods.conditional.wyckoff_sampler import expand_samples
from ml.oracles.chgnet_device import chgnet_energies


@torch.no_grad()
def integrate(
    model: WyckoffFlowModel,
    batch: OrbitBatch,
    steps: int,
    anneal: float,
    exact_lattice: bool,
    exact_coords: bool,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The service's Euler loop (``wyckoff_flow.sample``, on the CPU), with either part
    optionally on its exact path to the data."""
    gen = torch.Generator().manual_seed(seed)
    u0, l0 = prior_sample(batch, gen)
    free = batch.free.float()
    d = min_image(batch.xyz - u0) * free
    u, lat = u0, l0
    h = 1.0 / steps
    for i in range(steps):
        t = torch.full((batch.size,), i * h)
        v_u, v_l = _velocity(model, batch, u, lat, t, 0.0)
        u = wrap(u + h * (1.0 + anneal * i * h) * v_u) * free
        lat = apply_ties(lat + h * v_l, batch)
        s = (i + 1) * h
        if exact_coords:
            u = wrap(u0 + s * d) * free
        if exact_lattice:
            lat = l0 + s * (batch.lattice - l0)
    return u, lat


def crystals(
    model: WyckoffFlowModel,
    ws: list[WyckoffCrystal],
    batch: OrbitBatch,
    u: torch.Tensor,
    lat: torch.Tensor,
) -> list[Crystal]:
    templates = [(w.space_group, [(o.letter, o.number) for o in w.orbits]) for w in ws]
    return [c for _, c in expand_samples(templates, u, lat, batch, model, primitive=False)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wyckoff", type=Path, required=True)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--anneal", type=float, nargs="*", default=[5.0])
    p.add_argument("--best", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--variants", default="base,anneal,lattice_exact,coords_exact,best")
    p.add_argument(
        "--energy",
        action="store_true",
        help="also CHGNet energy per atom of sample 0 above the test crystal's (as generated)",
    )
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_grad_enabled(False)
    model, _, info = load_wyckoff_release(args.wyckoff, args.device)
    refs, _, rows = test_sample(1000, 0, args.n)
    parsed = parallel_map(_decompose, refs, args.workers, 16)
    keep = [i for i, w in enumerate(parsed) if w is not None]
    ws: list[WyckoffCrystal] = [parsed[i] for i in keep]
    refs = [refs[i] for i in keep]
    batch = pad_templates(
        [w.space_group for w in ws],
        [[(o.letter, o.number) for o in w.orbits] for w in ws],
        xyz=[np.array([o.xyz for o in w.orbits]) for w in ws],
        lattice=np.array([w.lattice for w in ws]),
        props=np.array([[rows[i]["eform"], np.nan] for i in keep], dtype=np.float64)[
            :, : len(model.config.properties)
        ],
        norm=model.config.norm,
    )

    ref_energy = chgnet_energies(refs, args.device) if args.energy else None

    def rate(gens: list[list[Crystal]]) -> dict[str, Any]:
        pairs = [(r, g) for r, gs in zip(refs, gens, strict=True) for g in gs]
        rms = np.array(parallel_map(_rms_pair, pairs, args.workers, 8)).reshape(len(refs), -1)
        hit = ~np.isnan(rms)
        first = rms[:, 0]
        out: dict[str, Any] = {
            "match_1": round(float(hit[:, 0].mean()), 3),
            "match_any": round(float(hit.any(1).mean()), 3),
            "rms_1": round(float(np.nanmean(first)), 4) if hit[:, 0].any() else None,
        }
        if ref_energy is not None:
            sane = [sane_cell(g[0]) for g in gens]
            energy = np.full(len(gens), np.nan)
            energy[sane] = chgnet_energies(
                [g[0] for g, ok in zip(gens, sane, strict=True) if ok], args.device
            )
            above = energy - ref_energy
            out["energy_above_ref_median"] = round(float(np.nanmedian(above)), 3)
            out["within_0.1_of_ref"] = round(float(np.mean(above < 0.1)), 3)
        return out

    runs: dict[str, tuple[float, bool, bool, int]] = {}
    variants = args.variants.split(",")
    if "base" in variants:
        runs["base"] = (0.0, False, False, 1)
    if "anneal" in variants:
        runs.update({f"anneal{a:g}": (a, False, False, 1) for a in args.anneal})
    if "lattice_exact" in variants:
        runs["lattice_exact"] = (0.0, True, False, 1)
    if "coords_exact" in variants:
        runs["coords_exact"] = (0.0, False, True, 1)
    if "best" in variants:
        runs[f"best{args.best}"] = (0.0, False, False, args.best)
        for a in args.anneal:
            runs[f"anneal{a:g}+best{args.best}"] = (a, False, False, args.best)
    results: dict[str, Any] = {"n": len(refs), "steps": args.steps, "model": info.get("steps")}
    for name, (anneal, ex_l, ex_c, k) in runs.items():
        t = time.time()
        gens = [
            crystals(model, ws, batch, *integrate(model, batch, args.steps, anneal, ex_l, ex_c, s))
            for s in range(k)
        ]
        res = rate([list(g) for g in zip(*gens, strict=True)])
        res["seconds"] = round(time.time() - t, 1)
        results[name] = res
        print(name, json.dumps(res), flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
