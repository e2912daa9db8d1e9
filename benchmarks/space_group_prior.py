"""Issue 13, composition only: how often the proposed space group is the crystal's own.

For the paper benchmark's MP-20 test rows (``conditional_wyckoff_paper.test_sample``), the
groups :meth:`ml.generative.assignment.TemplateStats.propose_space_groups` proposes for the
primitive cell's composition (as ``wyckoff_sampler.plan`` does when a request names no group),
with the release's statistics (train + val), under each ``space_group_prior``: top-1/3/5
accuracy, also on the polymorph-filtered rows (formulas not in train + val).

    PYTHONPATH=.:benchmarks python benchmarks/space_group_prior.py [--n 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path

from conditional_wyckoff_paper import reduced_formula, seen_formulas, test_sample
from pymatgen.core import Element

from ml.methods.conditional.checkpoint import WEIGHTS_DIR, load_wyckoff_release

PRIORS = ("v1", "chemistry")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--wyckoff", type=Path, default=WEIGHTS_DIR / "conditional-wyckoff.pt")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    _, stats, _ = load_wyckoff_release(args.wyckoff)
    refs, _, rows = test_sample(args.n, args.seed, None)
    seen = seen_formulas()
    novel = [reduced_formula(r["formula"]) not in seen for r in rows]
    out: dict[str, dict] = {}
    for prior in PRIORS:
        st = replace(stats, space_group_prior=prior)
        hits: dict[str, Counter[int]] = {"all": Counter(), "polymorph_filtered": Counter()}
        for ref, row, pf in zip(refs, rows, novel, strict=True):
            amounts = Counter(Element.from_Z(int(z)).symbol for z in ref.numbers)
            groups = [g for g, _ in st.propose_space_groups(amounts, 5, (1,))]
            for k in (1, 3, 5):
                ok = int(row["space_group"]) in groups[:k]
                hits["all"][k] += ok
                hits["polymorph_filtered"][k] += ok and pf
        sizes = {"all": len(rows), "polymorph_filtered": sum(novel)}
        out[prior] = {
            part: {f"top{k}": round(hits[part][k] / sizes[part], 3) for k in (1, 3, 5)}
            | {"n": sizes[part]}
            for part in hits
        }
        print(prior, json.dumps(out[prior]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
