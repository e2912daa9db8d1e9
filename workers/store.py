"""Storing a job's scored candidates, batch by batch, idempotently.

Each batch is one transaction together with the lease check: a crash loses at most the batch
in flight. Rows are keyed by (job, fingerprint), so a job re-run after its worker died skips
what the previous attempt already stored instead of duplicating it.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.orm import selectinload

from app.db import Database, utcnow
from app.models import OracleScore, Structure
from ml.crystal import Crystal
from ml.pipeline import OracleScore as PipelineScore
from ml.pipeline import ScoredCandidate
from workers.lease import JobLease


def finite(v: float | None) -> float | None:
    """NaN and infinities become None (JSON and SQL NULL)."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def clean_json(obj: Any) -> Any:
    """A JSON-safe copy: numpy scalars to Python, non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return clean_json(obj.tolist())
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return finite(float(obj))
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def crystal_to_json(c: Crystal) -> dict[str, Any]:
    return {
        "lattice": c.lattice.tolist(),
        "frac_coords": c.frac_coords.tolist(),
        "numbers": c.numbers.tolist(),
    }


def crystal_from_json(d: dict[str, Any]) -> Crystal:
    return Crystal(np.array(d["lattice"]), np.array(d["frac_coords"]), np.array(d["numbers"]))


def fallback_fingerprint(c: Crystal) -> str:
    """Content hash of a crystal, used only if the pipeline left the fingerprint empty."""
    h = hashlib.sha256()
    h.update(np.round(c.lattice, 6).tobytes())
    h.update(np.round(np.mod(c.frac_coords, 1.0), 6).tobytes())
    h.update(c.numbers.tobytes())
    return h.hexdigest()


class StructureStore:
    def __init__(self, db: Database, job_id: str, lease: JobLease) -> None:
        self.db = db
        self.job_id = job_id
        self.lease = lease

    def count(self) -> int:
        with self.db.session() as s:
            return int(s.scalar(select(func.count()).where(Structure.job_id == self.job_id)) or 0)

    def fingerprints(self) -> set[str]:
        with self.db.session() as s:
            return set(
                s.scalars(select(Structure.fingerprint).where(Structure.job_id == self.job_id))
            )

    def crystals(self) -> list[Crystal]:
        """Final crystals (relaxed when relaxed) already kept for this job, by an earlier
        batch or an earlier attempt."""
        with self.db.session() as s:
            rows = s.execute(
                select(Structure.crystal, Structure.relaxed)
                .where(Structure.job_id == self.job_id)
                .order_by(Structure.seq)
            )
            return [crystal_from_json(relaxed or crystal) for crystal, relaxed in rows]

    def add(
        self,
        scored: Sequence[ScoredCandidate],
        progress: dict[str, Any],
        seqs: Sequence[int] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Store the batch's new candidates and the job's progress in one transaction;
        returns how many rows were new and the progress written (with ``stored``).

        ``seqs``: each candidate's place in the job (a shard's candidates keep the place
        they have in the method's stream; shards insert concurrently); default: appended."""
        with self.db.session() as s:
            # Lease first: a worker that lost the job writes nothing.
            self.lease.write_in(s)
            fps = [sc.fingerprint or fallback_fingerprint(sc.crystal) for sc in scored]
            existing = set(
                s.scalars(
                    select(Structure.fingerprint).where(
                        Structure.job_id == self.job_id, Structure.fingerprint.in_(fps)
                    )
                )
            )
            seq = int(
                s.scalar(select(func.max(Structure.seq)).where(Structure.job_id == self.job_id))
                or 0
            )
            now = utcnow()
            new = 0
            for k, (sc, fp) in enumerate(zip(scored, fps, strict=True)):
                if fp in existing:
                    continue
                existing.add(fp)
                seq = seqs[k] if seqs is not None else seq + 1
                new += 1
                s.add(self._row(sc, fp, seq, now))
            if seqs is not None:
                s.flush()
                seq = int(
                    s.scalar(select(func.count()).where(Structure.job_id == self.job_id)) or 0
                )
            # Keep the stored count in the progress the API shows.
            progress = {**progress, "stored": seq}
            self.lease.write_in(s, progress=progress)
        return new, progress

    def _row(self, sc: ScoredCandidate, fp: str, seq: int, now: Any) -> Structure:
        row = Structure(
            id=str(uuid.uuid4()),
            job_id=self.job_id,
            seq=seq,
            fingerprint=fp,
            rank=sc.rank,
            formula=sc.formula,
            n_atoms=int(sc.n_atoms),
            space_group=int(sc.space_group) if sc.space_group is not None else None,
            cif=sc.crystal.to_cif(),
            relaxed_cif=sc.relaxed.to_cif() if sc.relaxed is not None else None,
            crystal=crystal_to_json(sc.crystal),
            relaxed=crystal_to_json(sc.relaxed) if sc.relaxed is not None else None,
            method_score=finite(sc.method_score),
            objective_loss=finite(sc.objective_loss),
            energy_above_hull=finite(sc.energy_above_hull),
            flags={k: bool(v) for k, v in sc.flags.items()},
            hit=bool(sc.flags.get("hit", False)),
            predicted=clean_json(sc.predicted),
            meta=clean_json(sc.meta),
            created_at=now,
        )
        row.scores = [
            OracleScore(
                property=prop,
                oracle=score.oracle,
                version=score.version,
                value=finite(score.value),
                unit=score.unit,
            )
            for prop, score in sc.scores.items()
        ]
        return row

    # --- the whole job, for the final ranking ---------------------------------------------
    def load_scored(self) -> tuple[list[ScoredCandidate], list[str]]:
        """Every stored candidate of the job as pipeline objects, with the row ids."""
        with self.db.session() as s:
            rows = list(
                s.scalars(
                    select(Structure)
                    .where(Structure.job_id == self.job_id)
                    .options(selectinload(Structure.scores))
                    .order_by(Structure.seq)
                )
            )
        scored = [
            ScoredCandidate(
                crystal=crystal_from_json(r.crystal),
                relaxed=crystal_from_json(r.relaxed) if r.relaxed else None,
                formula=r.formula,
                n_atoms=r.n_atoms,
                space_group=r.space_group,
                scores={
                    sc.property: PipelineScore(sc.value, sc.unit, sc.oracle, sc.version)
                    for sc in r.scores
                },
                flags=dict(r.flags),
                energy_above_hull=r.energy_above_hull,
                method_score=r.method_score,
                predicted={k: v for k, v in r.predicted.items() if v is not None},
                objective_loss=r.objective_loss if r.objective_loss is not None else math.inf,
                rank=r.rank,
                fingerprint=r.fingerprint,
                meta=dict(r.meta),
            )
            for r in rows
        ]
        return scored, [r.id for r in rows]

    def write_unique(self, unique: dict[str, bool]) -> None:
        """Set the ``unique`` flag of the rows in ``unique`` (row id -> flag), under the lease."""
        with self.db.session() as s:
            self.lease.write_in(s)
            for row in s.scalars(select(Structure).where(Structure.id.in_(list(unique)))):
                row.flags = {**row.flags, "unique": unique[row.id]}

    def write_ranks(
        self,
        ranks: dict[str, int | None],
        hits: dict[str, bool] | None = None,
        **job_values: Any,
    ) -> None:
        """Set every row's rank, the ``hit`` of the rows in ``hits`` (judged over the whole
        job), and finish the job row, in one transaction."""
        with self.db.session() as s:
            self.lease.write_in(s)
            if ranks:
                s.execute(
                    update(Structure),
                    [{"id": sid, "rank": rank} for sid, rank in ranks.items()],
                )
            if hits:
                for row in s.scalars(select(Structure).where(Structure.id.in_(list(hits)))):
                    row.hit = hits[row.id]
                    row.flags = {**row.flags, "hit": hits[row.id]}
            if job_values:
                self.lease.write_in(s, **job_values)
