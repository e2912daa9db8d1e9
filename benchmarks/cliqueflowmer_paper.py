"""CliqueFlowmer paper protocol (docs/methods.md §1; paper Table 1 and Figure 4).

N seeds from MP-20 test are encoded, optimised for T steps of rank-based antithetic ES with
AdamW in the latent space, decoded (beam search, Euler + CFG) and judged by the ORACLES on
the decoded structures (not by the latent predictor):

- mean oracle value of the seeds, of all candidates and of the top-k % by predicted value;
- the decode-and-select baseline: the seeds' own latents decoded with no optimisation (all,
  and the top-k % by predicted value), so the search is judged against what decoding alone
  gives;
- the same groups after an approximate CHGNet relaxation of a random subset (the paper relaxes
  its candidates approximately with M3GNet before judging them): the same random seeds for
  seeds / candidates / baseline (paired), and random members of both top sets;
- validity of all candidates; uniqueness and novelty on a random subset and on the top set;
  S.U.N. on a smaller subset (CHGNet relaxation, bounded FIRE steps, reference hull);
- ES vs back-propagation on a few seeds: predicted objective along the run and oracle value
  of the decoded latents at a few steps (the paper: back-propagation diverges);
- wall time per stage.

    python benchmarks/cliqueflowmer_paper.py --checkpoint ml/weights/cliqueflowmer_eform.pt \\
        --n-seeds 10000 --steps 2000 --out results.json

Stages run in order and the JSON is rewritten after each, so a deadline (``--deadline``
seconds) that stops the run early still leaves every finished figure.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import pickle
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import add_cliqueflowmer_decoding_args, is_valid_quietly  # benchmarks/common.py

from ml.crystal import Crystal
from ml.methods.cliqueflowmer.checkpoint import load_checkpoint
from ml.methods.cliqueflowmer.data import REFERENCE_TABLE, load_split, regularised_gap
from ml.methods.cliqueflowmer.decoding import decode_latents
from ml.methods.cliqueflowmer.metrics import autocast, encode_packed
from ml.methods.cliqueflowmer.optimizer import (
    LatentOptimiser,
    OptimiserSettings,
)


def _init_worker() -> None:
    torch.set_num_threads(1)


def _build_graph(builder: Any, crystal: Crystal) -> bytes:
    # Plain pickle bytes: returning tensors through the pool would pass one file descriptor
    # per tensor storage (torch's shared-memory reduction) and exhaust the descriptors.
    return pickle.dumps(builder(crystal))


class Scorer:
    """Oracle values of crystals; graphs are built in a process pool, scored in batches."""

    def __init__(self, device: str, pool: ProcessPoolExecutor | None) -> None:
        self.device = device
        self.pool = pool

    def _graphs(self, builder: Any, crystals: list[Crystal]) -> list[Any]:
        if self.pool is None:
            return [builder(c) for c in crystals]
        blobs = self.pool.map(functools.partial(_build_graph, builder), crystals, chunksize=16)
        return [pickle.loads(b) for b in blobs]

    @staticmethod
    def _predict(oracle: Any, graphs: list[Any]) -> np.ndarray:
        """Batched scores; when a batch fails, score one by one so a bad structure is NaN."""
        try:
            return oracle.predict_graphs(graphs)
        except Exception:
            out = np.full(len(graphs), np.nan)
            for i, gr in enumerate(graphs):
                with contextlib.suppress(Exception):  # unscorable: stays NaN
                    out[i] = oracle.predict_graphs([gr])[0]
            return out

    def eform(self, crystals: list[Crystal]) -> np.ndarray:
        from ml.oracles.registry import get_oracle

        oracle = get_oracle("chgnet-eform", self.device)
        energies = self._predict(oracle, self._graphs(oracle.graph_builder(), crystals))  # type: ignore[attr-defined]
        return oracle.eform_from_energies(crystals, energies)  # type: ignore[attr-defined]

    def gap(self, crystals: list[Crystal]) -> np.ndarray:
        from ml.oracles.registry import get_oracle

        oracle = get_oracle("megnet-gap-pbe", self.device)
        return self._predict(oracle, self._graphs(oracle.graph_builder(), crystals))  # type: ignore[attr-defined]

    def score(
        self, prop: str, crystals: list[Crystal], valid: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """``objective`` (what the checkpoint optimises) plus the raw oracle values; only
        structurally valid crystals are scored (the rest are NaN: a broken cell has no
        meaningful energy, and very dense ones would make huge graphs)."""
        keep = np.arange(len(crystals)) if valid is None else np.flatnonzero(valid)
        sub = [crystals[i] for i in keep]
        raw = {"eform": self.eform(sub)}
        if prop == "band_gap":
            raw["gap"] = self.gap(sub)
        out = {}
        for k, v in raw.items():
            full = np.full(len(crystals), np.nan)
            full[keep] = v
            out[k] = full
        if prop == "formation_energy":
            return {"objective": out["eform"], **out}
        return {"objective": regularised_gap(out["gap"], out["eform"]), **out}


def nanmean(x: np.ndarray) -> float | None:
    x = np.asarray(x, dtype=float)
    return float(np.nanmean(x)) if np.isfinite(x).any() else None


def summary(values: dict[str, np.ndarray], idx: np.ndarray | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in values.items():
        v = v if idx is None else v[idx]
        out[k] = nanmean(v)
    first = next(iter(values.values()))
    n = len(first) if idx is None else len(idx)
    scored = np.isfinite(first if idx is None else first[idx])
    out["n"] = int(n)
    out["n_scored"] = int(scored.sum())
    return out


def validity(crystals: list[Crystal], pool: ProcessPoolExecutor | None) -> np.ndarray:
    if pool is None:
        return np.array([is_valid_quietly(c) for c in crystals], dtype=bool)
    return np.array(list(pool.map(is_valid_quietly, crystals, chunksize=32)), dtype=bool)


def missing_reference_splits() -> list[tuple[str, str]]:
    """Reference splits whose files are absent here (a trimmed data copy on the GPU box);
    novelty against the rest is an upper bound, re-scored against all with --rescore."""
    from ml.data.reference import FORMULA_ONLY_SPLIT
    from ml.data.sources import SOURCES
    from ml.settings import get_ml_settings

    root = get_ml_settings().data_dir
    return [
        key
        for key, src in SOURCES.items()
        if (src.has_structures or key == FORMULA_ONLY_SPLIT) and not (root / src.relpath).is_file()
    ]


def _novel_chunk(crystals: list[Crystal]) -> list[bool]:
    from ml.evaluation.novelty import novel_flags

    return novel_flags(crystals, exclude_splits=missing_reference_splits())


def novelty(crystals: list[Crystal], pool: ProcessPoolExecutor | None) -> list[bool]:
    if pool is None:
        return _novel_chunk(crystals)
    chunks = [crystals[i : i + 32] for i in range(0, len(crystals), 32)]
    return [f for part in pool.map(_novel_chunk, chunks) for f in part]


def hull_available() -> bool:
    """pymatgen's phase diagram imports plotly, which a lean GPU box may lack."""
    try:
        import pymatgen.analysis.phase_diagram  # noqa: F401
    except ImportError:
        return False
    return True


def sun_stage(
    f: dict[str, Any],
    cands: list[Crystal] | dict[int, Crystal],
    eform: np.ndarray,
    sun_subset: int,
    relax_steps: int,
    device: str,
    keep_going: Any = lambda: True,
) -> dict[str, Any]:
    """S.U.N. of the first ``sun_subset`` materials of the random subset: the valid, unique
    and novel ones are relaxed (CHGNet FIRE, ``relax_steps`` at most) and their energy above
    the reference hull decides stability."""
    from ml.evaluation.hull import ReferenceHull
    from ml.evaluation.metrics import stability_flags
    from ml.oracles.registry import get_oracle
    from ml.oracles.relax import relax_crystals

    idx = np.asarray(f["idx"])
    pick = np.arange(min(sun_subset, len(idx)))
    todo = [int(i) for i in pick if f["valid"][i] and f["unique"][i] and f["novel"][i]]
    hull = ReferenceHull.load()
    eform_oracle = get_oracle("chgnet-eform", device)
    stable = np.zeros(len(pick), dtype=bool)
    meta = np.zeros(len(pick), dtype=bool)
    before, after, e_hull = [], [], []
    for i in todo:
        if not keep_going():
            break
        r = relax_crystals([cands[int(idx[i])]], steps=relax_steps, device=device)[0]
        # CHGNet-Eform before and after relaxation (how far from a minimum decoding lands).
        before.append(float(eform[int(idx[i])]))
        after.append(
            float(eform_oracle.eform_from_energies([r.crystal], np.array([r.energy_per_atom]))[0])  # type: ignore[attr-defined]
        )
        comp = r.crystal.to_structure().composition
        eh = (
            hull.e_above_hull(comp, r.energy_per_atom) if math.isfinite(r.energy_per_atom) else None
        )
        stable[i], meta[i] = stability_flags(eh)
        e_hull.append(np.nan if eh is None else eh)
    eh_arr = np.array(e_hull, dtype=float)
    return {
        "flags_sun": {"stable": stable.tolist(), "metastable": meta.tolist()},
        "sun_subset": {
            "n": len(pick),
            "valid_unique_novel": len(todo),
            "relaxed": len(after),
            "relax_steps": relax_steps,
            "device": device,
            "eform_unrelaxed_mean": nanmean(np.array(before, dtype=float)),
            "eform_relaxed_mean": nanmean(np.array(after, dtype=float)),
            "e_hull_median": float(np.nanmedian(eh_arr)) if np.isfinite(eh_arr).any() else None,
            "sun_rate": float(stable.mean()),
            "msun_rate": float(meta.mean()),
        },
    }


def _relax_cpu(steps: int, crystal: Crystal) -> bytes:
    """One CHGNet relaxation in a worker process (CPU, one thread): pickled (crystal, E/atom)."""
    from ml.oracles.relax import relax_crystals

    r = relax_crystals([crystal], steps=steps, device="cpu")[0]
    return pickle.dumps((r.crystal, r.energy_per_atom))


def relaxed_stage(
    prop: str,
    groups: dict[str, list[Crystal]],
    relax_steps: int,
    scorer: Scorer,
    pool: ProcessPoolExecutor | None,
) -> dict[str, Any]:
    """Relax every crystal of every group (CHGNet FIRE, ``relax_steps`` at most, on the CPU
    workers) and score the relaxed crystals with the oracles. A relaxation that fails, or
    ends in an invalid cell, leaves the crystal unscored (NaN)."""
    names = list(groups)
    flat = [c for n in names for c in groups[n]]
    job = functools.partial(_relax_cpu, relax_steps)
    blobs = map(job, flat) if pool is None else pool.map(job, flat, chunksize=1)
    relaxed = [pickle.loads(b) for b in blobs]
    crystals = [c for c, _ in relaxed]
    ok = np.array([math.isfinite(e) for _, e in relaxed]) & validity(crystals, pool)
    values = scorer.score(prop, crystals, ok)
    out: dict[str, Any] = {"relax_steps": relax_steps}
    lo = 0
    for n in names:
        hi = lo + len(groups[n])
        idx = np.arange(lo, hi)
        out[n] = summary(values, idx) if hi > lo else {"n": 0}
        out[n]["relaxed_ok"] = int(ok[lo:hi].sum())
        lo = hi
    return out


def relax_picks(
    n: int, top: np.ndarray, base_top: np.ndarray, size: int, seed: int
) -> dict[str, np.ndarray]:
    """Random indices to relax: one subset of all seeds (shared by seeds, candidates and the
    baseline, so their differences are paired) and one of each top set."""
    rng = np.random.default_rng(seed)
    paired = np.sort(rng.permutation(n)[:size])
    return {
        "paired": paired,
        "top": np.sort(rng.permutation(top)[:size]),
        "baseline_top": np.sort(rng.permutation(base_top)[:size]),
    }


def relax_groups(
    picks: dict[str, np.ndarray],
    seeds: list[Crystal],
    cands: list[Crystal] | dict[int, Crystal],
    valid: np.ndarray,
    base: list[Crystal] | dict[int, Crystal],
    base_valid: np.ndarray,
) -> dict[str, list[Crystal]]:
    """The crystals of each relaxed group; only structurally valid decoded ones take part."""
    return {
        "seeds": [seeds[int(i)] for i in picks["paired"]],
        "candidates": [cands[int(i)] for i in picks["paired"] if valid[i]],
        "baseline": [base[int(i)] for i in picks["paired"] if base_valid[i]],
        "top": [cands[int(i)] for i in picks["top"] if valid[i]],
        "baseline_top": [base[int(i)] for i in picks["baseline_top"] if base_valid[i]],
    }


def packed_crystals(
    crystals: list[Crystal], prefix: str, predicted: np.ndarray, values: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Crystals padded into arrays (for --save-candidates), with predicted and oracle values."""
    a = max(c.num_atoms for c in crystals)
    frac = np.zeros((len(crystals), a, 3), dtype=np.float32)
    nums = np.zeros((len(crystals), a), dtype=np.int16)
    for i, c in enumerate(crystals):
        frac[i, : c.num_atoms], nums[i, : c.num_atoms] = c.frac_coords, c.numbers
    return {
        f"{prefix}lattice": np.stack([c.lattice for c in crystals]).astype(np.float32),
        f"{prefix}frac": frac,
        f"{prefix}numbers": nums,
        f"{prefix}predicted": predicted.astype(np.float32),
        **{f"{prefix}oracle_{k}": v.astype(np.float32) for k, v in values.items()},
    }


def load_candidates(path: Path, idx: list[int], prefix: str = "") -> list[Crystal]:
    """Crystals ``idx`` of a --save-candidates file (``prefix`` "base_": the baseline's)."""
    with np.load(path, allow_pickle=False) as z:
        lat, frac, nums = z[f"{prefix}lattice"], z[f"{prefix}frac"], z[f"{prefix}numbers"]
    out = []
    for i in idx:
        n = int((nums[i] > 0).sum())
        out.append(Crystal(lat[i].astype(float), frac[i, :n].astype(float), nums[i, :n]))
    return out


def relax_saved(
    results: dict[str, Any],
    candidates_path: Path,
    size: int,
    relax_steps: int,
    pool: ProcessPoolExecutor | None,
) -> dict[str, Any]:
    """The relaxed stage of a finished run, from its --save-candidates file (same picks as a
    run that had it: the top sets are re-derived from the saved predicted values)."""
    with np.load(candidates_path, allow_pickle=False) as z:
        pred, pred0, seed_ids = z["predicted"], z["base_predicted"], z["seed_ids"]
        valid = np.isfinite(z["oracle_objective"])
        base_valid = np.isfinite(z["base_oracle_objective"])
    n, k = len(pred), int(results["top"]["n"])
    picks = relax_picks(
        n, np.argsort(pred)[:k], np.argsort(pred0)[:k], size, int(results["args"]["seed"]) + 4
    )
    needed = sorted({int(i) for g in picks.values() for i in g})
    cands = dict(zip(needed, load_candidates(candidates_path, needed), strict=True))
    base = dict(zip(needed, load_candidates(candidates_path, needed, "base_"), strict=True))
    test = load_split("test")
    row = {str(m): i for i, m in enumerate(test.ids)}
    seeds = {int(i): test.crystal(row[str(seed_ids[i])]) for i in picks["paired"]}
    groups = relax_groups(picks, seeds, cands, valid, base, base_valid)  # type: ignore[arg-type]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    prop = str(results["property"])
    return {
        "relax_picks": {g: v.tolist() for g, v in picks.items()},
        "relaxed": relaxed_stage(prop, groups, relax_steps, Scorer(device, pool), pool),
    }


def rescore(
    results_path: Path,
    candidates_path: Path,
    workers: int,
    sun_subset: int = 0,
    relax_steps: int = 100,
    device: str = "cpu",
    relax_subset: int = 0,
) -> dict[str, Any]:
    """Novelty of a finished run again, against every reference split here; S.U.N. computed
    here too when the run had none (``sun_subset`` materials, relaxed on ``device``), and the
    relaxed groups when the run had none and ``relax_subset`` > 0."""
    results = json.loads(results_path.read_text())
    pool = ProcessPoolExecutor(workers, initializer=_init_worker) if workers > 1 else None
    for name in ("subset", "top"):
        f = results.get(f"flags_{name}")
        if f is None:
            continue
        idx = np.array(f["idx"])
        valid = np.array(f["valid"], dtype=bool)
        uniq = np.array(f["unique"], dtype=bool)
        crystals = load_candidates(candidates_path, [int(i) for i in idx[valid]])
        nov = np.zeros(len(idx), dtype=bool)
        nov[valid] = novelty(crystals, pool)
        f["novel"] = nov.tolist()
        results[f"un_{name}"].update(
            novelty_reference_missing=[list(k) for k in missing_reference_splits()],
            novel_rate=float(nov.mean()),
            valid_unique_novel_rate=float((uniq & nov & valid).mean()),
        )
        if name == "subset" and "flags_sun" not in results and sun_subset > 0:
            with np.load(candidates_path, allow_pickle=False) as z:
                eform = z["oracle_eform"].astype(float)
            k = min(sun_subset, len(idx))
            cands = dict(
                zip(
                    (int(i) for i in idx[:k]),
                    load_candidates(candidates_path, [int(i) for i in idx[:k]]),
                    strict=True,
                )
            )
            f_now = {"idx": idx, "valid": valid, "unique": uniq, "novel": nov}
            results.update(sun_stage(f_now, cands, eform, sun_subset, relax_steps, device))
        elif name == "subset" and "flags_sun" in results:
            k = len(results["flags_sun"]["stable"])
            st = np.array(results["flags_sun"]["stable"], dtype=bool)
            ms = np.array(results["flags_sun"]["metastable"], dtype=bool)
            un = uniq[:k] & nov[:k] & valid[:k]
            results["sun_subset"].update(
                sun_rate=float((st & un).mean()), msun_rate=float((ms & un).mean())
            )
    results["novelty_rescored"] = "against all reference splits (local CPU)"
    if relax_subset > 0 and "relaxed" not in results:
        results.update(relax_saved(results, candidates_path, relax_subset, relax_steps, pool))
    results_path.write_text(json.dumps(results, indent=1))
    if pool is not None:
        pool.shutdown()
    return results


def add_decode_args(p: argparse.ArgumentParser) -> None:
    """Decoding and run options shared with the ES sweep."""
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--euler-steps", type=int, default=100)
    add_cliqueflowmer_decoding_args(p)
    p.add_argument("--beam", type=int, default=10)
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)


def decode_seeded(
    model: Any, z: torch.Tensor, args: argparse.Namespace, device: str, seed: int
) -> list[Crystal]:
    """Decode latents with the run's beam, Euler steps and guidance; ``seed`` fixes the noise."""
    with autocast(device):
        return decode_latents(
            model,
            z,
            beam_width=args.beam,
            steps=args.euler_steps,
            guidance=args.guidance,
            generator=torch.Generator(device=device).manual_seed(seed),
            anneal=args.anneal,
            samples=args.geometry_samples,
            beams=args.decode_beams,
        )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path)
    p.add_argument(
        "--rescore",
        type=Path,
        default=None,
        help="re-score novelty/S.U.N. of this results JSON (with --save-candidates NPZ)",
    )
    p.add_argument("--n-seeds", type=int, default=10_000)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--sigma", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--weight-decay", type=float, default=0.5)
    p.add_argument("--top-percent", type=float, default=10.0)
    p.add_argument("--eval-subset", type=int, default=1000)
    p.add_argument("--sun-subset", type=int, default=40)
    p.add_argument("--relax-steps", type=int, default=150)
    # Per group (seeds / candidates / baseline paired on the same seeds, and both top sets).
    p.add_argument("--relax-subset", type=int, default=100)
    p.add_argument("--compare-seeds", type=int, default=100)
    p.add_argument("--compare-steps", type=int, default=1000)
    p.add_argument("--compare-points", type=int, nargs="+", default=[0, 250, 500, 1000])
    add_decode_args(p)
    p.add_argument("--deadline", type=float, default=float("inf"), help="seconds for all")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--save-candidates", type=Path, default=None)
    return p


@dataclass
class Run:
    """What every stage of one run shares: the options, the device, the worker pool, the
    oracle scorer and the results, rewritten to ``--out`` after each stage."""

    args: argparse.Namespace
    device: str
    pool: ProcessPoolExecutor | None
    scorer: Scorer
    t0: float
    results: dict[str, Any]

    @classmethod
    def start(cls, args: argparse.Namespace) -> Run:
        t0 = time.time()
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
        workers = args.workers
        pool = ProcessPoolExecutor(workers, initializer=_init_worker) if workers > 1 else None
        results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
        results["timings_s"] = {}
        return cls(args, device, pool, Scorer(device, pool), t0, results)

    def save(self) -> None:
        if self.args.out is not None:
            self.args.out.parent.mkdir(parents=True, exist_ok=True)
            self.args.out.write_text(json.dumps(self.results, indent=1))

    def left(self) -> float:
        """Seconds left before ``--deadline``."""
        return self.args.deadline - (time.time() - self.t0)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as stage ``name`` (printed, in ``timings_s``), then save."""
        start = time.time()
        yield
        if self.device == "cuda":
            torch.cuda.synchronize()
        timings = self.results["timings_s"]
        timings[name] = round(time.time() - start, 2)
        print(f"[{name}] {timings[name]} s", flush=True)
        self.save()


@dataclass
class Seeds:
    """The model searched and the seed materials drawn from MP-20 test."""

    model: Any
    prop: str
    packed: Any  # PackedMaterials
    crystals: list[Crystal]

    @property
    def n(self) -> int:
        return len(self.crystals)


@dataclass
class Latents:
    """Seed latents ``z0``, optimised latents ``z``, their predicted values, and the top-k %
    of each by predicted value (``top``: candidates, ``base_top``: the baseline)."""

    z0: torch.Tensor
    z: torch.Tensor
    pred0: np.ndarray
    pred: np.ndarray
    top: np.ndarray
    base_top: np.ndarray


@dataclass
class Decoded:
    """Decoded crystals, their structural validity and oracle values."""

    crystals: list[Crystal]
    valid: np.ndarray
    values: dict[str, np.ndarray]


def load_seeds(run: Run) -> Seeds:
    args, results = run.args, run.results
    with run.stage("load"):
        model, info = load_checkpoint(args.checkpoint, run.device)
        prop = info["property"]
        results.update(
            property=prop,
            target=info.get("target"),
            checkpoint=str(args.checkpoint),
            checkpoint_meta=info.get("meta", {}),
        )
        test = load_split("test")
        rng = np.random.default_rng(args.seed)
        n = min(args.n_seeds, len(test))
        packed = test.subset(np.sort(rng.permutation(len(test))[:n]))
        results["n_seeds"] = n
        if n < args.n_seeds:
            results["note_seeds"] = f"MP-20 test holds {len(test)} materials: N = {n}"
        crystals = [packed.crystal(i) for i in range(n)]
    return Seeds(model, prop, packed, crystals)


def seed_oracles(run: Run, seeds: Seeds) -> None:
    """The seeds' oracle values: from the reference table when present (same oracles)."""
    results = run.results
    with run.stage("seed_oracles"):
        seed_values: dict[str, np.ndarray]
        if REFERENCE_TABLE.is_file():
            import pandas as pd

            ref = pd.read_csv(REFERENCE_TABLE)
            ref = ref[(ref["dataset"] == "mp20") & (ref["split"] == "test")]
            ref = ref.drop_duplicates("material_id").set_index("material_id")
            ref = ref.reindex(seeds.packed.ids.astype(str))
            eform = ref["chgnet_eform"].to_numpy(dtype=float)
            gap = ref["megnet_gap_pbe"].to_numpy(dtype=float)
            seed_values = {"objective": eform, "eform": eform}
            if seeds.prop == "band_gap":
                seed_values = {"objective": regularised_gap(gap, eform), "gap": gap, "eform": eform}
            results["seed_values_from"] = "reference table (same oracles)"
        else:
            seed_values = run.scorer.score(seeds.prop, seeds.crystals)
            results["seed_values_from"] = "oracles on the seeds"
        results["seeds"] = summary(seed_values)


def es_settings(args: argparse.Namespace, steps: int, method: str) -> OptimiserSettings:
    return OptimiserSettings(
        steps=steps,
        lr=args.lr,
        weight_decay=args.weight_decay,
        method=method,
        pairs=args.pairs,
        sigma=args.sigma,
    )


def optimise(run: Run, seeds: Seeds) -> Latents:
    """Encode the seeds, then ``--steps`` of ES on the latent predictor."""
    args, results, device, model = run.args, run.results, run.device, seeds.model
    with run.stage("encode"):
        z0, _ = encode_packed(model, seeds.packed, device)
    with run.stage("optimise"):
        gen = torch.Generator(device=device).manual_seed(args.seed)
        opt = LatentOptimiser(model.predict, z0, es_settings(args, args.steps, "es"), gen)
        trace = [(0, *opt.evaluate())]
        for step in range(1, args.steps + 1):
            opt.step()
            if step % 250 == 0 or step == args.steps:
                trace.append((step, *opt.evaluate()))
        z = opt.latents
        results["es_trace_predicted"] = [
            {"step": a, "mean": round(b, 4), "best": round(c, 4)} for a, b, c in trace
        ]
        with torch.no_grad():
            pred = model.predict(z).cpu().numpy()
            pred0 = model.predict(z0).cpu().numpy()
        results["predicted"] = {"seeds": float(pred0.mean()), "optimised": float(pred.mean())}
        results["latent_norm"] = {
            "seeds": float(z0.norm(dim=-1).mean()),
            "optimised": float(z.norm(dim=-1).mean()),
        }
        k = max(1, round(seeds.n * args.top_percent / 100))
        top = np.argsort(pred)[:k]
        results["predicted"]["top"] = float(pred[top].mean())
    return Latents(z0, z, pred0, pred, top, np.argsort(pred0)[:k])


def decode_candidates(run: Run, seeds: Seeds, lat: Latents) -> Decoded:
    """The optimised latents decoded, checked and judged by the oracles (all and top-k %)."""
    args, results = run.args, run.results
    with run.stage("decode"):
        cands = decode_seeded(seeds.model, lat.z, args, run.device, args.seed + 1)
    with run.stage("validity"):
        valid = validity(cands, run.pool)
        results["validity_rate"] = float(valid.mean())
        results["top_validity_rate"] = float(valid[lat.top].mean())
    with run.stage("candidate_oracles"):
        values = run.scorer.score(seeds.prop, cands, valid)
        # Means over valid, scored candidates (n_scored says how many).
        results["candidates"] = summary(values)
        results["top"] = summary(values, lat.top)
        results["top"]["percent"] = args.top_percent
    return Decoded(cands, valid, values)


def decode_baseline(run: Run, seeds: Seeds, lat: Latents) -> Decoded:
    """Decode-and-select (no search): the seeds' own latents decoded and judged the same way."""
    results = run.results
    with run.stage("baseline_decode_and_oracles"):
        base = decode_seeded(seeds.model, lat.z0, run.args, run.device, run.args.seed + 1)
        base_valid = validity(base, run.pool)
        base_values = run.scorer.score(seeds.prop, base, base_valid)
        results["baseline"] = summary(base_values)
        results["baseline"]["validity_rate"] = float(base_valid.mean())
        results["baseline_top"] = summary(base_values, lat.base_top)
        results["baseline_top"]["validity_rate"] = float(base_valid[lat.base_top].mean())
    return Decoded(base, base_valid, base_values)


def save_candidates(path: Path, seeds: Seeds, lat: Latents, cands: Decoded, base: Decoded) -> None:
    arrays = {
        **packed_crystals(cands.crystals, "", lat.pred, cands.values),
        **packed_crystals(base.crystals, "base_", lat.pred0, base.values),
    }
    np.savez_compressed(path, seed_ids=seeds.packed.ids, **arrays)


def es_vs_backprop(run: Run, seeds: Seeds, lat: Latents) -> None:
    """ES and back-propagation from the same few seeds: the predicted objective along the run
    and the oracle value of the decoded latents at ``--compare-points`` steps."""
    args, results = run.args, run.results
    if run.left() <= 90:
        results["skipped_es_vs_backprop"] = "deadline"
        return
    with run.stage("es_vs_backprop"):
        m = min(args.compare_seeds, seeds.n)
        comp: dict[str, Any] = {}
        points = sorted(set(args.compare_points) | {0})
        for method in ("es", "backprop"):
            cfg = es_settings(args, args.compare_steps, method)
            gen = torch.Generator(device=run.device).manual_seed(7)
            o = LatentOptimiser(seeds.model.predict, lat.z0[:m], cfg, gen)
            curve, oracle_curve = [], []
            for step in range(0, args.compare_steps + 1):
                if step > 0:
                    o.step()
                if step % 50 == 0:
                    curve.append({"step": step, "predicted": round(o.evaluate()[0], 4)})
                if step in points:
                    dec = decode_seeded(seeds.model, o.latents, args, run.device, 11)
                    vals = run.scorer.score(seeds.prop, dec, validity(dec, run.pool))
                    oracle_curve.append(
                        {
                            "step": step,
                            "oracle": nanmean(vals["objective"]),
                            "predicted": round(o.evaluate()[0], 4),
                        }
                    )
            comp[method] = {"predicted_curve": curve, "oracle_curve": oracle_curve}
        results["es_vs_backprop"] = {"n_seeds": m, **comp}


def unique_novel(run: Run, n: int, lat: Latents, cands: Decoded) -> dict[str, dict[str, Any]]:
    """Uniqueness and novelty of a random subset of the candidates and of the top set; the
    flags of each set (index, valid, unique, novel) by set name."""
    from ml.evaluation.uniqueness import unique_flags

    args, results, valid = run.args, run.results, cands.valid
    sub = np.sort(np.random.default_rng(args.seed + 2).permutation(n)[: args.eval_subset])
    flags: dict[str, dict[str, Any]] = {}
    rng = np.random.default_rng(args.seed + 3)
    top_sub = np.sort(rng.permutation(lat.top)[: args.eval_subset])
    for name, idx in (("subset", sub), ("top", top_sub)):
        if run.left() < 60:
            results[f"skipped_un_{name}"] = "deadline"
            continue
        with run.stage(f"unique_novel_{name}"):
            # Only valid crystals take part (a broken cell is neither unique nor novel).
            ok = idx[valid[idx]]
            crystals = [cands.crystals[i] for i in ok]
            uniq = np.zeros(len(idx), dtype=bool)
            nov = np.zeros(len(idx), dtype=bool)
            uniq[valid[idx]] = unique_flags(crystals)
            nov[valid[idx]] = novelty(crystals, run.pool)
            flags[name] = {"idx": idx, "unique": uniq, "novel": nov, "valid": valid[idx]}
            results[f"flags_{name}"] = {k: v.tolist() for k, v in flags[name].items()}
            results[f"un_{name}"] = {
                "novelty_reference_missing": [list(k) for k in missing_reference_splits()],
                "n": len(idx),
                "unique_rate": float(uniq.mean()),
                "novel_rate": float(nov.mean()),
                "valid_unique_novel_rate": float((uniq & nov & valid[idx]).mean()),
            }
    return flags


def sun(run: Run, flags: dict[str, dict[str, Any]], cands: Decoded) -> None:
    """S.U.N. of the first ``--sun-subset`` materials of the random subset."""
    args, results = run.args, run.results
    if "subset" not in flags:
        return
    if not hull_available():
        results["skipped_sun"] = "pymatgen's phase diagram cannot be imported here: --rescore"
    elif run.left() > 60 and REFERENCE_TABLE.is_file():
        with run.stage("sun_subset"):
            results.update(
                sun_stage(
                    flags["subset"],
                    cands.crystals,
                    cands.values["eform"],
                    args.sun_subset,
                    args.relax_steps,
                    run.device,
                    lambda: run.left() > 20,
                )
            )
    else:
        results["skipped_sun"] = "deadline or no reference table"


def relaxed(run: Run, seeds: Seeds, lat: Latents, cands: Decoded, base: Decoded) -> None:
    """The paired and top groups relaxed approximately, then judged by the oracles."""
    args, results = run.args, run.results
    if not (args.relax_subset > 0 and run.left() > 60):
        results["skipped_relaxed"] = "deadline or --relax-subset 0"
        return
    with run.stage("relaxed_oracles"):
        picks = relax_picks(seeds.n, lat.top, lat.base_top, args.relax_subset, args.seed + 4)
        results["relax_picks"] = {g: v.tolist() for g, v in picks.items()}
        groups = relax_groups(
            picks, seeds.crystals, cands.crystals, cands.valid, base.crystals, base.valid
        )
        results["relaxed"] = relaxed_stage(
            seeds.prop, groups, args.relax_steps, run.scorer, run.pool
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = build_parser()
    args = p.parse_args(argv)
    if args.rescore is not None:
        return rescore(
            args.rescore,
            args.save_candidates,
            args.workers,
            args.sun_subset,
            args.relax_steps,
            args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
            args.relax_subset,
        )
    if args.checkpoint is None:
        p.error("--checkpoint is required")

    run = Run.start(args)
    seeds = load_seeds(run)
    seed_oracles(run, seeds)
    lat = optimise(run, seeds)
    cands = decode_candidates(run, seeds, lat)
    base = decode_baseline(run, seeds, lat)
    if args.save_candidates is not None:
        save_candidates(args.save_candidates, seeds, lat, cands, base)
    es_vs_backprop(run, seeds, lat)
    flags = unique_novel(run, seeds.n, lat, cands)
    sun(run, flags, cands)
    relaxed(run, seeds, lat, cands, base)

    results = run.results
    results["total_s"] = round(time.time() - run.t0, 1)
    run.save()
    print(json.dumps({k: v for k, v in results.items() if k not in ("args",)}, indent=1))
    if run.pool is not None:
        run.pool.shutdown(cancel_futures=True)
    return results


if __name__ == "__main__":
    main()
