"""Response and request bodies of the HTTP API (the design request itself is
``ml.request.DesignRequest``). These models are what ``/openapi.json`` describes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelling", "cancelled"]


class JobProgress(BaseModel):
    phase: str
    step: int
    total: int
    best: float | None = Field(default=None, description="Lowest objective loss so far.")
    stored: int | None = Field(default=None, description="Structures stored so far.")


class JobOut(BaseModel):
    id: str
    status: JobStatus
    method: str
    request: dict[str, Any]
    progress: JobProgress | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    summary: dict[str, Any] | None
    attempts: int = Field(description="How often a worker started this job (>1 after a crash).")


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


class ScoreOut(BaseModel):
    value: float | None
    unit: str
    oracle: str
    version: str


class StructureOut(BaseModel):
    id: str
    job_id: str
    rank: int | None
    formula: str
    n_atoms: int
    space_group: int | None
    cif: str
    relaxed_cif: str | None
    scores: dict[str, ScoreOut]
    flags: dict[str, bool]
    energy_above_hull: float | None
    method_score: float | None
    predicted: dict[str, float | None]
    meta: dict[str, Any]


class StructurePage(BaseModel):
    items: list[StructureOut]
    next_cursor: str | None


class MethodOut(BaseModel):
    name: str
    version: str
    description: str
    params_schema: dict[str, Any]
    defaults: dict[str, Any]
    models: dict[str, Any] = Field(default_factory=dict)


class OracleOut(BaseModel):
    name: str
    property: str
    unit: str
    model: str
    version: str
    reported_error: str | None
    description: str
    default_for: list[str] = Field(
        default_factory=list, description="Properties (and fidelities) it scores by default."
    )


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cifs: list[str] = Field(min_length=1, description="CIF texts to score.")
    oracles: list[str] | None = Field(
        default=None,
        description="Oracle names (GET /v1/oracles); default: the default oracle of "
        "formation_energy, band_gap and density.",
    )


class ScoredCif(BaseModel):
    index: int
    formula: str
    n_atoms: int
    scores: dict[str, ScoreOut]


class ScoreResponse(BaseModel):
    items: list[ScoredCif]


class ErrorItem(BaseModel):
    field: str = Field(description="Dotted path of the offending field, e.g. body.num_candidates")
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorOut(BaseModel):
    detail: list[ErrorItem]


class MessageOut(BaseModel):
    detail: str


class HealthOut(BaseModel):
    status: str
    checks: dict[str, Any] = Field(default_factory=dict)
