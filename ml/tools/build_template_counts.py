"""Wyckoff template counts of the MP 2018 structures outside MP-20 (``mp2018/extra``).

MP-20 holds cells of at most 20 atoms, so the release's template statistics have never seen a
larger cell's assignment (LiFePO4's 28-atom olivine, say), and the assignment ranking falls back
to single-letter frequencies there. These counts, over the 19,949 MP 2018 structures of up to
200 atoms that MP-20 does not contain (none of its test crystals), are added to the release's
when templates are ranked (:meth:`ml.generative.assignment.TemplateStats.with_extra`).

    PYTHONPATH=. python -m ml.tools.build_template_counts --workers 2

``--elements``: instead, MP-20 train + val's letters per element and electronegativity-ordered
templates (the release's training data; Wyckoff decomposition cached under ``.cache/``), for
release files saved before their statistics held them
(:meth:`ml.generative.assignment.TemplateStats.with_elements`).
"""

from __future__ import annotations

import argparse
import gzip
import json
import time

from ml.generative.assignment import ELEMENT_STATS_PATH, EXTRA_TEMPLATES_PATH, TemplateStats


def build_element_stats(workers: int) -> None:
    from ml.methods.conditional.train_wyckoff import training_arrays

    t = time.perf_counter()
    arrays = training_arrays(None, workers)
    d = TemplateStats.from_arrays(arrays).element_dict()
    d = {k: sorted(v) for k, v in d.items()}  # stable file contents
    with gzip.open(ELEMENT_STATS_PATH, "wt") as fh:
        json.dump({"source": "mp20 train + val", "structures": len(arrays), **d}, fh)
    print(
        f"{len(arrays)} structures, {len(d['element_letters'])} (sg, letter, element), "
        f"{len(d['ordered_templates'])} ordered templates, {time.perf_counter() - t:.0f} s "
        f"-> {ELEMENT_STATS_PATH}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--elements", action="store_true", help="MP-20 per-element statistics")
    args = parser.parse_args()
    if args.elements:
        build_element_stats(args.workers)
        return
    from ml.data import load_records
    from ml.methods.conditional.wyckoff_data import from_crystals

    t = time.perf_counter()
    records = load_records("mp2018", "extra", limit=args.limit)
    arrays = from_crystals(
        [r.crystal for r in records], [r.material_id for r in records], args.workers
    )
    stats = TemplateStats.from_arrays(arrays)
    rows = [[g, [list(ls) for ls in t], v] for (g, t), v in sorted(stats.templates.items())]
    ordered = sorted(stats.element_dict()["ordered_templates"])
    EXTRA_TEMPLATES_PATH.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(EXTRA_TEMPLATES_PATH, "wt") as fh:
        json.dump(
            {
                "source": "mp2018/extra",
                "structures": len(arrays),
                "templates": rows,
                "ordered_templates": ordered,
            },
            fh,
        )
    print(
        f"{len(arrays)} of {len(records)} structures decomposed, {len(rows)} templates, "
        f"{time.perf_counter() - t:.0f} s -> {EXTRA_TEMPLATES_PATH}"
    )


if __name__ == "__main__":
    main()
