"""Jobs and structures as the API sees them: submit, read, list, cancel (no HTTP here)."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Select, and_, delete, func, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import Database, utcnow
from app.errors import Conflict, FieldError, NotFound, TooMany, loc_from_dotted
from app.hygiene import unstorable_text
from app.models import (
    CANCELLED,
    CANCELLING,
    FINISHED_STATES,
    QUEUED,
    RUNNING,
    Job,
    OracleScore,
    Structure,
)
from app.settings import Settings
from ml.methods.base import RequestError
from ml.methods.registry import get_method, method_names
from ml.request import DesignRequest, request_hash

# Sort key of a structure that has no rank yet (job still running): after every ranked one.
_UNRANKED = 2**31 - 1
# Retry-After of a quota refusal: jobs take minutes, so asking again sooner is pointless.
QUOTA_RETRY_AFTER_S = 30
_ACTIVE = (QUEUED, RUNNING, CANCELLING)


def with_server_defaults(request: DesignRequest, settings: Settings) -> DesignRequest:
    """The request with this server's defaults for the fields it left out (``relax``,
    ``num_candidates``, ``oversample``), so the stored request says what the job ran with."""
    update: dict[str, Any] = {}
    if "relax" not in request.model_fields_set:
        update["relax"] = settings.relax_default
    if "num_candidates" not in request.model_fields_set:
        update["num_candidates"] = settings.num_candidates_default
    if "oversample" not in request.model_fields_set:
        n = update.get("num_candidates", request.num_candidates)
        update["oversample"] = settings.oversample_default(n)
    if not update:
        return request
    # Re-validated rather than model_copy(update=...), so the copy is checked like the input.
    return DesignRequest.model_validate({**request.model_dump(), **update})


def validate_design(request: DesignRequest, settings: Settings) -> DesignRequest:
    """Checks beyond the request schema: method, its params, and this server's limits.
    Returns the request with the server's defaults filled in (:func:`with_server_defaults`)."""
    request = with_server_defaults(request, settings)
    if request.num_candidates > settings.max_candidates:
        raise FieldError(
            ["body", "num_candidates"],
            f"at most {settings.max_candidates} candidates per job on this server",
        )
    if request.constraints.max_atoms > settings.max_atoms:
        raise FieldError(
            ["body", "constraints", "max_atoms"], f"at most {settings.max_atoms} on this server"
        )
    names = method_names()
    if request.method not in names:
        raise FieldError(["body", "method"], f"unknown method {request.method!r}; known: {names}")
    method = get_method(request.method)
    try:
        method.validate(request)
    except ValidationError as exc:
        raise FieldError.from_validation(exc, ["body", "params"]) from exc
    except RequestError as exc:
        raise FieldError(loc_from_dotted(exc.field), exc.message) from exc
    return request


def check_quota(db: Database, owner: str, request: DesignRequest, settings: Settings) -> None:
    """429 when the key already has too many queued/running jobs or candidates.

    A soft limit: two submits racing may both pass; it bounds a key's backlog, not exactly.
    """
    with db.session() as s:
        n_jobs, n_candidates = s.execute(
            select(
                func.count(),
                func.coalesce(func.sum(Job.request["num_candidates"].as_integer()), 0),
            ).where(Job.owner == owner, Job.status.in_(_ACTIVE))
        ).one()
    if n_jobs + 1 > settings.quota_active_jobs:
        raise TooMany(
            f"quota: at most {settings.quota_active_jobs} queued or running jobs per key",
            QUOTA_RETRY_AFTER_S,
        )
    if n_candidates + request.num_candidates > settings.quota_active_candidates:
        raise TooMany(
            f"quota: at most {settings.quota_active_candidates} candidates in queued or "
            f"running jobs per key ({n_candidates} now)",
            QUOTA_RETRY_AFTER_S,
        )


_IN_FLIGHT: set[tuple[str, str]] = set()
_IN_FLIGHT_LOCK = threading.Lock()


@contextmanager
def idempotency_guard(db: Database, owner: str, key: str | None) -> Iterator[None]:
    """Held while a request with this Idempotency-Key is processed; a concurrent duplicate is
    a :class:`Conflict` (409, IETF idempotency-key draft). Postgres: an advisory lock, so it
    holds across API replicas; SQLite (one embedded process): a lock in this process."""
    if key is None:
        yield
        return
    if db.is_sqlite:
        with _IN_FLIGHT_LOCK:
            if (owner, key) in _IN_FLIGHT:
                raise Conflict("a request with this Idempotency-Key is still being processed")
            _IN_FLIGHT.add((owner, key))
        try:
            yield
        finally:
            with _IN_FLIGHT_LOCK:
                _IN_FLIGHT.discard((owner, key))
        return
    digest = hashlib.sha256(f"{owner}\x00{key}".encode()).digest()
    lock_id = int.from_bytes(digest[:8], "big", signed=True)
    with db.engine.connect() as conn:
        got = conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": lock_id})
        conn.commit()
        if not got:
            raise Conflict("a request with this Idempotency-Key is still being processed")
        try:
            yield
        finally:
            try:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock_id})
                conn.commit()
            except Exception:  # connection gone: the server released the lock with it
                conn.invalidate()


def submit_job(
    db: Database,
    owner: str,
    request: DesignRequest,
    idempotency_key: str | None,
    settings: Settings | None = None,
) -> tuple[Job, bool]:
    """Store a queued job; returns (job, created). The caller enqueues it after this commit.

    The same Idempotency-Key with the same body returns the earlier job (created False);
    with a different body it is a 409 :class:`Conflict` (docs/api.md). Keys expire after
    ``idempotency_key_ttl_s``; quotas are checked (``settings.limits_on``) for new jobs only.
    """
    digest = request_hash(request)
    if idempotency_key is not None:
        if settings is not None:
            _expire_key(db, owner, idempotency_key, settings.idempotency_key_ttl_s)
        earlier = _by_idempotency_key(db, owner, idempotency_key, digest)
        if earlier is not None:
            return earlier, False
    if settings is not None and settings.limits_on:
        check_quota(db, owner, request, settings)
    now = utcnow()
    job = Job(
        id=str(uuid.uuid4()),
        owner=owner,
        status=QUEUED,
        method=request.method,
        label=request.label,
        request=request.model_dump(mode="json"),
        request_hash=digest,
        idempotency_key=idempotency_key,
        progress={"phase": "queued", "step": 0, "total": request.num_candidates, "best": None},
        created_at=now,
        enqueued_at=now,
        enqueue_count=1,
        attempts=0,
    )
    try:
        with db.session() as s:
            s.add(job)
    except IntegrityError:
        # Two requests with the same key raced; the other one's job stands.
        if idempotency_key is None:
            raise
        earlier = _by_idempotency_key(db, owner, idempotency_key, digest)
        if earlier is None:
            raise
        return earlier, False
    return job, True


def _expire_key(db: Database, owner: str, key: str, ttl_s: float) -> None:
    """Forget the key on a job older than the TTL, so that it can name a new job."""
    cutoff = utcnow() - timedelta(seconds=ttl_s)
    with db.session() as s:
        s.execute(
            update(Job)
            .where(Job.owner == owner, Job.idempotency_key == key, Job.created_at < cutoff)
            .values(idempotency_key=None)
        )


def _by_idempotency_key(db: Database, owner: str, key: str, digest: str) -> Job | None:
    with db.session() as s:
        job = s.scalars(select(Job).where(Job.owner == owner, Job.idempotency_key == key)).first()
    if job is not None and job.request_hash != digest:
        raise Conflict(
            f"Idempotency-Key {key!r} was already used with a different request body (job {job.id})"
        )
    return job


@dataclass(frozen=True)
class JobState:
    status: str
    finished_at: datetime | None


def _job_state(s: Session, owner: str, job_id: str) -> JobState:
    row = s.execute(select(Job.owner, Job.status, Job.finished_at).where(Job.id == job_id)).first()
    if row is None or row.owner != owner:
        raise NotFound(f"no job {job_id}")
    return JobState(row.status, row.finished_at)


def job_state(db: Database, owner: str, job_id: str) -> JobState:
    """The job's status and end, without its request and summary (404 for another key)."""
    with db.session() as s:
        return _job_state(s, owner, job_id)


def get_job(db: Database, owner: str, job_id: str) -> Job:
    with db.session() as s:
        job = s.get(Job, job_id)
    if job is None or job.owner != owner:
        raise NotFound(f"no job {job_id}")
    return job


def purge_job(db: Database, owner: str, job_id: str) -> None:
    """Delete a finished job with its structures and their scores (its owner only)."""
    job = get_job(db, owner, job_id)
    if job.status not in FINISHED_STATES:
        raise Conflict(
            f"job {job_id} is {job.status}: cancel it first (DELETE without purge), "
            "then purge it once it is cancelled"
        )
    ids = select(Structure.id).where(Structure.job_id == job_id).scalar_subquery()
    with db.session() as s:
        # Explicit deletes: SQLite enforces ON DELETE CASCADE only with its pragma set.
        s.execute(delete(OracleScore).where(OracleScore.structure_id.in_(ids)))
        s.execute(delete(Structure).where(Structure.job_id == job_id))
        done = s.execute(
            delete(Job).where(Job.id == job_id, Job.owner == owner, Job.status.in_(FINISHED_STATES))
        ).rowcount
    if not done:  # restarted by the sweeper between the read and the delete
        raise Conflict(f"job {job_id} changed state; try again")


def cancel_job(db: Database, owner: str, job_id: str) -> Job:
    """Queued: cancelled at once. Running: ``cancelling`` until the worker stops."""
    get_job(db, owner, job_id)
    now = utcnow()
    with db.session() as s:
        done = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == QUEUED)
            .values(status=CANCELLED, finished_at=now)
        ).rowcount
        if not done:
            s.execute(
                update(Job).where(Job.id == job_id, Job.status == RUNNING).values(status=CANCELLING)
            )
    job = get_job(db, owner, job_id)
    if job.status in FINISHED_STATES and job.status != CANCELLED:
        raise Conflict(f"job {job_id} already {job.status}")
    return job


# --- cursors ------------------------------------------------------------------------------


def encode_cursor(values: Sequence[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(values)).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, types: Sequence[type]) -> list[Any]:
    """The cursor's values, each of the given type (ints within a 32-bit row key), else 422."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, UnicodeDecodeError) as exc:
        raise FieldError(["query", "cursor"], "invalid cursor") from exc
    if not isinstance(values, list) or len(values) != len(types):
        raise FieldError(["query", "cursor"], "invalid cursor")
    for v, t in zip(values, types, strict=True):
        ok = type(v) is t  # bool is not an int here
        if ok and t is int:
            ok = 0 <= v <= _UNRANKED
        if ok and t is str:
            ok = len(v) <= 64 and not unstorable_text(v)
        if not ok:
            raise FieldError(["query", "cursor"], "invalid cursor")
    return values


def list_jobs(
    db: Database,
    owner: str,
    *,
    status: str | None,
    method: str | None,
    limit: int,
    cursor: str | None,
    label: str | None = None,
) -> tuple[list[Job], str | None]:
    """Newest first; keyset pagination on (created_at, id)."""
    q = select(Job).where(Job.owner == owner)
    if status:
        q = q.where(Job.status == status)
    if method:
        q = q.where(Job.method == method)
    if label:
        q = q.where(Job.label == label)
    if cursor:
        created_iso, last_id = decode_cursor(cursor, (str, str))
        try:
            created = datetime.fromisoformat(created_iso)
        except (TypeError, ValueError) as exc:
            raise FieldError(["query", "cursor"], "invalid cursor") from exc
        if created.tzinfo is None:
            raise FieldError(["query", "cursor"], "invalid cursor")
        q = q.where(
            or_(Job.created_at < created, and_(Job.created_at == created, Job.id < last_id))
        )
    q = q.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    with db.session() as s:
        jobs = list(s.scalars(q))
    next_cursor = None
    if len(jobs) > limit:
        jobs = jobs[:limit]
        last = jobs[-1]
        next_cursor = encode_cursor([last.created_at.isoformat(), last.id])
    return jobs, next_cursor


@dataclass
class ScoreView:
    property: str
    value: float | None
    unit: str
    oracle: str
    version: str


@dataclass
class StructureView:
    """What the API returns of a stored structure (read with Core queries: the hot read path
    skips ORM objects and the coordinate arrays kept for re-ranking)."""

    id: str
    job_id: str
    seq: int
    rank: int | None
    formula: str
    n_atoms: int
    space_group: int | None
    cif: str
    relaxed_cif: str | None
    flags: dict[str, bool]
    energy_above_hull: float | None
    method_score: float | None
    predicted: dict[str, Any]
    meta: dict[str, Any]
    scores: list[ScoreView] = field(default_factory=list)


_VIEW_COLUMNS = (
    Structure.id,
    Structure.job_id,
    Structure.seq,
    Structure.rank,
    Structure.formula,
    Structure.n_atoms,
    Structure.space_group,
    Structure.cif,
    Structure.relaxed_cif,
    Structure.flags,
    Structure.energy_above_hull,
    Structure.method_score,
    Structure.predicted,
    Structure.meta,
)


def _views(s: Session, q: Select[Any]) -> list[StructureView]:
    views = [StructureView(**row._asdict()) for row in s.execute(q)]
    if views:
        by_id = {v.id: v for v in views}
        scores = s.execute(
            select(
                OracleScore.structure_id,
                OracleScore.property,
                OracleScore.value,
                OracleScore.unit,
                OracleScore.oracle,
                OracleScore.version,
            )
            .where(OracleScore.structure_id.in_(list(by_id)))
            .order_by(OracleScore.structure_id, OracleScore.property)
        )
        for sid, *rest in scores:
            by_id[sid].scores.append(ScoreView(*rest))
    return views


def list_structures(
    db: Database,
    owner: str,
    job_id: str,
    *,
    sort: str,
    limit: int,
    cursor: str | None,
    hits_only: bool,
) -> tuple[list[StructureView], str | None]:
    """Best rank first (unranked, i.e. still running, in arrival order after), or arrival order
    (``sort=created``); keyset pagination on (rank, seq)."""
    rank_key = func.coalesce(Structure.rank, _UNRANKED)
    q = select(*_VIEW_COLUMNS).where(Structure.job_id == job_id)
    if hits_only:
        q = q.where(Structure.hit.is_(True))
    if sort == "rank":
        if cursor:
            last_rank, last_seq = decode_cursor(cursor, (int, int))
            q = q.where(
                or_(rank_key > last_rank, and_(rank_key == last_rank, Structure.seq > last_seq))
            )
        q = q.order_by(rank_key, Structure.seq)
    else:
        if cursor:
            (last_seq,) = decode_cursor(cursor, (int,))
            q = q.where(Structure.seq > last_seq)
        q = q.order_by(Structure.seq)
    with db.session() as s:  # one transaction: the owner's check and the page agree
        _job_state(s, owner, job_id)
        rows = _views(s, q.limit(limit + 1))
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        key = [last.rank if last.rank is not None else _UNRANKED, last.seq]
        next_cursor = encode_cursor(key if sort == "rank" else [last.seq])
    return rows, next_cursor


def all_structures(db: Database, job_id: str) -> list[StructureView]:
    q = (
        select(*_VIEW_COLUMNS)
        .where(Structure.job_id == job_id)
        .order_by(func.coalesce(Structure.rank, _UNRANKED), Structure.seq)
    )
    with db.session() as s:
        return _views(s, q)


def get_structure(db: Database, owner: str, structure_id: str) -> StructureView:
    q = (
        select(*_VIEW_COLUMNS)
        .join(Job, Job.id == Structure.job_id)
        .where(Structure.id == structure_id, Job.owner == owner)
    )
    with db.session() as s:
        rows = _views(s, q)
    if not rows:
        raise NotFound(f"no structure {structure_id}")
    return rows[0]


def job_counts(db: Database) -> dict[str, int]:
    with db.session() as s:
        return dict(s.execute(select(Job.status, func.count()).group_by(Job.status)).all())
