"""Oracle throughput: structures/s one-by-one vs batched, and CHGNet relaxations/s.

Structures are the first N of the MP-20 test split. "one-by-one" calls ``predict([s])`` per
structure; "batched" calls ``predict(all, batch_size)`` (graph building in this process, then
many graphs per forward pass); "forward only" scores pre-built graphs, the ceiling a parallel
graph builder can reach. Relaxations start from the structure with its lattice scaled by 1.05.

    OMP_NUM_THREADS=2 python benchmarks/oracle_throughput.py --device cpu --n 64 --relax-n 4
    python benchmarks/oracle_throughput.py --device cuda --n 1024 --max-atoms 20 \
        --relax-n 256 --relax-n-single 32 --workers 12 --relax-models chgnet,sevennet-l3i5
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml.crystal import Crystal
from ml.oracles.chgnet_device import score_on_device
from ml.oracles.registry import get_oracle
from ml.oracles.relax import relax_crystals, relax_one_by_one
from ml.settings import get_ml_settings

ORACLES = [
    "gap-chgnet-ft",
    "sevennet-l3i5-energy",
    "sevennet-0-energy",
    "chgnet-energy",
    "chgnet-eform",
    "megnet-eform",
    "megnet-gap-pbe",
    "density",
    "tolerance-factor",
    "hhi",
]


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return f"{torch.cuda.get_device_name(0)} (CUDA)"
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return f"{cpu}, torch threads {torch.get_num_threads()}"


def load_structures(n: int, max_atoms: int | None = None) -> list[Crystal]:
    path = Path(get_ml_settings().data_dir) / "mp20" / "test.csv.gz"
    df = pd.read_csv(path)
    if max_atoms:
        df = df[df["n_atoms"] <= max_atoms]
    return [Crystal.from_cif(c) for c in df["cif"].head(n)]


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="oracle throughput")
    ap.add_argument("--device", default=None)
    ap.add_argument("--n", type=int, default=64, help="structures for batched timing")
    ap.add_argument("--n-single", type=int, default=None, help="structures for one-by-one")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--relax-n", type=int, default=4)
    ap.add_argument("--relax-models", default="chgnet", help="comma-separated energy models")
    ap.add_argument("--relax-n-single", type=int, default=None, help="relaxations timed one by one")
    ap.add_argument("--max-atoms", type=int, default=None, help="only cells this small")
    ap.add_argument(
        "--workers", type=int, default=0, help="processes building graphs for batched relaxation"
    )
    ap.add_argument("--oracles", default=",".join(ORACLES))
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")

    device = args.device or get_ml_settings().torch_device()
    crystals = load_structures(max(args.n, args.relax_n), args.max_atoms)
    relax_pool = crystals[: args.relax_n]
    crystals = crystals[: args.n]
    n_single = min(args.n_single or min(args.n, 64), len(crystals))
    atoms = sum(c.num_atoms for c in crystals) / len(crystals)
    print(f"device: {device_name(device)}")
    print(
        f"{len(crystals)} MP-20 test structures (mean {atoms:.1f} atoms), batch {args.batch_size}"
    )
    print(
        f"{'oracle':<18}{'one-by-one/s':>14}{'batched/s':>12}{'forward-only/s':>16}{'max|diff|':>12}"
        f"{'device-graphs/s':>17}{'max|diff| dev':>15}"
    )
    for name in args.oracles.split(","):
        oracle = get_oracle(name, device)
        oracle.predict(crystals[:4])  # warm-up: lazy imports, CUDA kernels
        t = time.perf_counter()
        single = np.array([oracle.predict_one(c) for c in crystals[:n_single]])
        t_single = time.perf_counter() - t
        t = time.perf_counter()
        batched = oracle.predict(crystals, batch_size=args.batch_size)
        t_batch = time.perf_counter() - t
        forward = ""
        if hasattr(oracle, "predict_graphs"):
            graphs = [oracle.graph_builder()(c) for c in crystals]  # type: ignore[attr-defined]
            t = time.perf_counter()
            oracle.predict_graphs(graphs, batch_size=args.batch_size)  # type: ignore[attr-defined]
            forward = f"{rate(len(crystals), time.perf_counter() - t):.0f}"
        diff = np.nanmax(np.abs(single - batched[:n_single])) if n_single else float("nan")
        # Graphs built in torch on the device (ml.oracles.chgnet_device: what the pipeline
        # uses on CUDA); one pass gives every CHGNet-backbone oracle's value at once.
        on_device, dev_diff = "", ""
        field = getattr(oracle, "device_field", None)
        if field is not None:
            score_on_device(crystals[:8], device)  # warm-up
            t = time.perf_counter()
            scores = score_on_device(crystals, device)
            on_device = f"{rate(len(crystals), time.perf_counter() - t):.1f}"
            dev_diff = f"{np.nanmax(np.abs(getattr(scores, field) - batched)):.2e}"
        print(
            f"{name:<18}{rate(n_single, t_single):>14.1f}{rate(len(crystals), t_batch):>12.1f}"
            f"{forward:>16}{diff:>12.2e}{on_device:>17}{dev_diff:>15}",
            flush=True,
        )

    if args.relax_n:
        settings = get_ml_settings()
        starts = []
        for c in relax_pool:
            s = c.copy()
            s.lattice = s.lattice * 1.05
            starts.append(s)
        pool = None
        if args.workers:
            import multiprocessing as mp

            pool = mp.get_context("fork").Pool(args.workers)
        single = starts[: args.relax_n_single or len(starts)]
        for model in args.relax_models.split(","):
            relax_crystals(starts[:1], device=device, model=model)  # warm-up
            # MATDESIGN_DEVICE_RELAX per batched path; the device path is SevenNet's only
            # (ml.oracles.device_relax).
            batched = {"batched": "off"}
            if model.startswith("sevennet"):
                batched["batched, device"] = "on"
            first: list[float] | None = None
            for path, mode in batched.items():
                settings.device_relax = mode
                relax_crystals(starts[:1], device=device, model=model)  # warm-up of the path
                t = time.perf_counter()
                res = relax_crystals(starts, device=device, model=model, pool=pool)
                energies = [r.energy_per_atom for r in res]
                gap = np.abs(np.subtract(energies, first)) if first is not None else None
                diff = (
                    ""
                    if gap is None
                    else f", |E - batched| max {np.nanmax(gap):.1e} median "
                    f"{np.nanmedian(gap):.1e} eV/atom"
                )
                first = first or energies
                report(model, path, res, time.perf_counter() - t, diff)
            settings.device_relax = "auto"
            t = time.perf_counter()
            res = relax_one_by_one(single, device=device, model=model)
            report(model, "one by one", res, time.perf_counter() - t, "")


def report(model: str, path: str, res: list, dt: float, extra: str) -> None:
    steps = np.mean([r.steps for r in res])
    conv = sum(r.converged for r in res)
    print(
        f"{model} relaxation, {path} (FIRE, fmax 0.1, <=300 steps, lattice x1.05 start): "
        f"{rate(len(res), dt):.2f} relaxations/s, {steps:.0f} steps mean, "
        f"{conv}/{len(res)} converged{extra}",
        flush=True,
    )


if __name__ == "__main__":
    main()
