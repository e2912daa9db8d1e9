"""The archive of a job: every CIF plus summary.json, structures.csv, structures.extxyz and
structures.optimade.json in one zip."""

from __future__ import annotations

import csv
import io
import json
import re
import tempfile
import zipfile
from typing import IO, Any

from app.formats import to_extxyz, to_optimade
from app.jobs import StructureView
from app.models import Job
from app.serialize import job_out

_FLAG_COLUMNS = ("valid", "charge_neutral", "unique", "novel", "stable", "metastable", "hit")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def cif_name(row: StructureView, relaxed: bool = False) -> str:
    rank = f"{row.rank:05d}" if row.rank is not None else f"u{row.seq:05d}"
    suffix = "_relaxed" if relaxed else ""
    return f"cifs/{rank}_{_safe(row.formula)}_{row.id[:8]}{suffix}.cif"


def structures_csv(rows: list[StructureView]) -> str:
    properties = sorted({sc.property for row in rows for sc in row.scores})
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(
        [
            "id",
            "rank",
            "formula",
            "n_atoms",
            "space_group",
            *[f"{p} ({_unit(rows, p)})" for p in properties],
            "energy_above_hull",
            "method_score",
            *_FLAG_COLUMNS,
            "cif_file",
        ]
    )
    for row in rows:
        scores = {sc.property: sc.value for sc in row.scores}
        w.writerow(
            [
                row.id,
                row.rank if row.rank is not None else "",
                row.formula,
                row.n_atoms,
                row.space_group if row.space_group is not None else "",
                *[_num(scores.get(p)) for p in properties],
                _num(row.energy_above_hull),
                _num(row.method_score),
                *[int(bool(row.flags.get(f, False))) for f in _FLAG_COLUMNS],
                cif_name(row),
            ]
        )
    return out.getvalue()


def _unit(rows: list[StructureView], prop: str) -> str:
    for row in rows:
        for sc in row.scores:
            if sc.property == prop:
                return sc.unit
    return ""


def _num(v: float | None) -> str:
    return "" if v is None else repr(float(v))


def write_archive(job: Job, rows: list[StructureView]) -> IO[bytes]:
    """The zip in a spooled temporary file (kept in memory up to 32 MiB), rewound."""
    # Not a with-block: the caller streams the file and closes it.
    buf = tempfile.SpooledTemporaryFile(max_size=32 * 1024 * 1024)  # noqa: SIM115
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        summary: dict[str, Any] = job_out(job)
        z.writestr("summary.json", json.dumps(summary, indent=2, default=str))
        z.writestr("structures.csv", structures_csv(rows))
        z.writestr("structures.extxyz", to_extxyz(rows))
        z.writestr("structures.optimade.json", json.dumps(to_optimade(rows), indent=1))
        for row in rows:
            z.writestr(cif_name(row), row.cif)
            if row.relaxed_cif:
                z.writestr(cif_name(row, relaxed=True), row.relaxed_cif)
    buf.seek(0)
    return buf  # type: ignore[return-value]
