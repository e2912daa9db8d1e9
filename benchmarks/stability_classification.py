"""Stability classification of the energy oracles against DFT, on MP-20 test (no new data).

The DFT hull is built from the DFT formation energies of every material under the data
directory (MP-20 train index, val and test; mp2018 extra; elements at 0), with the MP-20 test
materials removed. Each test material's DFT E_hull against that hull is the truth; an oracle's
prediction is its formation energy of the same (DFT-relaxed) structure against the same DFT
hull (SevenNet energies with the MP2020 corrections, as its formation energies). Reported per
oracle: F1, precision and recall of "E_hull <= threshold" (0.1 eV/atom by default), accuracy,
and the MAE of E_hull, on all rows each oracle scored and on the rows all of them scored.
Oracle formation energies come from the models' hull tables
(see :func:`test_energies`; made on a GPU by ``ml/tools/build_hull_tables.py``):
``static`` at the DFT geometry, and ``relaxed`` with the model's own relaxation where the table
relaxed the row.

    python benchmarks/stability_classification.py
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml.evaluation.hull import ReferenceHull, hull_table_path, load_reference_table
from ml.oracles.references import energy_correction, formation_energy, load_elemental_refs
from ml.settings import get_ml_settings

MODELS = ("chgnet", "sevennet-l3i5", "sevennet-0")


RESULTS = Path(__file__).resolve().parent / "results"


def test_energies(model: str) -> pd.DataFrame | None:
    """MP-20 test rows with ``energy_static`` (and ``energy_relaxed`` where relaxed) of
    ``model``: its full hull table when built, else the test-only table of
    ``benchmarks/results/energies_<model>_mp20test.csv.gz`` (``build_hull_tables --splits
    mp20/test --static-only``), and for CHGNet the static column of the older reference table."""
    for path in (hull_table_path(model), RESULTS / f"energies_{model}_mp20test.csv.gz"):
        if path.is_file():
            table = load_reference_table(path)
            return table[(table["dataset"] == "mp20") & (table["split"] == "test")]
    if model == "chgnet":
        table = load_reference_table()
        table = table[(table["dataset"] == "mp20") & (table["split"] == "test")]
        return table.assign(energy_static=table["chgnet_energy_per_atom"], energy_relaxed=np.nan)
    return None


def dft_tables(data_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(hull materials without MP-20 test, MP-20 test) with formula and DFT Eform."""
    cols = ["material_id", "pretty_formula", "formation_energy_per_atom"]
    parts = [
        pd.read_csv(data_dir / "mp20" / "train_index.csv.gz", usecols=cols),
        pd.read_csv(data_dir / "mp20" / "val.csv.gz", usecols=cols),
        pd.read_csv(data_dir / "mp2018" / "extra.csv.gz", usecols=cols),
    ]
    test = pd.read_csv(data_dir / "mp20" / "test.csv.gz", usecols=cols)
    return pd.concat(parts, ignore_index=True), test


def e_hulls(hull: ReferenceHull, formulas: list[str], eforms: np.ndarray) -> np.ndarray:
    out = np.full(len(formulas), np.nan)
    for i, (f, e) in enumerate(zip(formulas, eforms, strict=True)):
        if math.isfinite(e):
            v = hull.e_above_hull(f, float(e))
            out[i] = math.nan if v is None else v
    return out


def scores(pred: np.ndarray, true: np.ndarray, threshold: float) -> dict[str, float]:
    ok = np.isfinite(pred) & np.isfinite(true)
    p, t = pred[ok] <= threshold, true[ok] <= threshold
    tp, fp, fn = int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum())
    precision = tp / max(tp + fp, 1)
    recall = tp / max(tp + fn, 1)
    return {
        "n": int(ok.sum()),
        "F1": 2 * precision * recall / max(precision + recall, 1e-12),
        "precision": precision,
        "recall": recall,
        "accuracy": float(np.mean(p == t)),
        "MAE_ehull": float(np.mean(np.abs(pred[ok] - true[ok]))),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="stability classification vs DFT on MP-20 test")
    ap.add_argument("--threshold", type=float, default=0.1, help="eV/atom")
    args = ap.parse_args(argv)
    t0 = time.time()
    hull_rows, test = dft_tables(Path(get_ml_settings().data_dir))
    elements = {el for f in pd.concat([hull_rows, test])["pretty_formula"] for el in _els(f)}
    entries = [
        (str(f), float(e))
        for f, e in zip(
            hull_rows["pretty_formula"], hull_rows["formation_energy_per_atom"], strict=True
        )
        if math.isfinite(e)
    ] + [(el, 0.0) for el in sorted(elements)]
    hull = ReferenceHull(entries)
    formulas = test["pretty_formula"].astype(str).tolist()
    truth = e_hulls(hull, formulas, test["formation_energy_per_atom"].to_numpy(float))
    positives = int((truth <= args.threshold).sum())
    print(
        f"MP-20 test: {len(test)} materials; DFT hull from {len(hull_rows)} other materials; "
        f"{positives} ({positives / len(test):.3f}) have DFT E_hull <= {args.threshold}"
    )
    header = f"{'oracle':<22}{'n':>6}{'F1':>7}{'prec':>7}{'recall':>7}{'acc':>7}{'MAE':>8}"
    print(header)
    ids = test["material_id"].astype(str)
    preds: dict[str, np.ndarray] = {}
    for model in MODELS:
        table = test_energies(model)
        if table is None:
            print(f"{model:<22} (no energy table)")
            continue
        table = table.set_index(table["material_id"].astype(str))
        refs = load_elemental_refs(model)
        kinds = ["static"] + (["relaxed"] if table["energy_relaxed"].notna().any() else [])
        for kind in kinds:
            col = table["energy_static"]
            if kind == "relaxed":
                col = table["energy_relaxed"].where(
                    table["energy_relaxed"] < table["energy_static"], table["energy_static"]
                )
            energy = col.reindex(ids).to_numpy(float)
            eform = np.array(
                [
                    formation_energy(f, e + energy_correction(model, f), refs)
                    for f, e in zip(formulas, energy, strict=True)
                ]
            )
            preds[f"{model} {kind}"] = e_hulls(hull, formulas, eform)
    common = np.logical_and.reduce([np.isfinite(p) for p in preds.values()])
    for label, subset in (("all scored", None), (f"common {int(common.sum())}", common)):
        print(f"-- {label}")
        for name, pred in preds.items():
            p = pred if subset is None else np.where(subset, pred, np.nan)
            s = scores(p, truth, args.threshold)
            print(
                f"{name:<22}{s['n']:>6}{s['F1']:>7.3f}{s['precision']:>7.3f}"
                f"{s['recall']:>7.3f}{s['accuracy']:>7.3f}{s['MAE_ehull']:>8.4f}"
            )
    print(f"{time.time() - t0:.0f} s")


def _els(formula: str) -> list[str]:
    import re

    return re.findall(r"[A-Z][a-z]?", formula)


if __name__ == "__main__":
    main()
