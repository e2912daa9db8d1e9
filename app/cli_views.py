"""What the CLI shows: a progress bar fed by a job's events, and a ranked results table."""

from __future__ import annotations

import math
from typing import IO, Any

FLAG_ABBREVIATIONS = {"hit": "H", "stable": "S", "metastable": "m", "unique": "U", "novel": "N"}


# No rate: steps of different phases are not comparable.
BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar:30}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"


class JobProgressBar:
    """A tqdm bar that follows ``progress`` events: phase, step/total of that phase, the best
    objective loss and the number of structures stored so far."""

    def __init__(self, file: IO[str]) -> None:
        self.file = file
        self.bar: Any = None
        self.phase: str | None = None

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        if event == "progress":
            self._progress(data["status"], data.get("progress") or {})
        elif event == "end":
            self._progress(data["status"], data.get("progress") or {})
            self.close()

    def _progress(self, status: str, p: dict[str, Any]) -> None:
        from tqdm import tqdm

        phase = str(p.get("phase") or status)
        total = int(p.get("total") or 0) or None
        if self.bar is None:
            self.bar = tqdm(
                total=total, file=self.file, unit="step", bar_format=BAR_FORMAT, delay=0.1
            )
        if phase != self.phase:
            # One bar for the job: each phase restarts it with its own total.
            self.phase = phase
            self.bar.set_description_str(f"{phase:<19}", refresh=False)
            self.bar.reset(total=total)
        elif total is not None and self.bar.total != total:
            self.bar.total = total
        self.bar.n = int(p.get("step") or 0)
        post = {"status": status}
        if p.get("best") is not None:
            post["best"] = f"{p['best']:.3g}"
        if p.get("stored") is not None:
            post["stored"] = str(p["stored"])
        self.bar.set_postfix(post, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _num(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def jobs_table(jobs: list[dict[str, Any]]) -> str:
    """Jobs (API JSON, newest first) as an aligned text table: id, status, method, label and
    the objectives in short."""
    header = ["created (UTC)", "id", "status", "method", "label", "objectives"]
    rows = [
        [
            str(j["created_at"])[:19].replace("T", " "),
            j["id"],
            j["status"],
            j["method"],
            j.get("label") or "",
            j.get("objectives") or "",
        ]
        for j in jobs
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, ["-" * w for w in widths], *rows]
    ]
    return "\n".join([*lines, f"{len(rows)} jobs"])


def results_table(items: list[dict[str, Any]]) -> str:
    """Structures (API JSON, best rank first) as an aligned text table with units."""
    props = sorted({p for s in items for p in s["scores"]} - {"energy_above_hull"})
    units = {p: sc["unit"] for s in items for p, sc in s["scores"].items()}
    header = ["rank", "formula", "atoms", "sg"]
    header += [f"{p} ({units[p]})" if units.get(p) else p for p in props]
    header += ["E_hull (eV/atom)", "flags"]
    rows = []
    for s in items:
        flags = "".join(a for f, a in FLAG_ABBREVIATIONS.items() if s["flags"].get(f))
        if not s["flags"].get("valid", True):
            flags += " invalid"
        rows.append(
            [
                _num(s["rank"]),
                s["formula"],
                str(s["n_atoms"]),
                _num(s["space_group"]),
                *[_num(s["scores"][p]["value"] if p in s["scores"] else None) for p in props],
                _num(s["energy_above_hull"]),
                flags,
            ]
        )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    numeric = [i not in (1, len(header) - 1) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(cells, widths, numeric, strict=True)
        ).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    legend = "flags: H hit, S stable, m metastable, U unique, N novel"
    return "\n".join([*out, f"{len(rows)} structures; {legend}"])
