"""Per-key request rate limits (429 + Retry-After) with the ``limits`` library.

Counters live in Redis (the broker's, by default), so every API replica shares them; a
fixed window per key, or per client address for requests without a key. Off on the
single-user embedded default. When Redis cannot be reached the limit is not enforced (the
request goes through and a warning is logged): rate limiting protects the service, it must
not take it down with the broker.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time

from anyio import to_thread
from limits import RateLimitItem, parse_many
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter
from starlette.types import ASGIApp, Receive, Scope, Send

from app.settings import Settings

log = logging.getLogger(__name__)

# Probes are never throttled: an orchestrator must always see the real state.
EXEMPT_PATHS = frozenset({"/healthz", "/readyz"})


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.items: list[RateLimitItem] = parse_many(settings.rate_limit)
        uri = settings.limits_storage
        options: dict[str, str | float | bool] = {}
        if uri.startswith("redis"):
            # The key prefix keeps deployments sharing one Redis (and test sessions) apart.
            options = {
                "key_prefix": f"matdesign-limits-{settings.queue_name}",
                "socket_connect_timeout": 1.0,
                "socket_timeout": 1.0,
            }
        self.limiter = FixedWindowRateLimiter(storage_from_string(uri, **options))
        self._warned = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        who = _identity(scope)
        try:
            # The sync client in a worker thread: a slow Redis never stalls the event loop,
            # and it does not depend on the loop it was created on.
            retry_after = await to_thread.run_sync(self._over_limit, who)
        except Exception as exc:  # storage down: fail open (see module doc)
            now = time.monotonic()
            if now - self._warned > 60:
                log.warning("rate limit storage unreachable, not enforcing: %s", exc)
                self._warned = now
            retry_after = None
        if retry_after is None:
            await self.app(scope, receive, send)
            return
        body = json.dumps({"detail": "rate limit exceeded; retry later"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(retry_after).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _over_limit(self, who: str) -> int | None:
        """None when allowed; else the seconds until the exhausted window resets."""
        for item in self.items:
            if not self.limiter.hit(item, who):
                stats = self.limiter.get_window_stats(item, who)
                return max(1, math.ceil(stats.reset_time - time.time()))
        return None


def _identity(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"x-api-key" and value:
            return "key:" + hashlib.sha256(value).hexdigest()[:32]
    client = scope.get("client")
    return f"addr:{client[0] if client else 'unknown'}"
