"""Database rows to the JSON shapes of api.md."""

from __future__ import annotations

from typing import Any

from app.jobs import StructureView
from app.models import Job
from ml.oracles.registry import NON_PBE_GAP_CAVEAT, NON_PBE_GAP_ORACLES


def _number(v: Any) -> str:
    return f"{v:g}" if isinstance(v, int | float) else str(v)


def objective_text(objective: dict[str, Any]) -> str:
    """One objective in short, e.g. ``band_gap[hse] = 1.5 ± 0.2 eV``, ``min formation_energy``."""
    from ml.oracles.registry import ORACLE_INFOS, default_oracle_name

    prop = str(objective.get("property"))
    try:
        unit = ORACLE_INFOS[default_oracle_name(prop)].unit
    except KeyError:
        unit = "eV/atom" if prop == "energy_above_hull" else ""
    unit = "" if unit in ("", "dimensionless") else f" {unit}"
    name = prop + (f"[{objective['fidelity']}]" if objective.get("fidelity") else "")
    goal, value = objective.get("goal"), objective.get("value")
    if goal in ("minimize", "maximize"):
        return f"{goal[:3]} {name}"
    if goal == "target":
        tol = objective.get("tolerance")
        band = f" ± {_number(tol)}" if tol is not None else ""
        return f"{name} = {_number(value)}{band}{unit}"
    return f"{name} {'<' if goal == 'below' else '>'} {_number(value)}{unit}"


def objectives_text(request: dict[str, Any]) -> str:
    return "; ".join(objective_text(o) for o in request.get("objectives") or [])


def job_out(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "status": job.status,
        "method": job.method,
        "label": job.label,
        "objectives": objectives_text(job.request or {}),
        "request": job.request,
        "progress": job.progress,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "error": job.error,
        "summary": job.summary,
        "attempts": job.attempts,
    }


def structure_out(row: StructureView) -> dict[str, Any]:
    return {
        "id": row.id,
        "job_id": row.job_id,
        "rank": row.rank,
        "formula": row.formula,
        "n_atoms": row.n_atoms,
        "space_group": row.space_group,
        "cif": row.cif,
        "relaxed_cif": row.relaxed_cif,
        "scores": {
            sc.property: {
                "value": sc.value,
                "unit": sc.unit,
                "oracle": sc.oracle,
                "version": sc.version,
                "note": NON_PBE_GAP_CAVEAT if sc.oracle in NON_PBE_GAP_ORACLES else None,
            }
            for sc in row.scores
        },
        "flags": row.flags,
        "energy_above_hull": row.energy_above_hull,
        "method_score": row.method_score,
        "predicted": row.predicted,
        "meta": row.meta,
    }
