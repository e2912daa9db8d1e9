"""Issue 17 must-shows 1-2: Crystal-GFN in the paper's configuration (appendix C).

* ``proxy``: the proxy's MAE on MP-20 test (from its release file, measured by
  ``ml.methods.crystal_gfn.train_proxy``), all of test and the paper's 12-element subset;
* ``train``: trajectory-balance training of the paper configuration
  (:func:`ml.methods.crystal_gfn.request_spec.paper_request`: 12 elements, <= 5 per
  composition, <= 16 atoms per element, cells <= 20 atoms, reward exp(-beta E_form)), wall
  time; skipped with ``--gfn`` (a trained one); saved with ``--save-gfn``;
* ``samples``: ``--n`` (10,000) samples: share with proxy E_form < -2 eV/atom and the median
  (paper: 95 %, -3.1), distinct compositions and space groups, crystal-lattice systems,
  point symmetries and elements (also among the 100 lowest), sampling time;
* ``untrained``: the same from a randomly initialised policy (the paper's pink curve);
* ``reference``: MP-20 test DFT formation energies (all, and within the 12 elements);
* ``oracle_<lattice>``: the first ``--oracle-n`` samples realised with the Wyckoff generator
  (``--lattice-modes``: ``gfn`` keeps the GFlowNet's lattice, ``generator`` lets the flow
  make its own), relaxed and scored by the common pipeline: share with the service's
  formation-energy oracle below -2 eV/atom on the relaxed crystals, median, proxy-oracle MAE,
  space group kept, metastable / unique / novel rates.

Sections are written to ``--json`` as they finish.

    python benchmarks/crystal_gfn_paper.py --proxy ml/weights/crystal_gfn_proxy.pt \
        --wyckoff ml/weights/conditional-wyckoff.pt --save-gfn ml/weights/crystal_gfn-paper.pt \
        --train-minutes 2.5 --n 10000 --oracle-n 256 --device cuda --json bench.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ml.methods.base import Candidate
from ml.methods.crystal_gfn import gfn
from ml.methods.crystal_gfn.checkpoint import load_proxy_cached
from ml.methods.crystal_gfn.chemistry import symbol
from ml.methods.crystal_gfn.env import CrystalEnv
from ml.methods.crystal_gfn.method import CrystalGFNParams
from ml.methods.crystal_gfn.proxy_data import load_split
from ml.methods.crystal_gfn.realise import plan_samples, realise
from ml.methods.crystal_gfn.request_spec import PAPER_ELEMENTS, env_spec, paper_request
from ml.methods.crystal_gfn.reward import Reward, terms_from_request
from ml.methods.crystal_gfn.spacegroups import (
    CRYSTAL_LATTICE_SYSTEMS,
    POINT_SYMMETRIES,
    crystal_lattice_system,
    point_symmetry,
)

THRESHOLD = -2.0  # eV/atom, the paper's figure


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def energy_stats(e: np.ndarray) -> dict[str, Any]:
    e = e[~np.isnan(e)]
    if not len(e):
        return {"n": 0}
    return {
        "n": len(e),
        "share_below_-2": round(float((e < THRESHOLD).mean()), 4),
        "median": round(float(np.median(e)), 3),
        "mean": round(float(e.mean()), 3),
        "p05": round(float(np.quantile(e, 0.05)), 3),
        "p95": round(float(np.quantile(e, 0.95)), 3),
    }


def diversity(env: CrystalEnv, s: gfn.Samples) -> dict[str, Any]:
    from pymatgen.core import Composition

    counts = s.states.counts.cpu().numpy()
    groups = s.space_group.cpu().numpy()
    formulas = env.formulas(s.states.counts)
    reduced = Counter(Composition(f).reduced_formula for f in formulas)
    elements = Counter(env.spec.elements[d] for row in counts for d in np.flatnonzero(row))
    energy = s.values["formation_energy"].cpu().numpy()
    top = np.argsort(energy)[:100]
    top_el = {env.spec.elements[d] for i in top for d in np.flatnonzero(counts[i])}
    return {
        "distinct_compositions": len(set(formulas)),
        "distinct_reduced_formulas": len(reduced),
        "most_common_formulas": reduced.most_common(5),
        "distinct_space_groups": len(set(groups.tolist())),
        "allowed_space_groups": len(env.spec.space_groups),
        "crystal_lattice_systems": len({crystal_lattice_system(int(g)) for g in groups}),
        "point_symmetries": len({point_symmetry(int(g)) for g in groups}),
        "elements": len(elements),
        "element_counts": {symbol(z): n for z, n in elements.most_common()},
        "top100": {
            "elements": len(top_el),
            "crystal_lattice_systems": sorted(
                {CRYSTAL_LATTICE_SYSTEMS[crystal_lattice_system(int(groups[i]))] for i in top}
            ),
            "point_symmetries": sorted(
                {POINT_SYMMETRIES[point_symmetry(int(groups[i]))] for i in top}
            ),
            "space_groups": len({int(groups[i]) for i in top}),
        },
        "atoms_per_cell_mean": round(float(counts.sum(1).mean()), 2),
    }


def sample_section(
    env: CrystalEnv, policy: Any, reward: Reward, n: int, seed: int
) -> tuple[dict[str, Any], gfn.Samples]:
    torch.manual_seed(seed)
    sync()
    t0 = time.time()
    s, dead = gfn.sample(env, policy.eval(), reward, n, batch_size=4096)
    if s is None:
        raise SystemExit(f"no crystal in {dead} trajectories")
    sync()
    wall = time.time() - t0
    out = {
        "n": len(s),
        "dead_trajectories": dead,
        "sample_s": round(wall, 2),
        "proxy_formation_energy": energy_stats(s.values["formation_energy"].cpu().numpy()),
        "proxy_band_gap_median": round(float(s.values["band_gap"].median()), 3),
        **diversity(env, s),
    }
    return out, s


def reference_section(proxy: Any, device: str, workers: int) -> dict[str, Any]:
    """MP-20 test DFT formation energies and the proxy on the same structures."""
    from ml.methods.crystal_gfn.train_proxy import evaluate

    test = load_split("test", workers)  # cached by the proxy's training
    paper = {int(z) for z in map(_z, PAPER_ELEMENTS)}
    sub = np.array([set(map(int, row[row > 0])) <= paper for row in test.z])
    pred = evaluate(proxy, test, device)[:, 0]
    return {
        "mp20_test_dft": energy_stats(test.formation_energy),
        "mp20_test_dft_paper_elements": energy_stats(test.formation_energy[sub]),
        "mp20_test_proxy_paper_elements": energy_stats(pred[sub]),
    }


def _z(sym: str) -> int:
    from pymatgen.core import Element

    return int(Element(sym).Z)


def oracle_section(
    env: CrystalEnv,
    s: gfn.Samples,
    wyckoff: Any,
    stats: Any,
    mode: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    from ml import pipeline
    from ml.constraints import space_group_number

    t0 = time.time()
    sub = s.select(torch.arange(min(args.oracle_n, len(s)), device=s.log_r.device))
    counts = sub.states.counts.cpu().numpy()
    numbers = [
        [env.spec.elements[d] for d in np.flatnonzero(row) for _ in range(int(row[d]))]
        for row in counts
    ]
    groups = sub.space_group.tolist()
    conds = plan_samples(groups, numbers, stats, per_template=4)
    ok = [i for i, c in enumerate(conds) if c is not None]
    lattices = sub.lattice.double().cpu().numpy()
    pairs = realise(
        wyckoff,
        [conds[i] for i in ok],
        lattices[ok],
        mode,
        args.generator_steps,
        args.seed,
        512,
    )
    realise_s = time.time() - t0
    proxy_e = sub.values["formation_energy"].cpu().numpy()
    cands = [
        Candidate(crystal=c, predicted={"formation_energy": float(proxy_e[i])})
        for i, (_, c) in zip(ok, pairs, strict=True)
    ]
    sg_generated = np.array([space_group_number(c.crystal) or 0 for c in cands])
    request = paper_request(num_candidates=len(cands)).model_copy(update={"relax": True})
    t1 = time.time()
    scored = pipeline.evaluate_candidates(cands, request, device=args.device)
    eval_s = time.time() - t1
    oracle = np.array(
        [
            np.nan
            if (v := sc.scores.get("formation_energy")) is None or v.value is None
            else v.value
            for sc in scored
        ]
    )
    name = next((v.oracle for sc in scored if (v := sc.scores.get("formation_energy"))), None)
    wanted = np.array([groups[i] for i in ok])
    sg_final = np.array([sc.space_group or 0 for sc in scored])
    relaxed = np.array([sc.relaxed is not None for sc in scored])
    valid = np.array([sc.flags["valid"] for sc in scored])
    both = ~np.isnan(oracle)
    pe = proxy_e[ok]
    n_real = max(len(cands), 1)

    def rate(flag: str) -> float:
        return round(float(np.mean([sc.flags[flag] for sc in scored])), 4) if scored else 0.0

    return {
        "lattice": mode,
        "n_samples": len(sub),
        "n_realised": len(cands),
        "no_wyckoff_assignment": len(sub) - len(ok),
        "valid": round(float(valid.mean()), 4) if len(valid) else 0.0,
        "relaxed": round(float(relaxed.mean()), 4) if len(relaxed) else 0.0,
        "oracle": name,
        "oracle_formation_energy_relaxed": energy_stats(oracle),
        "share_below_-2_of_realised": round(float((oracle < THRESHOLD).sum()) / n_real, 4),
        "proxy_formation_energy_same_samples": energy_stats(pe),
        "proxy_vs_oracle_mae": round(float(np.abs(pe[both] - oracle[both]).mean()), 3)
        if both.any()
        else None,
        "space_group_as_sampled_before_relax": round(float((sg_generated == wanted).mean()), 4),
        "space_group_as_sampled_after_relax": round(float((sg_final == wanted).mean()), 4),
        "metastable": rate("metastable"),
        "unique": rate("unique"),
        "novel": rate("novel"),
        "realise_s": round(realise_s, 1),
        "pipeline_s": round(eval_s, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--proxy", type=Path, required=True)
    p.add_argument("--wyckoff", type=Path, help="Wyckoff generator (needed for the oracle rows)")
    p.add_argument("--gfn", type=Path, help="a trained paper-configuration GFlowNet")
    p.add_argument("--save-gfn", type=Path, help="where to save the trained GFlowNet")
    p.add_argument("--train-minutes", type=float, default=2.5)
    p.add_argument("--train-steps", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--beta", type=float, default=CrystalGFNParams().beta)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--baseline-n", type=int, default=None, help="untrained samples (default n)")
    p.add_argument("--oracle-n", type=int, default=256)
    p.add_argument("--lattice-modes", default="gfn")
    p.add_argument("--generator-steps", type=int, default=100)
    p.add_argument("--sections", default="proxy,train,samples,untrained,reference,oracle")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="processes to featurise MP-20 test")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    sections = set(args.sections.split(","))
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    }

    def record(key: str, res: dict[str, Any]) -> None:
        results[key] = res
        print(key, json.dumps(res, default=str), flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1, default=str))

    proxy, info, proxy_id = load_proxy_cached(args.proxy, args.device)
    if "proxy" in sections:
        record("proxy", {k: info.get(k) for k in ("data", "test", "wall_s", "epochs", "params")})
    request = paper_request(beta=args.beta)
    params = CrystalGFNParams.model_validate(request.params)
    spec = env_spec(request, params.max_elements, params.max_per_element, proxy.config)
    env = CrystalEnv(spec, args.device)
    reward = Reward(terms_from_request(request)[0], proxy, params.beta)
    record(
        "config",
        {
            "elements": [symbol(z) for z in spec.elements],
            "space_groups": len(spec.space_groups),
            "max_atoms": spec.max_atoms,
            "max_elements": spec.max_elements,
            "max_per_element": spec.max_per_element,
            "beta": params.beta,
            "lattice_box": spec.box.to_dict(),
        },
    )
    if args.gfn and args.gfn.is_file():
        payload = gfn.read_gfn(args.gfn)
        if (payload["env"], payload["reward"], payload["proxy"]) != (
            spec.key(),
            reward.key(),
            proxy_id,
        ):
            raise SystemExit(f"{args.gfn} was trained for another configuration or proxy")
        policy = gfn.load_gfn(payload, args.device)
        record("train", {"loaded": str(args.gfn), **payload.get("info", {})})
    elif "train" in sections:
        torch.manual_seed(args.seed)
        policy = gfn.new_policy(env, params.hidden, params.layers, params.mixtures)
        cfg = gfn.GFNConfig(
            steps=args.train_steps,
            batch_size=args.batch_size,
            lr=params.lr,
            lr_log_z=params.lr_log_z,
            explore=params.explore,
            replay_fraction=params.replay_fraction,
            max_seconds=args.train_minutes * 60,
        )
        history = []
        last = None
        for st in gfn.train(env, policy, reward, cfg, report_every=100):
            last = st
            row = [st.step, st.seconds, st.loss, st.log_z, st.mean_log_r, st.mean_energy]
            history.append([round(v, 3) for v in row] + [round(st.dead_fraction, 3)])
            print("train", history[-1], flush=True)
        assert last is not None
        info_gfn = {
            "steps": last.step,
            "batch_size": args.batch_size,
            "trajectories": last.step * args.batch_size,
            "train_s": round(last.seconds, 1),
            "device": results["device"],
            "final": history[-1],
        }
        record("train", {**info_gfn, "history_every_100": history})
        if args.save_gfn:
            gfn.save_gfn(args.save_gfn, policy, spec, reward, proxy_id, info_gfn)
    else:
        raise SystemExit("no GFlowNet: pass --gfn or include the train section")
    samples = None
    if "samples" in sections or "oracle" in sections:
        res, samples = sample_section(env, policy, reward, args.n, args.seed)
        record("samples", res)
    if "untrained" in sections:
        torch.manual_seed(args.seed + 1)
        untrained = gfn.new_policy(env, params.hidden, params.layers, params.mixtures)
        res, _ = sample_section(env, untrained, reward, args.baseline_n or args.n, args.seed)
        record("untrained", res)
    if "reference" in sections:
        record("reference", reference_section(proxy, args.device, args.workers))
    if "oracle" in sections and args.wyckoff and samples is not None:
        from ml import pipeline
        from ml.methods.conditional.checkpoint import load_wyckoff_release

        t0 = time.time()
        took = pipeline.warm_up(args.device)
        wyckoff, stats, _ = load_wyckoff_release(args.wyckoff, args.device)
        record("oracle_setup", {"warm_up": took, "s": round(time.time() - t0, 1)})
        for mode in args.lattice_modes.split(","):
            record(f"oracle_{mode}", oracle_section(env, samples, wyckoff, stats, mode, args))


if __name__ == "__main__":
    main()
