"""Wyckoff template counts of the MP 2018 structures outside MP-20 (``mp2018/extra``).

MP-20 holds cells of at most 20 atoms, so the release's template statistics have never seen a
larger cell's assignment (LiFePO4's 28-atom olivine, say), and the assignment ranking falls back
to single-letter frequencies there. These counts, over the 19,949 MP 2018 structures of up to
200 atoms that MP-20 does not contain (none of its test crystals), are added to the release's
when templates are ranked (:meth:`ml.generative.assignment.TemplateStats.with_extra`).

    PYTHONPATH=. python -m ml.tools.build_template_counts --workers 2
"""

from __future__ import annotations

import argparse
import gzip
import json
import time

from ml.generative.assignment import EXTRA_TEMPLATES_PATH, TemplateStats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    from ml.data import load_records
    from ml.methods.conditional.wyckoff_data import from_crystals

    t = time.perf_counter()
    records = load_records("mp2018", "extra", limit=args.limit)
    arrays = from_crystals(
        [r.crystal for r in records], [r.material_id for r in records], args.workers
    )
    stats = TemplateStats.from_arrays(arrays)
    rows = [[g, [list(ls) for ls in t], v] for (g, t), v in sorted(stats.templates.items())]
    EXTRA_TEMPLATES_PATH.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(EXTRA_TEMPLATES_PATH, "wt") as fh:
        json.dump({"source": "mp2018/extra", "structures": len(arrays), "templates": rows}, fh)
    print(
        f"{len(arrays)} of {len(records)} structures decomposed, {len(rows)} templates, "
        f"{time.perf_counter() - t:.0f} s -> {EXTRA_TEMPLATES_PATH}"
    )


if __name__ == "__main__":
    main()
