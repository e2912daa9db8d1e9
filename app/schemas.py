"""Response and request bodies of the HTTP API (the design request itself is
``ml.request.DesignRequest``). These models are what ``/openapi.json`` describes; every field
carries a description (with its unit where it has one)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelling", "cancelled"]


class JobProgress(BaseModel):
    phase: str = Field(
        description="What the job is doing: queued, starting, the method's own phases (e.g. "
        "load, generate, substituting), relaxing (CHGNet relaxation of a batch), evaluating "
        "(scoring and storing it), ranking, done, cancelled."
    )
    step: int = Field(
        description="Steps of the phase done (count; for evaluating: candidates stored)."
    )
    total: int = Field(
        description="Steps of the phase in all (count; for evaluating: num_candidates)."
    )
    best: float | None = Field(
        default=None, description="Lowest objective loss so far (unitless; 0: all met)."
    )
    stored: int | None = Field(default=None, description="Structures stored so far (count).")
    shards: dict[str, int] | None = Field(
        default=None,
        description="Sharded jobs only: shard tasks in all (total) and by state (queued, "
        "running, done, cancelled, failed).",
    )
    detail: dict[str, Any] | None = Field(
        default=None,
        description="The method's own latest figures, when it reports any (e.g. matinvent: "
        "iteration, mean reward, hits and oracle calls so far).",
    )


class JobOut(BaseModel):
    id: str = Field(description="Job id (UUID).")
    status: JobStatus = Field(
        description="queued -> running -> succeeded | failed; cancelling -> cancelled."
    )
    method: str = Field(description="Design method of the request.")
    label: str | None = Field(default=None, description="The request's label, if it gave one.")
    objectives: str = Field(
        default="",
        description="The request's objectives in short, e.g. "
        "'band_gap = 1.5 ± 0.5 eV; formation_energy < -0.5 eV/atom'.",
    )
    request: dict[str, Any] = Field(
        description="The stored design request, with the server's defaults filled in "
        "(relax, num_candidates, target tolerances)."
    )
    progress: JobProgress | None = Field(description="Latest progress report.")
    created_at: datetime = Field(description="Submission time (UTC, ISO 8601).")
    started_at: datetime | None = Field(description="When a worker first started it (UTC).")
    finished_at: datetime | None = Field(description="When it reached a final state (UTC).")
    error: str | None = Field(description="Why it failed (failed jobs only).")
    summary: dict[str, Any] | None = Field(
        description="When finished: counts and rates (n_candidates, n_valid, n_hits, "
        "hit_rate, sun_rate, ...), best value per objective, timings (s), seed and versions; "
        "method_summary: the method's own figures about its run, when it reports any (e.g. "
        "matinvent: oracle calls, unique hits, burden, reward curves)."
    )
    attempts: int = Field(
        description="How often a worker started this job (count; >1 after a crash)."
    )


class JobPage(BaseModel):
    items: list[JobOut] = Field(description="Jobs, newest first.")
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null: last.")


class ScoreOut(BaseModel):
    value: float | None = Field(
        description="Predicted value in `unit` (eV, eV/atom, g/cm^3 or unitless); null: not "
        "scorable."
    )
    unit: str = Field(description="Unit of the value (eV, eV/atom, g/cm^3, dimensionless).")
    oracle: str = Field(description="Oracle that predicted it (GET /v1/oracles).")
    version: str = Field(description="Model, checkpoint and fidelity of the oracle.")
    note: str | None = Field(
        default=None,
        description="Caveat a scientist needs to read the value (e.g. on non-PBE band gaps).",
    )


class Flags(BaseModel):
    """What a structure is, by the common evaluation (docs: evaluation.md)."""

    model_config = ConfigDict(extra="allow")

    valid: bool = Field(
        default=False,
        description="Structurally valid: 1-200 atoms of elements H-Pu, finite numbers, cell "
        "volume >= 0.1 Å^3, lengths 0.5-100 Å, angles 10-170 degrees, no two atoms closer "
        "than 0.5 Å (invalid structures have every other flag false and no scores).",
    )
    charge_neutral: bool = Field(
        default=False,
        description="Some assignment of ICSD oxidation states sums to zero (all-metal "
        "compositions pass too when the request does not ask for neutrality).",
    )
    unique: bool = Field(
        default=False,
        description="No structure stored before it in this job matches it (pymatgen "
        "StructureMatcher).",
    )
    novel: bool = Field(
        default=False,
        description="No structure of the reference set (every data set under "
        "MATDESIGN_DATA_DIR: MP-20, MP-2018, Perov-5) matches it.",
    )
    stable: bool = Field(
        default=False,
        description="energy_above_hull <= 0 eV/atom (CHGNet energy against the reference hull).",
    )
    metastable: bool = Field(default=False, description="energy_above_hull <= 0.1 eV/atom.")
    hit: bool = Field(
        default=False,
        description="Valid, meets every constraint and every objective of the request.",
    )
    constraints: bool = Field(
        default=False,
        description="Meets every constraint of the request (meta.violations names the ones "
        "it breaks).",
    )


class StructureOut(BaseModel):
    id: str = Field(description="Structure id (UUID).")
    job_id: str = Field(description="Job that made it.")
    rank: int | None = Field(
        description="Position in the job's ranking (1-based, 1 = best): valid, then hits, "
        "then constraints met, then lowest objective "
        "loss, then method score; null while the job runs."
    )
    formula: str = Field(description="Reduced formula.")
    n_atoms: int = Field(description="Atoms in the cell (atoms).")
    space_group: int | None = Field(
        description="International number by spglib at symprec 0.1 Å (of the relaxed "
        "structure when relaxed); null: none found."
    )
    cif: str = Field(description="CIF of the structure the method proposed.")
    relaxed_cif: str | None = Field(description="CIF after CHGNet relaxation (relax: true).")
    scores: dict[str, ScoreOut] = Field(
        description="Oracle predictions by property: formation_energy (eV/atom), band_gap "
        "(eV), density (g/cm^3), energy_above_hull (eV/atom), and any objective property."
    )
    flags: Flags = Field(description="Evaluation flags (see Flags).")
    energy_above_hull: float | None = Field(
        description="CHGNet energy above the reference convex hull (eV/atom)."
    )
    method_score: float | None = Field(
        description="The method's own score, lower is better (unitless; per method: e.g. "
        "substitution's -log10 probability)."
    )
    predicted: dict[str, float | None] = Field(
        description="The method's own predictions or targets by property (oracle units)."
    )
    meta: dict[str, Any] = Field(
        description="Provenance: e.g. reference, reference_formula, substitutions "
        "(substitution); template, seed_index (smoacs, cliqueflowmer); composition, "
        "formula_units, space_group_condition (conditional); violations, invalid_reason."
    )


class StructurePage(BaseModel):
    items: list[StructureOut] = Field(description="Structures in the requested order.")
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null: last.")


class MethodOut(BaseModel):
    name: str = Field(description="Name to put in a request's method.")
    version: str = Field(description="Version of the method's code.")
    description: str = Field(description="What the method does.")
    params_schema: dict[str, Any] = Field(
        description="JSON Schema of the method's params (with descriptions and bounds)."
    )
    defaults: dict[str, Any] = Field(description="Value of every param when left out.")
    models: dict[str, Any] = Field(
        default_factory=dict, description="Checkpoints the method uses, with provenance."
    )


class OracleOut(BaseModel):
    name: str = Field(description="Oracle name (POST /v1/score's oracles).")
    property: str = Field(description="Property it predicts.")
    unit: str = Field(description="Unit of its values.")
    model: str = Field(description="Model or formula behind it.")
    version: str = Field(description="Checkpoint, library version and fidelity.")
    reported_error: str | None = Field(description="Measured error, where measured.")
    description: str = Field(description="What it predicts and how.")
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
    index: int = Field(description="Position of the CIF in the request's cifs (0-based).")
    formula: str = Field(description="Reduced formula.")
    n_atoms: int = Field(description="Atoms in the cell (atoms).")
    scores: dict[str, ScoreOut] = Field(description="Predictions by oracle name.")


class ScoreResponse(BaseModel):
    items: list[ScoredCif] = Field(description="One entry per CIF, in request order.")


class ErrorItem(BaseModel):
    field: str = Field(description="Dotted path of the offending field, e.g. body.num_candidates")
    loc: list[str | int] = Field(description="The same path as a list.")
    msg: str = Field(description="What is wrong, in words.")
    type: str = Field(description="Machine-readable error type (pydantic's).")


class ValidationErrorOut(BaseModel):
    detail: list[ErrorItem] = Field(description="One entry per invalid field.")


class MessageOut(BaseModel):
    detail: str = Field(description="What went wrong, in words.")


class HealthOut(BaseModel):
    status: str = Field(description="ok (healthz); ready or not ready (readyz).")
    checks: dict[str, Any] = Field(
        default_factory=dict,
        description="Per dependency: ok (bool) and detail (database, broker, workers, "
        "models_data).",
    )
