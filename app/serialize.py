"""Database rows to the JSON shapes of api.md."""

from __future__ import annotations

from typing import Any

from app.jobs import StructureView
from app.models import Job


def job_out(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "status": job.status,
        "method": job.method,
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
            }
            for sc in row.scores
        },
        "flags": row.flags,
        "energy_above_hull": row.energy_above_hull,
        "method_score": row.method_score,
        "predicted": row.predicted,
        "meta": row.meta,
    }
