"""Where a large SMOACS job's GPU time goes, step by step (issue 20).

1. SMOACS's method alone (``--n`` candidates, one pass), timed; then a short run under
   ``torch.profiler`` (top CUDA and CPU ops, kernels launched per step).
2. The judge's device relaxation (:func:`ml.oracles.device_relax.fire_relax_on_device`) of the
   designs, with the wall time of each FIRE step split into neighbour list, SevenNet pass and
   the rest (synchronised), against the number of crystals still relaxing; then variants
   (``--variants``: ``key=value`` settings of the device relaxation; ``tf32=true`` runs it with
   TF32 matrix products) on the same designs, each with its energies' largest difference from
   the first relaxation's.
3. ``--smoacs-variants``: SMOACS's method once more per variant, timed: ``tf32`` (TF32 matrix
   products), ``fill`` (deterministic mode's NaN fill of new tensors back on),
   ``nondeterministic`` (no deterministic kernels).

    PYTHONPATH=.:benchmarks python benchmarks/step_profile.py --device cuda --n 1024 \\
        --out /tmp/step_profile.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def smoacs_designs(n: int, device: str, steps: int | None, seed: int = 0) -> tuple[list, float]:
    """(crystals, seconds) of one SMOACS pass for the job profile's request."""
    from job_profile import job_request

    from ml.methods.base import Candidate, MethodContext
    from ml.methods.registry import get_method
    from ml.pipeline.generation import generation_request
    from ml.request import DesignRequest

    params: dict[str, Any] = {"batch_size": n}
    if steps is not None:
        params["steps"] = steps
    request = DesignRequest.model_validate(job_request("smoacs", n, True, seed, params))
    method = get_method("smoacs")
    p = method.validate(request)
    t = time.perf_counter()
    crystals = []
    for event in method.run(generation_request(request), p, MethodContext(device=device)):
        if isinstance(event, list):
            crystals += [c.crystal for c in event if isinstance(c, Candidate)]
    _sync(device)
    return crystals, time.perf_counter() - t


@contextlib.contextmanager
def matmul_tf32(on: bool) -> Iterator[None]:
    """float32 matrix products (and convolutions) in TF32 on the GPU's tensor cores."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def op_table(prof: Any, key: str, top: int) -> list[dict[str, Any]]:
    rows = []
    for e in sorted(prof.key_averages(), key=lambda e: -getattr(e, key))[:top]:
        rows.append(
            {
                "op": e.key[:60],
                "calls": e.count,
                "self_cuda_ms": round(getattr(e, "self_device_time_total", 0) / 1e3, 1),
                "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 1),
            }
        )
    return rows


def timed_relax(crystals: list, device: str, **variant: Any) -> dict[str, Any]:
    """Relax with per-step timings (neighbour list, SevenNet, rest) by patching the module."""
    import ml.methods.smoacs.neighbors as nbm
    from ml.oracles import device_relax as dr

    log: list[dict[str, float]] = []
    cur: dict[str, float] = {}
    pending: dict[str, float] = {}
    orig_nl, orig_fwd, orig_call = (
        nbm.build_neighbor_list,
        dr.SevennetDevicePotential._forward,
        (dr.SevennetDevicePotential.__call__),
    )

    def nl(*a: Any, **k: Any) -> Any:
        _sync(device)
        t = time.perf_counter()
        out = orig_nl(*a, **k)
        _sync(device)
        # Searched before this step's call: counted with the step it serves.
        pending["nl"] = pending.get("nl", 0.0) + time.perf_counter() - t
        pending["searches"] = pending.get("searches", 0) + 1
        pending["pairs"] = pending.get("pairs", 0) + out.num_edges
        return out

    def fwd(self: Any, *a: Any) -> Any:
        _sync(device)
        t = time.perf_counter()
        out = orig_fwd(self, *a)
        _sync(device)
        cur["net"] = cur.get("net", 0.0) + time.perf_counter() - t
        cur["passes"] = cur.get("passes", 0) + 1
        return out

    def call(self: Any, lattice: Any, cart: Any, numbers: Any, counts: Any, *rest: Any) -> Any:
        _sync(device)
        # A step runs from one call to the next (its neighbour search comes before the call).
        if "t0" in cur:
            now = time.perf_counter()
            cur["step"] = now - cur.pop("t0")
            log.append({k: v for k, v in cur.items() if k != "search"})
            cur.clear()
            cur.update(pending)
            pending.clear()
        cur["t0"] = time.perf_counter()
        cur["active"] = len(counts)
        return orig_call(self, lattice, cart, numbers, counts, *rest)

    nbm.build_neighbor_list = nl
    dr.SevennetDevicePotential._forward = fwd
    dr.SevennetDevicePotential.__call__ = call
    tf32 = bool(variant.pop("tf32", False))
    try:
        pot = dr.SevennetDevicePotential("sevennet-l3i5", device, **variant)
        _sync(device)
        t = time.perf_counter()
        with matmul_tf32(tf32):
            res = dr.fire_relax_on_device(crystals, pot, fmax=0.1, steps=300)
        _sync(device)
        wall = time.perf_counter() - t
    finally:
        nbm.build_neighbor_list, dr.SevennetDevicePotential._forward = orig_nl, orig_fwd
        dr.SevennetDevicePotential.__call__ = orig_call
    steps = np.array([r.steps for r in res])
    energy = np.array([r.energy_per_atom for r in res])
    buckets = {}
    for lo, hi in ((0, 25), (25, 50), (50, 100), (100, 200), (200, 301)):
        part = log[lo:hi]
        if part:
            buckets[f"{lo}-{hi}"] = {
                k: round(float(np.sum([p.get(k, 0) for p in part])), 2)
                for k in ("step", "nl", "net", "searches")
            } | {
                "active_mean": round(float(np.mean([p["active"] for p in part])), 1),
                "pairs_mean": int(np.mean([p.get("pairs", 0) for p in part])),
                "passes_mean": round(float(np.mean([p.get("passes", 0) for p in part])), 2),
            }
    return {
        "variant": variant | ({"tf32": True} if tf32 else {}),
        "energies": energy,  # dropped from the report (compared with the first run's)
        "steps": steps,
        "wall_s": round(wall, 2),
        "n_steps": len(log) + 1,
        "relax_steps_quantiles": [int(q) for q in np.percentile(steps, [10, 50, 90, 99, 100])],
        "converged": int(sum(r.converged for r in res)),
        "energy_sum": float(np.nansum(energy)),
        "buckets": buckets,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--profile-steps", type=int, default=8)
    parser.add_argument("--variants", nargs="*", default=[], help="e.g. max_edges=1600000")
    parser.add_argument(
        "--smoacs-variants", nargs="*", default=[], choices=["tf32", "fill", "nondeterministic"]
    )
    parser.add_argument("--no-relax", action="store_true", help="SMOACS timings only")
    parser.add_argument("--out", default="step_profile.json")
    args = parser.parse_args()
    from ml import pipeline

    pipeline.warm_up(args.device)
    report: dict[str, Any] = {"n": args.n, "device": args.device}

    def save() -> None:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=1)

    crystals, secs = smoacs_designs(args.n, args.device, None)
    report["smoacs_s"] = round(secs, 2)
    print(f"smoacs {args.n}: {secs:.1f} s, {len(crystals)} designs", flush=True)
    save()
    if args.profile_steps > 0:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + (
            [ProfilerActivity.CUDA] if args.device.startswith("cuda") else []
        )
        with profile(activities=acts) as prof:
            _, secs = smoacs_designs(args.n, args.device, args.profile_steps)
        report["smoacs_profiled"] = {
            "steps": args.profile_steps,
            "wall_s": round(secs, 2),
            "by_cuda": op_table(prof, "self_device_time_total", 25),
            "by_cpu": op_table(prof, "self_cpu_time_total", 25),
        }
        print(json.dumps(report["smoacs_profiled"]["by_cuda"][:15], indent=0), flush=True)
        save()
    for variant in args.smoacs_variants:
        import ml.methods.smoacs.method as sm

        saved = sm.FILL_UNINITIALIZED_MEMORY, sm.DETERMINISTIC
        sm.FILL_UNINITIALIZED_MEMORY = variant == "fill"
        sm.DETERMINISTIC = variant != "nondeterministic"
        try:
            with matmul_tf32(variant == "tf32"):
                _, secs = smoacs_designs(args.n, args.device, None)
        finally:
            sm.FILL_UNINITIALIZED_MEMORY, sm.DETERMINISTIC = saved
        report[f"smoacs_{variant}_s"] = round(secs, 2)
        print(f"smoacs {args.n}, {variant}: {secs:.1f} s", flush=True)
        save()
    if args.no_relax:
        return
    first = timed_relax(crystals, args.device)
    report["relax"] = []

    def add(row: dict[str, Any]) -> None:
        de = np.abs(row.pop("energies") - first["energies"])
        row["energy_diff_max"] = float(np.nanmax(de))
        row["energy_diff_p99"] = float(np.nanpercentile(de, 99))
        row["same_steps"] = int((row.pop("steps") == first["steps"]).sum())
        report["relax"].append(row)
        print(json.dumps(row, indent=1), flush=True)
        save()

    add(dict(first))
    for v in args.variants:
        key, value = v.split("=")
        add(timed_relax(crystals, args.device, **{key: json.loads(value)}))


if __name__ == "__main__":
    main()
