"""Build one energy model's reference tables: elemental references and the hull table.

For ``--model`` (sevennet-l3i5, sevennet-0 or chgnet) this writes
- ``ml/oracles/data/elemental_refs_<model>.json`` (CHGNet: ``elemental_refs.json``): per
  element the lowest energy per atom among the RELAXED single-element structures of every data
  set (bcc Eu and fcc Th, absent there, built and relaxed); ``..._sources.json`` says which.
- ``ml/evaluation/data/hull_<model>.csv.gz``: per reference structure (mp20 train/val/test,
  mp2018 extra, perov5 val/test) the static energy per atom, the relaxed one where it was
  relaxed, and the static energy above the static hull.

Protocol, so that the hull matches the candidates' (relaxed, FIRE, fmax 0.1 eV/A, same model):
static energies of all structures; elemental references relaxed; then the structures are
relaxed in order of their static energy above hull, lowest first, up to ``--relax-below``
eV/atom or the ``--minutes`` budget. Relaxing only lowers an energy, and a DFT-relaxed structure
moves by meV/atom, so one far above the static hull cannot become a hull vertex; the table says
which rows were relaxed and the printout gives the E_hull up to which all were.

    python -m ml.tools.build_hull_tables --model sevennet-l3i5 --device cuda --minutes 5
    python -m ml.tools.build_hull_tables --model sevennet-0 --splits mp20/test --device cuda
    python -m ml.tools.build_hull_tables --model chgnet --device cpu --limit 20 --out-dir /tmp/h
    python -m ml.tools.build_hull_tables --model sevennet-l3i5 --corrections-only

Each table carries its model's per-formula energy correction (``correction``, MP2020 for
SevenNet), so loading a hull does not recompute it; ``--corrections-only`` adds or refreshes that
column in an existing table (CPU, minutes; after a pymatgen upgrade changes MP2020).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import re
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ml.tools.build_reference_tables import SPLITS, _elemental_tasks, _parse

_ELEMENT = re.compile(r"[A-Z][a-z]?")
REPO = Path(__file__).resolve().parents[2]
RELAX_FMAX = 0.1  # the pipeline's STABILITY_RELAX_FMAX
RELAX_STEPS = 300


def hull_table_path(model: str, out_dir: Path | None = None) -> Path:
    base = out_dir if out_dir else REPO / "ml" / "evaluation" / "data"
    return base / f"hull_{model}.csv.gz"


def _init_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")


def _parse_crystal(cif: str):  # -> Crystal | None
    from ml.crystal import Crystal

    s = _parse(cif)
    return None if s is None else Crystal.from_structure(s)


def _read(data_dir: Path, splits: set[str] | None, limit: int | None) -> pd.DataFrame:
    frames = []
    for dataset, split, _ in SPLITS:
        if splits and f"{dataset}/{split}" not in splits:
            continue
        path = data_dir / dataset / f"{split}.csv.gz"
        if not path.is_file():
            print(f"skipped {path}: missing")
            continue
        df = pd.read_csv(path)
        df = df.head(limit) if limit else df
        frames.append(
            pd.DataFrame(
                {
                    "dataset": dataset,
                    "split": split,
                    "material_id": df["material_id"].astype(str),
                    "pretty_formula": df["pretty_formula"].astype(str),
                    "n_atoms": df["n_atoms"].astype(int),
                    "cif": df["cif"],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _e_hull_chunk(args: tuple[list[tuple[str, float]], list[tuple[str, float]]]) -> list[float]:
    """Worker: static E_hull of (formula, energy) rows against a hull of ``entries``."""
    from ml.evaluation.hull import ReferenceHull

    entries, rows = args
    hull = ReferenceHull(entries)
    out = []
    for formula, energy in rows:
        try:
            e = hull.e_above_hull(formula, energy)
        except Exception:
            e = None
        out.append(math.nan if e is None else float(e))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="sevennet-l3i5")
    ap.add_argument("--device", default=None)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    ap.add_argument("--batch-size", type=int, default=128, help="structures per forward pass")
    ap.add_argument("--relax-batch", type=int, default=512, help="crystals relaxed together")
    ap.add_argument("--relax-below", type=float, default=0.1, help="static E_hull, eV/atom")
    ap.add_argument("--minutes", type=float, default=5.0, help="budget for relaxing rows")
    ap.add_argument("--splits", default=None, help="e.g. mp20/test (default: all)")
    ap.add_argument("--limit", type=int, default=None, help="first N rows of each split")
    ap.add_argument(
        "--static-only", action="store_true", help="static energies and elemental refs only"
    )
    ap.add_argument("--out-dir", type=Path, default=None, help="write here, not into the repo")
    ap.add_argument(
        "--resume", type=Path, default=None,
        help="a hull table written earlier: keep its energies, relax the rows not yet relaxed",
    )  # fmt: skip
    ap.add_argument("--relax-steps", type=int, default=RELAX_STEPS, help="FIRE steps at most")
    ap.add_argument(
        "--corrections-only", action="store_true",
        help="only add or refresh the correction column of the existing table",
    )  # fmt: skip
    ap.add_argument(
        "--stop-after", type=float, default=None,
        help="seconds since start after which no new chunk is relaxed (a call's time limit)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")

    from ml.oracles.relax import energy_potential
    from ml.settings import get_ml_settings

    settings = get_ml_settings()
    device = args.device or settings.torch_device()
    t0 = time.time()
    if args.corrections_only:
        from ml.evaluation.hull import with_corrections

        path = hull_table_path(args.model, args.out_dir)
        table = pd.read_csv(path, keep_default_na=False, na_values=[""])
        table = with_corrections(table.drop(columns="correction", errors="ignore"), args.model)
        table.to_csv(path, index=False, compression="gzip")
        n = table["formula"].nunique()
        print(f"{path}: correction for {n} formulas, {time.time() - t0:.0f} s")
        return
    if args.resume:
        _resume(args, device, t0)
        return
    everything = _read(Path(settings.data_dir), None, args.limit)
    # Elemental references always come from every data set, whatever --splits scores.
    tasks = _elemental_tasks(everything)
    if args.splits:
        keep = (everything["dataset"] + "/" + everything["split"]).isin(args.splits.split(","))
        table = everything[keep].reset_index(drop=True)
    else:
        table = everything
    ctx = mp.get_context("fork")
    pool = ctx.Pool(args.workers, initializer=_init_worker)
    crystals = pool.map(_parse_crystal, table["cif"].tolist(), chunksize=64)
    elementals = pool.map(_parse_crystal, [t[2] for t in tasks], chunksize=8)
    print(f"{len(table)} structures, {len(tasks)} elemental, parsed in {time.time() - t0:.0f} s")

    potential = energy_potential(args.model, device, pool)
    ok = [i for i, c in enumerate(crystals) if c is not None]
    static = np.full(len(table), np.nan)
    if hasattr(potential, "energies"):
        static[ok] = potential.energies([crystals[i] for i in ok], batch_size=args.batch_size)
    else:  # CHGNet
        from ml.oracles.registry import get_oracle

        graphs = potential.graphs([crystals[i] for i in ok])  # built in the pool
        static[ok] = get_oracle("chgnet-energy", device).predict_graphs(
            graphs, batch_size=args.batch_size
        )
    t_static = time.time() - t0
    print(f"static energies in {t_static:.0f} s ({len(ok) / t_static:.0f} structures/s overall)")

    from ml.oracles.batch_relax import fire_relax

    t1 = time.time()
    good = [k for k, c in enumerate(elementals) if c is not None]
    relaxed_el = fire_relax(
        [elementals[k] for k in good], potential.efs, fmax=RELAX_FMAX, steps=RELAX_STEPS,
        max_batch=args.relax_batch,
    )  # fmt: skip
    refs: dict[str, float] = {}
    sources: dict[str, dict] = {}
    for k, res in zip(good, relaxed_el, strict=True):
        label, el = tasks[k][0], tasks[k][1]
        if math.isfinite(res.energy_per_atom) and res.energy_per_atom < refs.get(el, math.inf):
            refs[el] = float(res.energy_per_atom)
            sources[el] = {"label": label, "converged": res.converged, "steps": res.steps}
    refs = dict(sorted(refs.items()))
    print(
        f"{len(refs)} elemental references from {len(good)} relaxations in {time.time() - t1:.0f} s"
    )

    formulas = [
        c.to_structure().composition.formula.replace(" ", "") if c else "" for c in crystals
    ]
    rows = [(f, float(e)) for f, e in zip(formulas, static, strict=True)]
    e_hull = np.full(len(rows), np.nan)
    relaxed = np.full(len(table), np.nan)
    relaxed_up_to = -math.inf
    if args.static_only:  # E_hull and relaxation done later (or elsewhere)
        pool.close()
        _write(
            args, table, formulas, static, relaxed, e_hull, refs, sources, rows, relaxed_up_to, t0
        )
        return

    e_hull = _static_e_hull(pool, rows, refs)
    print(f"static E_hull of all rows by {time.time() - t0:.0f} s")

    order = [
        i for i in np.argsort(e_hull) if np.isfinite(e_hull[i]) and e_hull[i] <= args.relax_below
    ]
    # Written before relaxing, and again after every chunk: a run stopped by its time limit
    # keeps what it relaxed.
    _write(args, table, formulas, static, relaxed, e_hull, refs, sources, rows, relaxed_up_to, t0)

    def save(up_to: float) -> None:
        _write(args, table, formulas, static, relaxed, e_hull, refs, sources, rows, up_to, t0)

    relaxed_up_to = _relax_rows(args, potential, crystals, order, e_hull, relaxed, t0, save)
    pool.close()

    _write(args, table, formulas, static, relaxed, e_hull, refs, sources, rows, relaxed_up_to, t0)


def _static_e_hull(pool, rows: list[tuple[str, float]], refs: dict[str, float]) -> np.ndarray:
    """Each row's E_hull against the hull of all rows' static energies and the references."""
    entries = [(f, e) for f, e in rows if f and np.isfinite(e)] + list(refs.items())
    # Rows of one chemical system in one chunk, so each worker builds each phase diagram once.
    by_system = sorted(
        range(len(rows)), key=lambda i: "".join(sorted(_ELEMENT.findall(rows[i][0])))
    )
    chunks = [by_system[s : s + 1000] for s in range(0, len(by_system), 1000)]
    jobs = [(entries, [rows[i] for i in c]) for c in chunks]
    e_hull = np.full(len(rows), np.nan)
    for chunk, values in zip(chunks, pool.map(_e_hull_chunk, jobs), strict=True):
        e_hull[chunk] = values
    return e_hull


def _relax_rows(args, potential, crystals, order, e_hull, relaxed, t0, save) -> float:
    """Relax ``order``'s rows (lowest static E_hull first) until done or out of time.

    Returns the static E_hull up to which every row was relaxed (-inf when none was).
    ``crystals`` maps a row index to its Crystal (or a callable building them for a chunk).
    """
    from ml.oracles.batch_relax import fire_relax

    deadline = time.time() + args.minutes * 60
    if args.stop_after is not None:
        deadline = min(deadline, t0 + args.stop_after)
    step = args.relax_batch * 2
    relaxed_up_to = -math.inf
    for start in range(0, len(order), step):
        if time.time() > deadline:
            break
        chunk = order[start : start + step]
        batch = crystals(chunk) if callable(crystals) else [crystals[i] for i in chunk]
        keep = [k for k, c in enumerate(batch) if c is not None]
        res = fire_relax(
            [batch[k] for k in keep], potential.efs, fmax=RELAX_FMAX, steps=args.relax_steps,
            max_batch=args.relax_batch,
        )  # fmt: skip
        for k, r in zip(keep, res, strict=True):
            relaxed[chunk[k]] = r.energy_per_atom
        relaxed_up_to = float(e_hull[chunk[-1]])
        save(relaxed_up_to)
        print(
            f"  relaxed {start + len(chunk)}/{len(order)} (static E_hull <= "
            f"{relaxed_up_to:.3f}) by {time.time() - t0:.0f} s",
            flush=True,
        )
    return relaxed_up_to


def _resume(args, device: str, t0: float) -> None:
    """Continue an earlier table: relax its unrelaxed rows near the hull, in E_hull order."""
    from ml.oracles.references import elemental_refs_path
    from ml.oracles.relax import energy_potential
    from ml.settings import get_ml_settings

    old = pd.read_csv(args.resume, keep_default_na=False, na_values=[""])
    refs_path = args.resume.parent / elemental_refs_path(args.model).name
    if not refs_path.is_file():
        refs_path = elemental_refs_path(args.model)
    refs = json.loads(refs_path.read_text())
    src = refs_path.with_name(refs_path.stem + "_sources.json")
    sources = json.loads(src.read_text()) if src.is_file() else {}
    data = _read(Path(get_ml_settings().data_dir), None, args.limit)
    table = old.merge(
        data[["dataset", "split", "material_id", "cif"]], how="left",
        on=["dataset", "split", "material_id"],
    )  # fmt: skip
    formulas = table["formula"].fillna("").astype(str).tolist()
    static = table["energy_static"].to_numpy(float)
    relaxed = table["energy_relaxed"].to_numpy(float)
    e_hull = table["e_hull_static"].to_numpy(float)
    rows = [(f, float(e)) for f, e in zip(formulas, static, strict=True)]
    pool = mp.get_context("fork").Pool(args.workers, initializer=_init_worker)
    if not np.isfinite(e_hull).any():  # a --static-only table
        e_hull = _static_e_hull(pool, rows, refs)
        print(f"static E_hull of all rows by {time.time() - t0:.0f} s")
    order = [
        i
        for i in np.argsort(e_hull)
        if np.isfinite(e_hull[i]) and e_hull[i] <= args.relax_below and not np.isfinite(relaxed[i])
    ]
    done = np.isfinite(relaxed) & np.isfinite(e_hull)
    print(f"resumed {args.resume}: {int(done.sum())} rows relaxed, {len(order)} to go")
    potential = energy_potential(args.model, device, pool)
    cifs = table["cif"].tolist()

    def parse(chunk: list[int]) -> list:
        return pool.map(_parse_crystal, [cifs[i] for i in chunk], chunksize=16)

    def save(up_to: float) -> None:
        _write(args, table, formulas, static, relaxed, e_hull, refs, sources, rows, up_to, t0)

    _relax_rows(args, potential, parse, order, e_hull, relaxed, t0, save)
    pool.close()


def _write(args, table, formulas, static, relaxed, e_hull, refs, sources, rows, relaxed_up_to, t0):
    """Write the elemental references and the hull table, and print a summary."""
    from ml.oracles.references import elemental_refs_path, formation_energy

    out_refs = elemental_refs_path(args.model)
    if args.out_dir:
        out_refs = args.out_dir / out_refs.name
    out_refs.parent.mkdir(parents=True, exist_ok=True)
    out_refs.write_text(json.dumps({k: round(v, 6) for k, v in refs.items()}, indent=1))
    out_refs.with_name(out_refs.stem + "_sources.json").write_text(json.dumps(sources, indent=1))
    out = pd.DataFrame(
        {
            "dataset": table["dataset"],
            "split": table["split"],
            "material_id": table["material_id"],
            "formula": formulas,
            "n_atoms": table["n_atoms"],
            "energy_static": np.round(static, 6),
            "energy_relaxed": np.round(relaxed, 6),
            "e_hull_static": np.round(e_hull, 6),
            "eform_static": np.round(
                [formation_energy(f, e, refs) if f else math.nan for f, e in rows], 6
            ),
        }
    )
    from ml.evaluation.hull import with_corrections

    out = with_corrections(out, args.model)
    path = hull_table_path(args.model, args.out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(path, index=False, compression="gzip")
    drop = out["energy_static"] - out["energy_relaxed"]
    print(
        json.dumps(
            {
                "model": args.model,
                "rows": len(out),
                "unscored": int(out["energy_static"].isna().sum()),
                "relaxed_rows": int(np.isfinite(relaxed).sum()),
                "all_relaxed_up_to_static_e_hull": relaxed_up_to,
                "relax_drop_median_meV": round(float(np.nanmedian(drop)) * 1000, 2),
                "relax_drop_p99_meV": round(float(np.nanpercentile(drop, 99)) * 1000, 2)
                if np.isfinite(relaxed).any()
                else None,
                "seconds": round(time.time() - t0),
            }
        )
    )
    print(f"wrote {path} and {out_refs}")


if __name__ == "__main__":
    main()
