"""API keys: random tokens handed out once, stored only as SHA-256 hashes.

A key sees only its own jobs. Without ``require_api_key`` a request without a key acts as the
single anonymous user (the embedded, single-user default); a wrong key is always refused.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader
from sqlalchemy import select

from app.db import Database, utcnow
from app.models import ANONYMOUS, ApiKey

KEY_PREFIX = "mdk_"
# Validated keys are remembered briefly so that each request does not cost a query;
# a revoked key therefore stops working within this many seconds.
_CACHE_TTL_S = 30.0


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(db: Database, name: str) -> tuple[ApiKey, str]:
    """A new key: the row and the plain key, which is shown once and never stored."""
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        id=str(uuid.uuid4()),
        name=name,
        prefix=plain[:10],
        key_hash=hash_key(plain),
        created_at=utcnow(),
    )
    with db.session() as s:
        s.add(row)
    return row, plain


@dataclass
class _Cached:
    owner: str | None
    name: str | None
    expires: float


class KeyResolver:
    """Maps an ``X-API-Key`` header to the owner id of the jobs it may see."""

    def __init__(self, db: Database, require_key: bool, admin_names: Sequence[str] = ()) -> None:
        self.db = db
        self.require_key = require_key
        self.admin_names = frozenset(admin_names)
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()

    def owner_for(self, key: str | None) -> str:
        if not key:
            if self.require_key:
                raise HTTPException(401, "missing X-API-Key header")
            return ANONYMOUS
        hit = self._lookup(key)
        if hit.owner is None:
            raise HTTPException(401, "invalid API key")
        return hit.owner

    def is_admin(self, key: str | None) -> bool:
        """A valid key whose name is in ``MATDESIGN_ADMIN_KEYS``."""
        if not key or not self.admin_names:
            return False
        hit = self._lookup(key)
        return hit.owner is not None and hit.name in self.admin_names

    def _lookup(self, key: str) -> _Cached:
        digest = hash_key(key)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(digest)
        if hit is None or hit.expires < now:
            with self.db.session() as s:
                row = s.scalars(
                    select(ApiKey).where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None))
                ).first()
            hit = _Cached(row.id if row else None, row.name if row else None, now + _CACHE_TTL_S)
            with self._lock:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[digest] = hit
        return hit


_API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False)


def current_owner(request: Request, key: str | None = Security(_API_KEY_HEADER)) -> str:
    """FastAPI dependency: the owner id of the calling key (or the anonymous user)."""
    resolver: KeyResolver = request.app.state.keys
    return resolver.owner_for(key)
