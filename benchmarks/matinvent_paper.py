"""Issue 16 must-shows 1-2 (and 3 with ``--job``): MatInvent's Table 1 tasks with our oracles.

Four single-property tasks of the paper (band gap 3 +- 0.25 eV, formation energy below
-2.5 eV/atom, density 11 +- 0.5 g/cm3, HHI below 1250), each run by method ``matinvent``
(RL fine-tuning) and by the baseline (``fine_tune: false``: plain sampling of the frozen
prior through the same generator, filter and oracle-call budget). Per run: oracle calls,
unique hits, **burden** (oracle calls per unique hit; lower is better), the burden when the
100th hit arrived (the paper's protocol, n = 100) when it did, the **diversity ratio**
(unique crystals among the valid, charge-neutral ones generated; the paper divides unique
valid crystals by its property-evaluation budget, which our filter, scoring only unique
crystals, would make 1 by construction), distinct hit compositions, and the RL curves (mean
reward and unique hits per iteration).

Oracle calls are property evaluations of crystals that passed the filter (valid, charge
neutral, unique, novel against the reference set, E_hull <= 0.1 eV/atom by the stability
oracle ``--judge``, after relaxation with ``--relax``), as the paper counts them. The runs go
in parallel processes (one per task x mode) on one GPU; each stops at its budget or at the
deadline, and writes its rows after every iteration (``<out-dir>/run_<task>_<mode>.json``).

    python benchmarks/matinvent_paper.py --device cuda --budget 1000 --deadline-s 250 \
        --json /tmp/mi/bench.json --plot benchmarks/plots/matinvent_rl_curves.png
    python benchmarks/matinvent_paper.py --plot-only /tmp/mi/bench.json \
        --plot benchmarks/plots/matinvent_rl_curves.png     # re-draw (CPU, matplotlib)

``--job`` also runs one ``matinvent`` job through the job runner (the code the API's workers
run, on a scratch SQLite database): band gap 3 +- 0.25 eV with a budget of ``--job-budget``
oracle calls; its summary (with ``method_summary.burden``) and ranked hits go to the JSON.
The checkpoints are looked up as the service does: ``ml/weights/matinvent-prior.pt`` and
``ml/weights/conditional-wyckoff.pt`` (or the models directory).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

TASKS: dict[str, dict[str, Any]] = {
    "band_gap": {"property": "band_gap", "goal": "target", "value": 3.0, "tolerance": 0.25},
    "formation_energy": {"property": "formation_energy", "goal": "below", "value": -2.5},
    "density": {"property": "density", "goal": "target", "value": 11.0, "tolerance": 0.5},
    "hhi": {"property": "hhi", "goal": "below", "value": 1250.0},
}
# MatInvent paper, Tables 1 and 2 (mean of 5 runs; burden at n = 100 hits, budget 3,000).
PAPER = {
    "band_gap": {"burden": 14.4, "baseline_burden": 75.2, "div": 0.970, "baseline_div": 0.965},
    "formation_energy": {
        "burden": 4.3,
        "baseline_burden": 15.7,
        "div": 0.969,
        "baseline_div": 0.964,
    },
    "density": {"burden": 8.7, "baseline_burden": 39.1, "div": 0.957, "baseline_div": 0.963},
    "hhi": {"burden": 7.7, "baseline_burden": 38.4, "div": 0.958, "baseline_div": 0.961},
}
MODES = ("matinvent", "baseline")
PAPER_HITS = 100


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--budget", type=int, default=1000, help="oracle calls per run")
    p.add_argument("--batch", type=int, default=32, help="templates per iteration (paper: 32)")
    p.add_argument("--iterations", type=int, default=2000)
    p.add_argument("--deadline-s", type=float, default=250.0, help="wall time of the runs")
    p.add_argument("--relax", action="store_true", help="relax before the E_hull filter")
    p.add_argument(
        "--judge",
        default=None,
        help="energy oracle that relaxes and judges E_hull (default: the service's default "
        "for the device)",
    )
    p.add_argument("--gpus", type=int, default=1, help="spread the runs over this many GPUs")
    p.add_argument("--params", default="{}", help="extra matinvent params (JSON)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=2, help="torch threads per run process")
    p.add_argument("--parallel", type=int, default=0, help="processes (0: one per run)")
    p.add_argument("--out-dir", type=Path, default=Path("/tmp/matinvent_bench"))
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None, help="PNG of the RL curves")
    p.add_argument("--plot-only", type=Path, default=None, help="re-draw from this JSON")
    p.add_argument(
        "--prior",
        type=Path,
        default=None,
        help="prior checkpoint (default: where the service looks)",
    )
    p.add_argument("--wyckoff", type=Path, default=None, help="Wyckoff flow checkpoint")
    p.add_argument("--job", action="store_true", help="also one job through the runner")
    p.add_argument("--job-budget", type=int, default=512)
    p.add_argument("--job-deadline-s", type=float, default=150.0)
    return p.parse_args(argv)


def task_request(task: str, mode: str, args: argparse.Namespace, budget: int) -> dict[str, Any]:
    params = {
        "oracle_call_budget": budget,
        "batch_size": args.batch,
        "iterations": args.iterations,
        "fine_tune": mode == "matinvent",
        **json.loads(args.params),
    }
    return {
        "method": "matinvent",
        "objectives": [TASKS[task]],
        "constraints": {"max_atoms": 20},
        "relax": bool(args.relax),
        "num_candidates": 10_000,
        "seed": args.seed,
        "params": params,
        "oracles": {"energy_above_hull": args.judge} if args.judge else {},
    }


def _burden_at(curve_calls: list[int], curve_hits: list[int], n: int) -> float | None:
    """Oracle calls per hit at the first iteration with at least ``n`` hits."""
    for calls, hits in zip(curve_calls, curve_hits, strict=True):
        if hits >= n:
            return round(calls / hits, 3)
    return None


def use_checkpoints(args: argparse.Namespace) -> None:
    """Point the method at ``--prior`` / ``--wyckoff`` when given (else the service's own
    lookup: ``ml/weights/`` then the models directory)."""
    from ml.methods.matinvent import method as method_mod

    if args.prior is not None:
        method_mod._prior_path = lambda: args.prior  # type: ignore[assignment]
    if args.wyckoff is not None:
        method_mod._flow_path = lambda: args.wyckoff  # type: ignore[assignment]
    method_mod._load_policy.cache_clear()
    method_mod._load_flow.cache_clear()


def run_one(
    task: str, mode: str, args: argparse.Namespace, deadline: float, slot: int = 0
) -> dict[str, Any]:
    """One (task, mode) run through the method interface; rows written every iteration.
    ``slot``: the run's place in the list; with several GPUs, runs go round-robin on them."""
    warnings.filterwarnings("ignore")
    if args.gpus > 1:  # before torch is imported in this (fresh, spawned) process
        os.environ["CUDA_VISIBLE_DEVICES"] = str(slot % args.gpus)
    import torch

    torch.set_num_threads(args.threads)
    use_checkpoints(args)
    from ml import pipeline
    from ml.methods.base import Cancelled, MethodContext, Progress
    from ml.methods.matinvent.method import MatInventMethod
    from ml.request import DesignRequest
    from ml.settings import get_ml_settings

    device = args.device or get_ml_settings().torch_device()
    request = DesignRequest.model_validate(task_request(task, mode, args, args.budget))
    method = MatInventMethod()
    params = method.validate(request)
    ctx = MethodContext(device=device, should_cancel=lambda: time.time() > deadline)
    judge = pipeline.stability_oracle(request, device)
    prop = TASKS[task]["property"]
    row: dict[str, Any] = {
        "task": task,
        "mode": mode,
        "objective": TASKS[task],
        "oracle": pipeline.oracle_plan(request, judge).get(prop),
        "stability_oracle": judge,
        "relaxed": request.relax,
        "device": device,
        "iterations": [],
        "hit_formulas": [],
    }
    path = args.out_dir / f"run_{task}_{mode}.json"
    t0 = time.time()
    stopped = "budget or iterations"
    try:
        for event in method.run(request, params, ctx):
            if isinstance(event, Progress):
                if event.phase == "rl" and event.step > 0 and event.detail:
                    row["iterations"].append({**event.detail, "t": round(time.time() - t0, 1)})
                    row["wall_s"] = round(time.time() - t0, 1)
                    path.write_text(json.dumps(row))
                continue
            row["hit_formulas"] += [c.meta.get("template_formula", "") for c in event]
    except Cancelled:
        stopped = "deadline"
    row.update(_figures(ctx.summary), stopped=stopped, wall_s=round(time.time() - t0, 1))
    path.write_text(json.dumps(row))
    return row


def _figures(summary: dict[str, Any]) -> dict[str, Any]:
    curves = summary.get("curves", {})
    return {
        "summary": {k: v for k, v in summary.items() if k != "curves"},
        "oracle_calls": summary.get("oracle_calls"),
        "unique_hits": summary.get("unique_hits"),
        "burden": summary.get("burden"),
        "burden_at_100": _burden_at(
            curves.get("oracle_calls", []), curves.get("hits", []), PAPER_HITS
        ),
        "diversity_ratio": summary.get("diversity_ratio"),
        "curves": curves,
    }


def run_job(args: argparse.Namespace) -> dict[str, Any]:
    """One matinvent job through ``workers.runner.execute_job`` on a scratch SQLite file."""
    import tempfile

    from common import insert_queued_job  # benchmarks/common.py

    from app.db import Database
    from app.models import Job, Structure
    from app.settings import Settings
    from ml.request import DesignRequest
    from workers.runner import execute_job

    use_checkpoints(args)
    raw = task_request("band_gap", "matinvent", args, args.job_budget)
    raw["num_candidates"] = 1000
    req = DesignRequest.model_validate(raw)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            database_url=f"sqlite:///{tmp}/job.db",
            worker_warm_up=False,
            job_time_limit_s=int(args.job_deadline_s),
        )
        db = Database(settings.database_url)
        job_id = insert_queued_job(db, req, owner="bench")
        t = time.time()
        outcome = execute_job(job_id, db, settings, worker="bench")
        with db.session() as s:
            job = s.get(Job, job_id)
            rows = sorted(
                s.query(Structure).filter(Structure.job_id == job_id).all(),
                key=lambda r: r.rank or 1 << 30,
            )
            top = [
                {
                    "rank": r.rank,
                    "formula": r.formula,
                    "hit": r.hit,
                    "energy_above_hull": r.energy_above_hull,
                    "predicted": r.predicted,
                    "flags": r.flags,
                }
                for r in rows[:10]
            ]
            out = {
                "outcome": outcome,
                "status": job.status,
                "error": job.error,
                "wall_s": round(time.time() - t, 1),
                "summary": job.summary,
                "top": top,
            }
        db.dispose()
    return out


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| task | oracle | mode | oracle calls | unique hits | burden | burden at 100 hits | "
        "paper burden | diversity ratio (paper) | distinct hit formulas | iterations | stopped |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in sorted(rows, key=lambda r: (list(TASKS).index(r["task"]), r["mode"] != "matinvent")):
        paper = PAPER[r["task"]]
        base = r["mode"] == "baseline"
        pb = paper["baseline_burden" if base else "burden"]
        pd = paper["baseline_div" if base else "div"]
        hits = r.get("hit_formulas", [])
        lines.append(
            f"| {r['task']} | {r.get('oracle')} | {r['mode']} | {r.get('oracle_calls')} | "
            f"{r.get('unique_hits')} | {r.get('burden')} | {r.get('burden_at_100')} | {pb} | "
            f"{r.get('diversity_ratio')} ({pd}) | {len(set(hits))} | "
            f"{len(r.get('iterations', []))} | {r.get('stopped')} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> bool:
    """Mean reward per iteration (top) and unique hits against oracle calls (bottom)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (re-draw later with --plot-only)")
        return False
    tasks = [t for t in TASKS if any(r["task"] == t for r in rows)]
    fig, axes = plt.subplots(2, len(tasks), figsize=(4 * len(tasks), 6.5), squeeze=False)
    for j, task in enumerate(tasks):
        for r in rows:
            if r["task"] != task:
                continue
            its = r.get("iterations", [])
            style = "-" if r["mode"] == "matinvent" else "--"
            x = [i["iteration"] for i in its]
            axes[0][j].plot(x, [i["mean_reward"] for i in its], style, label=r["mode"])
            axes[1][j].plot(
                [i["oracle_calls"] for i in its],
                [i["unique_hits"] for i in its],
                style,
                label=r["mode"],
            )
        device = next((r["device"] for r in rows if "device" in r), "")  # failed runs lack it
        axes[0][j].set_title(f"{task} ({device})", fontsize=9)
        axes[0][j].set_xlabel("iteration")
        axes[0][j].set_ylabel("mean reward of the batch")
        axes[1][j].set_xlabel("oracle calls")
        axes[1][j].set_ylabel("unique hits")
        axes[0][j].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")
    return True


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.plot_only:
        rows = json.loads(args.plot_only.read_text())["runs"]
        print(table(rows))
        plot(rows, args.plot or Path("benchmarks/plots/matinvent_rl_curves.png"))
        return
    if args.device:
        os.environ["MATDESIGN_DEVICE"] = args.device
    args.out_dir.mkdir(parents=True, exist_ok=True)
    runs = [(t, m) for t in args.tasks.split(",") if t for m in args.modes.split(",")]
    deadline = time.time() + args.deadline_s
    rows: list[dict[str, Any]] = []
    result: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": rows}

    def save() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=1))

    ctx = multiprocessing.get_context("spawn")  # CUDA in every run process
    workers = args.parallel or max(len(runs), 1)
    # One run per process: each picks its GPU before importing torch.
    with ProcessPoolExecutor(workers, mp_context=ctx, max_tasks_per_child=1) as pool:
        futures = {
            pool.submit(run_one, t, m, args, deadline, k): (t, m) for k, (t, m) in enumerate(runs)
        }
        for fut in as_completed(futures):
            task, mode = futures[fut]
            try:
                row = fut.result()
            except Exception as exc:  # keep the others: one failure still leaves the rest
                partial = args.out_dir / f"run_{task}_{mode}.json"
                row = json.loads(partial.read_text()) if partial.exists() else {}
                row.update(task=task, mode=mode, error=f"{type(exc).__name__}: {exc}")
            rows.append(row)
            print(
                f"{task} {mode}: calls={row.get('oracle_calls')} hits={row.get('unique_hits')} "
                f"burden={row.get('burden')} div={row.get('diversity_ratio')} "
                f"iterations={len(row.get('iterations', []))} {row.get('error', '')}",
                flush=True,
            )
            save()
    if rows:
        print(table(rows))
    if args.job:
        try:
            result["job"] = run_job(args)
        except Exception as exc:
            result["job"] = {"error": f"{type(exc).__name__}: {exc}"}
        job = result["job"]
        ms = (job.get("summary") or {}).get("method_summary", {})
        print(
            f"job: {job.get('status')} {job.get('error') or ''} wall={job.get('wall_s')} "
            f"stored={(job.get('summary') or {}).get('n_candidates')} "
            f"calls={ms.get('oracle_calls')} hits={ms.get('unique_hits')} "
            f"burden={ms.get('burden')}",
            flush=True,
        )
    save()
    if args.plot and rows:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
