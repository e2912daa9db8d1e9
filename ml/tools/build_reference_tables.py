"""Build the elemental references and the reference energy table (run once, on a GPU).

Writes
- ``ml/oracles/data/elemental_refs.json``: {element: eV/atom}, the lowest CHGNet 0.3.0 energy
  per atom among the RELAXED single-element structures of every data set under
  MATDESIGN_DATA_DIR; bcc Eu and fcc Th (absent there) are built with pymatgen and relaxed.
  ``elemental_refs_sources.json`` beside it says which structure gave each value.
- ``ml/evaluation/data/reference_energies.csv.gz``: one row per structure of mp20
  train/val/test, mp2018 extra and perov5 val/test with static CHGNet energy per atom,
  CHGNet-Eform, MEGNet Eform, MEGNet PBE gap and the DFT labels.

The table's CHGNet energies are static (single point at the stored geometry): the data-set
structures are already DFT-relaxed, CHGNet was trained on those same MP relaxations, and a
CHGNet relaxation of them moves energies by a few meV/atom at ~100x the cost. Elemental
references are relaxed because they set the zero of every formation energy.

CPU graph building runs in a process pool (CIF parsing + CHGNet and MEGNet graphs), overlapped
with batched forward passes on the device; elemental relaxations run on CPU in a second pool
at the same time.

Provenance of the committed files (2026-11-23, H100): a full run (55,661 rows, 268 s) made
the CHGNet columns; MEGNet columns then were under cuDNN TF32 (up to 0.1 eV off), so a second
run with full-float32 MEGNet was kept for rows 0-47,213 (it hit its time limit while writing)
and rows 47,214-55,660 were rescored on CPU with ``--rescore-megnet-from 47214``. CHGNet
columns of the two runs agree to 2e-6 eV/atom.

    python -m ml.tools.build_reference_tables --device cuda --workers 11 --relax-workers 4
    python -m ml.tools.build_reference_tables --device cpu --limit 20 --out-dir /tmp/refs
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import pickle
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[2]
REFS_JSON = REPO / "ml" / "oracles" / "data" / "elemental_refs.json"
TABLE = REPO / "ml" / "evaluation" / "data" / "reference_energies.csv.gz"

# (dataset, split, has MP DFT labels)
SPLITS: list[tuple[str, str, bool]] = [
    ("mp20", "train", True),
    ("mp20", "val", True),
    ("mp20", "test", True),
    ("mp2018", "extra", True),
    ("perov5", "val", False),
    ("perov5", "test", False),
]
# Elements with no single-element structure in the data: (symbol, space group, a in A).
EXTRA_ELEMENTS: list[tuple[str, str, float]] = [("Eu", "Im-3m", 4.58), ("Th", "Fm-3m", 5.08)]
# The pipeline's own relaxation protocol, so references and candidates are relaxed alike.
RELAX_FMAX = 0.1
RELAX_STEPS = 300
# Elemental cells larger than this are relaxed on the device (in a thread of the parent
# process), smaller ones on CPU workers: a 108-atom boron cell takes minutes on one core.
DEVICE_RELAX_MIN_ATOMS = 17


@dataclass
class Builders:
    chgnet: object
    megnet_eform: object
    megnet_gap: object


_BUILDERS: Builders | None = None


def _init_worker(builders: Builders) -> None:
    global _BUILDERS
    _BUILDERS = builders
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")


def _parse(cif: str):  # -> Structure | None
    from pymatgen.io.cif import CifParser

    try:
        return CifParser.from_str(cif).parse_structures(primitive=False)[0]
    except Exception:
        return None


def _build_chunk(chunk: list[tuple[int, str]]) -> bytes:
    """Worker: parse CIFs and build the three graphs. Pickled to bytes so that the many small
    tensors travel in one message instead of one shared-memory handle each."""
    assert _BUILDERS is not None
    out = []
    for row, cif in chunk:
        s = _parse(cif)
        if s is None:
            out.append((row, None, None, None, "", 0))
            continue
        formula = s.composition.formula.replace(" ", "")
        out.append(
            (
                row,
                _BUILDERS.chgnet(s),  # type: ignore[operator]
                _BUILDERS.megnet_eform(s),  # type: ignore[operator]
                _BUILDERS.megnet_gap(s),  # type: ignore[operator]
                formula,
                len(s),
            )
        )
    return pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)


def _relax_task(task: tuple[str, str, str, int], device: str = "cpu") -> dict:
    """CHGNet-relax one elemental structure (a CPU worker, or the device thread)."""
    label, symbol, cif, _ = task
    from ml.crystal import Crystal
    from ml.oracles.relax import relax_crystals

    s = _parse(cif)
    if s is None:
        return {"label": label, "element": symbol, "energy": math.nan}
    t0 = time.time()
    res = relax_crystals(
        [Crystal.from_structure(s)], fmax=RELAX_FMAX, steps=RELAX_STEPS, device=device
    )[0]
    return {
        "label": label,
        "element": symbol,
        "energy": res.energy_per_atom,
        "converged": res.converged,
        "steps": res.steps,
        "n_atoms": len(s),
        "seconds": round(time.time() - t0, 2),
    }


def _read_splits(data_dir: Path, limit: int | None, datasets: set[str]) -> pd.DataFrame:
    frames = []
    for dataset, split, mp_labels in SPLITS:
        if dataset not in datasets:
            continue
        path = data_dir / dataset / f"{split}.csv.gz"
        df = pd.read_csv(path)
        if limit:
            df = df.head(limit)
        frame = pd.DataFrame(
            {
                "dataset": dataset,
                "split": split,
                "material_id": df["material_id"].astype(str),
                "cif": df["cif"],
                "dft_eform": df["formation_energy_per_atom"] if mp_labels else np.nan,
                "dft_gap": df["band_gap"] if mp_labels else np.nan,
                "pretty_formula": df["pretty_formula"].astype(str),
                "n_atoms": df["n_atoms"].astype(int),
            }
        )
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _elemental_tasks(table: pd.DataFrame) -> list[tuple[str, str, str, int]]:
    """(label, element, CIF, atoms) of every single-element structure, plus bcc Eu, fcc Th."""
    from pymatgen.core import Composition, Lattice, Structure

    tasks = []
    for row in table.itertuples():
        comp = Composition(row.pretty_formula)
        if len(comp.elements) == 1:
            label = f"{row.dataset}/{row.split}/{row.material_id}"
            tasks.append((label, comp.elements[0].symbol, row.cif, int(row.n_atoms)))
    for symbol, sg, a in EXTRA_ELEMENTS:
        s = Structure.from_spacegroup(sg, Lattice.cubic(a), [symbol], [[0, 0, 0]])
        tasks.append((f"built/{sg}/{symbol}", symbol, s.to(fmt="cif"), len(s)))
    # Largest first so the relaxation workers finish evenly.
    tasks.sort(key=lambda t: -t[3])
    return tasks


def _chunks(table: pd.DataFrame, size: int) -> Iterator[list[tuple[int, str]]]:
    cifs = table["cif"].tolist()
    for start in range(0, len(cifs), size):
        yield [(i, cifs[i]) for i in range(start, min(start + size, len(cifs)))]


def rescore_megnet(table_path: Path, start: int, device: str, batch_size: int) -> None:
    """Recompute the MEGNet columns of rows ``start..`` of an existing table, in place.

    Rows are matched to the data sets by (dataset, split, material_id) order, as written by
    ``main``. Used to repair a table whose MEGNet columns were made under cuDNN TF32.
    """
    from ml.oracles.registry import get_oracle
    from ml.settings import get_ml_settings

    table = pd.read_csv(table_path, keep_default_na=False, na_values=[""])
    source = _read_splits(Path(get_ml_settings().data_dir), None, set(table["dataset"]))
    if not (source["material_id"].to_numpy() == table["material_id"].astype(str).to_numpy()).all():
        raise ValueError(f"{table_path} rows do not follow the data sets' order")
    rows = np.arange(start, len(table))
    structures = [_parse(source["cif"].iloc[i]) for i in rows]
    for name, col in (("megnet-eform", "megnet_eform"), ("megnet-gap-pbe", "megnet_gap_pbe")):
        oracle = get_oracle(name, device)
        ok = [i for i, s in enumerate(structures) if s is not None]
        values = np.full(len(rows), np.nan)
        values[ok] = oracle.predict([structures[i] for i in ok], batch_size=batch_size)
        table.loc[rows, col] = np.round(values, 6)
    table.to_csv(table_path, index=False, compression="gzip")
    print(f"rescored MEGNet columns of rows {start}..{len(table) - 1} of {table_path}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default=None, help="torch device (default: settings)")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 5))
    ap.add_argument("--relax-workers", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=256, help="structures per forward pass")
    ap.add_argument("--chunk", type=int, default=32, help="structures per worker task")
    ap.add_argument("--limit", type=int, default=None, help="first N rows of each split")
    ap.add_argument("--datasets", default="mp20,mp2018,perov5")
    ap.add_argument("--out-dir", type=Path, default=None, help="write here, not into the repo")
    ap.add_argument(
        "--rescore-megnet-from",
        type=int,
        default=None,
        help="only recompute the MEGNet columns of the existing table from this row on",
    )
    args = ap.parse_args(argv)

    warnings.filterwarnings("ignore")
    if args.rescore_megnet_from is not None:
        from ml.settings import get_ml_settings

        rescore_megnet(
            (args.out_dir / TABLE.name) if args.out_dir else TABLE,
            args.rescore_megnet_from,
            args.device or get_ml_settings().torch_device(),
            args.batch_size,
        )
        return
    from ml.oracles.chgnet import ChgnetGraphBuilder
    from ml.oracles.megnet import MegnetGraphBuilder, load_megnet
    from ml.settings import get_ml_settings

    settings = get_ml_settings()
    device = args.device or settings.torch_device()
    refs_path = args.out_dir / REFS_JSON.name if args.out_dir else REFS_JSON
    table_path = args.out_dir / TABLE.name if args.out_dir else TABLE
    refs_path.parent.mkdir(parents=True, exist_ok=True)
    table_path.parent.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    table = _read_splits(Path(settings.data_dir), args.limit, set(args.datasets.split(",")))
    tasks = _elemental_tasks(table)
    print(f"{len(table)} structures, {len(tasks)} elemental relaxations, device {device}")

    # Builders need only the models' element lists and cutoffs: read them on CPU before
    # forking, so no CUDA context exists in the parent when the pools start.
    eform_cpu = load_megnet("MEGNet-MP-2018.6.1-Eform", "cpu").model
    gap_cpu = load_megnet("MEGNet-MP-2019.4.1-BandGap-mfi", "cpu").model
    builders = Builders(
        chgnet=ChgnetGraphBuilder(),
        megnet_eform=MegnetGraphBuilder(tuple(eform_cpu.element_types), float(eform_cpu.cutoff)),
        megnet_gap=MegnetGraphBuilder(tuple(gap_cpu.element_types), float(gap_cpu.cutoff)),
    )
    ctx = mp.get_context("fork")
    relax_pool = ctx.Pool(args.relax_workers, initializer=_init_worker, initargs=(builders,))
    cpu_tasks = [t for t in tasks if t[3] < DEVICE_RELAX_MIN_ATOMS]
    device_tasks = [t for t in tasks if t[3] >= DEVICE_RELAX_MIN_ATOMS]
    relax_async = relax_pool.map_async(_relax_task, cpu_tasks, chunksize=1)
    graph_pool = ctx.Pool(args.workers, initializer=_init_worker, initargs=(builders,))

    from ml.oracles.registry import get_oracle

    chg = get_oracle("chgnet-energy", device)
    meg_e = get_oracle("megnet-eform", device)
    meg_g = get_oracle("megnet-gap-pbe", device)
    device_relaxed: list[dict] = []

    def relax_on_device() -> None:
        for task in device_tasks:
            device_relaxed.append(_relax_task(task, device))

    relax_thread = threading.Thread(target=relax_on_device, daemon=True)
    relax_thread.start()

    n = len(table)
    energy = np.full(n, np.nan)
    eform_meg = np.full(n, np.nan)
    gap_meg = np.full(n, np.nan)
    formula = [""] * n
    n_atoms = np.zeros(n, dtype=np.int64)
    buf: list[tuple] = []
    done = 0

    def flush() -> None:
        rows = [b[0] for b in buf]
        energy[rows] = chg.predict_graphs([b[1] for b in buf], batch_size=args.batch_size)  # type: ignore[attr-defined]
        eform_meg[rows] = meg_e.predict_graphs([b[2] for b in buf], batch_size=args.batch_size)  # type: ignore[attr-defined]
        gap_meg[rows] = meg_g.predict_graphs([b[3] for b in buf], batch_size=args.batch_size)  # type: ignore[attr-defined]
        buf.clear()

    for blob in graph_pool.imap(_build_chunk, _chunks(table, args.chunk)):
        for item in pickle.loads(blob):
            formula[item[0]] = item[4]
            n_atoms[item[0]] = item[5]
            buf.append(item)
        if len(buf) >= args.batch_size:
            before = done
            done += len(buf)
            flush()
            if done // 5000 != before // 5000:
                print(f"  scored {done}/{n} in {time.time() - t0:.0f} s", flush=True)
    if buf:
        done += len(buf)
        flush()
    graph_pool.close()
    t_score = time.time() - t0
    print(f"scored {n} structures in {t_score:.1f} s ({n / t_score:.1f} structures/s overall)")

    relaxed = relax_async.get()
    relax_pool.close()
    relax_thread.join()
    relaxed += device_relaxed
    print(
        f"relaxation seconds: {json.dumps({r['label']: r.get('seconds') for r in device_relaxed})}"
    )
    print(f"relaxed {len(relaxed)} elemental structures by {time.time() - t0:.1f} s")

    refs: dict[str, float] = {}
    sources: dict[str, dict] = {}
    for r in relaxed:
        if not math.isfinite(r["energy"]):
            continue
        el = r["element"]
        if el not in refs or r["energy"] < refs[el]:
            refs[el] = float(r["energy"])
            sources[el] = r
    refs = dict(sorted(refs.items()))
    with refs_path.open("w") as fh:
        json.dump({k: round(v, 6) for k, v in refs.items()}, fh, indent=1)
    with (refs_path.parent / "elemental_refs_sources.json").open("w") as fh:
        json.dump({k: sources[k] for k in refs}, fh, indent=1)
    failed = [r["label"] for r in relaxed if not math.isfinite(r["energy"])]
    unconv = [r["label"] for r in relaxed if math.isfinite(r["energy"]) and not r["converged"]]
    print(f"elemental refs for {len(refs)} elements; failed {failed}; not converged {unconv}")

    from ml.oracles.references import formation_energy

    eform_chg = np.array(
        [
            formation_energy(f, float(e), refs) if f else math.nan
            for f, e in zip(formula, energy, strict=True)
        ]
    )
    out = pd.DataFrame(
        {
            "dataset": table["dataset"],
            "split": table["split"],
            "material_id": table["material_id"],
            "formula": formula,
            "n_atoms": n_atoms,
            "chgnet_energy_per_atom": np.round(energy, 6),
            "chgnet_eform": np.round(eform_chg, 6),
            "megnet_eform": np.round(eform_meg, 6),
            "megnet_gap_pbe": np.round(gap_meg, 6),
            "dft_eform": table["dft_eform"],
            "dft_gap": table["dft_gap"],
        }
    )
    out.to_csv(table_path, index=False, compression="gzip")
    print(f"wrote {table_path} ({len(out)} rows) and {refs_path} in {time.time() - t0:.1f} s")
    for col in ("chgnet_energy_per_atom", "chgnet_eform", "megnet_eform", "megnet_gap_pbe"):
        print(f"  {col}: {int(out[col].isna().sum())} unscored")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
