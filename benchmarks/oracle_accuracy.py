"""Oracle accuracy on all 9,046 MP-20 test structures, and the hull sanity fraction.

- Band-gap oracles (default: the trained gap-chgnet-ft and MEGNet PBE) run on the test CIFs:
  MAE, R^2, metal/non-metal accuracy and the share of negative outputs.
- Formation energy of each energy model at the DFT geometry (its full hull table when built,
  else ``benchmarks/results/energies_<model>_mp20test.csv.gz``); SevenNet with MP2020 corrections.

- MAE and R^2 of chgnet-eform and megnet-eform vs the DFT formation energy, and of
  megnet-gap-pbe vs the DFT band gap; the number of structures each oracle left unscored.
- The fraction of MP-20 test structures (DFT-relaxed Materials Project entries, mostly on or
  near the DFT hull) whose static CHGNet energy lies within 0.1 eV/atom of the CHGNet reference
  hull built WITHOUT the test split.

By default predictions are read from the reference table (``reference_energies.csv.gz``, made
on a GPU by ``ml/tools/build_reference_tables.py`` with the same oracles); ``--recompute`` runs
the oracles again on the test CIFs on ``--device``.

    python benchmarks/oracle_accuracy.py
    python benchmarks/oracle_accuracy.py --recompute --device cuda
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ml.evaluation.hull import ReferenceHull, load_reference_table

PAIRS = [
    ("chgnet-eform", "chgnet_eform", "dft_eform", "eV/atom"),
    ("megnet-eform", "megnet_eform", "dft_eform", "eV/atom"),
    ("megnet-gap-pbe", "megnet_gap_pbe", "dft_gap", "eV"),
]


def mae_r2(pred: np.ndarray, true: np.ndarray) -> tuple[float, float, int]:
    ok = np.isfinite(pred) & np.isfinite(true)
    p, t = pred[ok], true[ok]
    mae = float(np.mean(np.abs(p - t)))
    r2 = 1.0 - float(np.sum((p - t) ** 2)) / float(np.sum((t - t.mean()) ** 2))
    return mae, r2, int((~np.isfinite(pred)).sum())


def recompute(test: pd.DataFrame, device: str | None, batch_size: int) -> pd.DataFrame:
    from ml.crystal import Crystal
    from ml.oracles.registry import get_oracle

    data_dir = Path(__import__("ml.settings").settings.get_ml_settings().data_dir)
    src = pd.read_csv(data_dir / "mp20" / "test.csv.gz")
    cifs = dict(zip(src["material_id"].astype(str), src["cif"], strict=True))
    crystals = [Crystal.from_cif(cifs[m]) for m in test["material_id"]]
    out = test.copy()
    energy = get_oracle("chgnet-energy", device).predict(crystals, batch_size=batch_size)
    eform = get_oracle("chgnet-eform", device)
    out["chgnet_energy_per_atom"] = energy
    out["chgnet_eform"] = eform.eform_from_energies(crystals, energy)  # type: ignore[attr-defined]
    for name, col, _, _ in PAIRS[1:]:
        out[col] = get_oracle(name, device).predict(crystals, batch_size=batch_size)
    return out


def gap_table(test: pd.DataFrame, names: list[str], device: str | None, batch: int) -> None:
    """MAE, R^2, metal/non-metal accuracy and share of negative outputs of band-gap oracles."""
    from ml.data.cache import parse_cif
    from ml.oracles.registry import get_oracle
    from ml.settings import get_ml_settings

    src = pd.read_csv(Path(get_ml_settings().data_dir) / "mp20" / "test.csv.gz")
    cifs = dict(zip(src["material_id"].astype(str), src["cif"], strict=True))
    crystals = [parse_cif(cifs[m]) for m in test["material_id"].astype(str)]
    true = test["dft_gap"].to_numpy(float)
    print(f"{'band-gap oracle':<22}{'MAE':>8}{'R^2':>8}{'metal acc':>10}{'neg share':>10}{'s':>7}")
    for name in names:
        t = time.perf_counter()
        pred = get_oracle(name, device).predict(crystals, batch_size=batch)
        took = time.perf_counter() - t
        mae, r2, _ = mae_r2(pred, true)
        ok = np.isfinite(pred)
        acc = float(np.mean((pred[ok] > 0) == (true[ok] > 0)))
        neg = float(np.mean(pred[ok] < 0))
        print(f"{name:<22}{mae:>8.4f}{r2:>8.4f}{acc:>10.4f}{neg:>10.4f}{took:>7.0f}")
        if name == "megnet-gap-pbe":
            clipped = np.clip(pred, 0, None)
            mae, r2, _ = mae_r2(clipped, true)
            acc = float(np.mean((clipped[ok] > 0) == (true[ok] > 0)))
            print(f"{'  (clipped at 0)':<22}{mae:>8.4f}{r2:>8.4f}{acc:>10.4f}{0.0:>10.4f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="oracle accuracy on MP-20 test")
    ap.add_argument("--recompute", action="store_true", help="run the oracles, not the table")
    ap.add_argument("--device", default=None)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threshold", type=float, default=0.1, help="eV/atom above hull")
    ap.add_argument(
        "--gap-oracles",
        default="gap-chgnet-ft,megnet-gap-pbe",
        help="band-gap oracles to run on the test CIFs ('' to skip)",
    )
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")

    table = load_reference_table()
    test = table[(table["dataset"] == "mp20") & (table["split"] == "test")].reset_index(drop=True)
    source = "reference table (GPU, build_reference_tables.py)"
    if args.recompute:
        test = recompute(test, args.device, args.batch_size)
        source = f"recomputed on {args.device or 'settings device'}"
    print(f"MP-20 test: {len(test)} structures; predictions from {source}")
    print(f"{'oracle':<22}{'MAE':>9}{'R^2':>8}{'unscored':>10}  target")
    for name, col, target, unit in PAIRS:
        mae, r2, missing = mae_r2(test[col].to_numpy(float), test[target].to_numpy(float))
        print(f"{name:<22}{mae:>9.4f}{r2:>8.4f}{missing:>10}  {target} ({unit})")
    # Formation energy of each energy model's table of static energies at the DFT geometry
    # (SevenNet with the MP2020 corrections, as its formation-energy oracles).
    from stability_classification import test_energies

    from ml.oracles.references import energy_correction, formation_energy, load_elemental_refs

    for model in ("sevennet-l3i5", "sevennet-0", "chgnet"):
        h = test_energies(model)
        if h is None:
            print(f"{model + '-eform':<22} (no energy table)")
            continue
        energy = dict(zip(h["material_id"].astype(str), h["energy_static"], strict=True))
        refs = load_elemental_refs(model)
        p = np.array(
            [
                formation_energy(f, energy.get(m, math.nan) + energy_correction(model, f), refs)
                for m, f in zip(test["material_id"].astype(str), test["formula"], strict=True)
            ]
        )
        mae, r2, missing = mae_r2(p, test["dft_eform"].to_numpy(float))
        print(f"{model + '-eform':<22}{mae:>9.4f}{r2:>8.4f}{missing:>10}  dft_eform (eV/atom)")
    if args.gap_oracles:
        gap_table(test, args.gap_oracles.split(","), args.device, args.batch_size)

    t = time.perf_counter()
    hull = ReferenceHull.load(exclude_splits=[("mp20", "test")])
    e_hull = []
    for formula, energy in zip(test["formula"], test["chgnet_energy_per_atom"], strict=True):
        value = hull.e_above_hull(formula, float(energy)) if isinstance(formula, str) else None
        e_hull.append(math.nan if value is None else value)
    eh = np.array(e_hull)
    scored = np.isfinite(eh)
    within = int((eh[scored] <= args.threshold).sum())
    print(
        f"hull without mp20/test: {within}/{len(eh)} = {within / len(eh):.4f} of MP-20 test "
        f"within {args.threshold} eV/atom ({within / max(scored.sum(), 1):.4f} of "
        f"{int(scored.sum())} with a hull); median E_hull {np.median(eh[scored]):.4f}, "
        f"below hull (<0) {int((eh[scored] < 0).sum())}; {time.perf_counter() - t:.0f} s"
    )


if __name__ == "__main__":
    main()
