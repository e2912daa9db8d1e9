"""Uniqueness + novelty of one large batch, in the job's process and in pool processes (issue 20).

The batch: ``--n`` MP-20 test crystals, strained 1 % (each still matches its reference, so
novelty runs StructureMatcher against the reference set), plus a strained copy of every tenth
one (duplicates within the batch). Each setting of ``--processes`` judges the same batch with
:func:`ml.pipeline.identity.judge_identity` twice, timing the second pass (as a worker that has
judged jobs before: pool started, references of these formulas parsed; primitive cells are
computed afresh), and the verdicts are checked equal to the first setting's.

    PYTHONPATH=. python benchmarks/identity_throughput.py --n 1024 --processes 0 2
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from ml.crystal import Crystal
from ml.data import load_records


def batch(n: int) -> list[Crystal]:
    crystals = []
    for r in load_records("mp20", "test", limit=n - n // 10):
        c = r.crystal.copy()
        c.lattice = c.lattice * 1.01
        crystals.append(c)
    copies = []
    for c in crystals[::10]:
        d = c.copy()
        d.lattice = d.lattice * 1.005
        copies.append(d)
    return crystals + copies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--processes", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from ml.evaluation.novelty import get_reference_set
    from ml.pipeline import identity, scored

    crystals = batch(args.n)
    get_reference_set()
    rows: list[dict[str, Any]] = []
    first = None
    for processes in args.processes:
        started = identity.start_identity_pool(processes) if processes else 0
        identity.judge_identity(crystals, processes=processes)
        scored._PREPARED.clear()  # every pass prepares the batch itself
        t = time.perf_counter()
        verdicts = identity.judge_identity(crystals, processes=processes)
        secs = time.perf_counter() - t
        summary = (verdicts.unique, [(v.novel, v.basis) for v in verdicts.novelty])
        first = first or summary
        row = {
            "processes": processes,
            "started": started,
            "n": len(crystals),
            "seconds": round(secs, 2),
            "per_s": round(len(crystals) / secs, 1),
            "unique": sum(verdicts.unique),
            "novel": sum(v.novel for v in verdicts.novelty),
            "same_verdicts": summary == first,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    identity._drop_pool()
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"cores": os.cpu_count(), "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
