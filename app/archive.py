"""The archive of a job: every CIF plus summary.json, structures.csv, structures.extxyz and
structures.optimade.json in one zip."""

from __future__ import annotations

import csv
import io
import json
import re
import tempfile
import zipfile
from collections.abc import Callable
from typing import IO, Any

from app.formats import to_extxyz, to_optimade
from app.jobs import StructureView
from app.models import Job
from app.serialize import job_out

_FLAG_COLUMNS = (
    "valid",
    "charge_neutral",
    "unique",
    "novel",
    "stable",
    "metastable",
    "constraints",
    "hit",
)
# Units of properties a structure may carry predictions of without a score of its own.
_KNOWN_UNITS = {
    "formation_energy": "eV/atom",
    "energy_above_hull": "eV/atom",
    "band_gap": "eV",
    # cliqueflowmer's prediction of the paper's gap + 20 max(0, Eform + 0.2)
    "band_gap_regularized": "eV",
    "density": "g/cm^3",
}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def cif_name(row: StructureView, relaxed: bool = False) -> str:
    rank = f"{row.rank:05d}" if row.rank is not None else f"u{row.seq:05d}"
    suffix = "_relaxed" if relaxed else ""
    return f"cifs/{rank}_{_safe(row.formula)}_{row.id[:8]}{suffix}.cif"


# Provenance columns: header -> how to read it from a structure's meta (methods name things
# differently: substitution's reference, cliqueflowmer's seed material, smoacs' template).
def _substitutions(meta: dict[str, Any]) -> str:
    subs = meta.get("substitutions") or {}
    return "; ".join(f"{old}->{new}" for old, new in subs.items() if old != new)


def _template(meta: dict[str, Any]) -> str:
    if meta.get("template_formula"):
        return str(meta["template_formula"])
    if meta.get("supercell"):
        n = meta["supercell"]
        return f"perovskite {n}x{n}x{n}"
    return str(meta.get("template", ""))


def _joined(key: str) -> Callable[[dict[str, Any]], str]:
    return lambda meta: "; ".join(map(str, meta.get(key) or []))


def _first(*keys: str) -> Callable[[dict[str, Any]], str]:
    def read(meta: dict[str, Any]) -> str:
        for key in keys:
            if meta.get(key) is not None:
                return str(meta[key])
        return ""

    return read


_META_COLUMNS: dict[str, Callable[[dict[str, Any]], str]] = {
    "reference_material": _first("reference", "seed_material_id"),
    "reference_formula": _first("reference_formula"),
    "substitutions": _substitutions,
    "template": _template,
    "seed_index": _first("seed_index", "index"),
    "space_group_condition": _first("space_group_condition"),
    "formula_units": _first("formula_units"),
    "violations": _joined("violations"),
    "invalid_reason": _first("invalid_reason"),
    "relax_error": _first("relax_error"),
}


def structures_csv(rows: list[StructureView]) -> str:
    """One row per structure, one column per field, units in the header: scores by property
    (``band_gap (eV)``), the method's own predictions (``predicted band_gap (eV)``), flags
    (0/1) and provenance from the meta."""
    properties = sorted({sc.property for row in rows for sc in row.scores})
    predicted = sorted({p for row in rows for p in (row.predicted or {})})
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(
        [
            "id",
            "rank",
            "formula",
            "n_atoms",
            "space_group",
            *[_with_unit(p, _unit(rows, p)) for p in properties],
            *[_with_unit(f"predicted {p}", _unit(rows, p)) for p in predicted],
            "method_score",
            *_FLAG_COLUMNS,
            *_META_COLUMNS,
            "cif_file",
            "relaxed_cif_file",
        ]
    )
    for row in rows:
        scores = {sc.property: sc.value for sc in row.scores}
        if "energy_above_hull" in properties and "energy_above_hull" not in scores:
            scores["energy_above_hull"] = row.energy_above_hull
        meta = row.meta or {}
        w.writerow(
            [
                row.id,
                row.rank if row.rank is not None else "",
                row.formula,
                row.n_atoms,
                row.space_group if row.space_group is not None else "",
                *[_num(scores.get(p)) for p in properties],
                *[_num((row.predicted or {}).get(p)) for p in predicted],
                _num(row.method_score),
                *[int(bool(row.flags.get(f, False))) for f in _FLAG_COLUMNS],
                *[read(meta) for read in _META_COLUMNS.values()],
                cif_name(row),
                cif_name(row, relaxed=True) if row.relaxed_cif else "",
            ]
        )
    return out.getvalue()


def _with_unit(name: str, unit: str) -> str:
    return f"{name} ({unit})" if unit and unit != "dimensionless" else name


def _unit(rows: list[StructureView], prop: str) -> str:
    for row in rows:
        for sc in row.scores:
            if sc.property == prop:
                return sc.unit
    return _KNOWN_UNITS.get(prop, "")


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
