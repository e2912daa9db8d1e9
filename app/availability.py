"""Which errors mean "a dependency is down" (answered 503 + Retry-After, retried by workers)
rather than a bug (500) or bad input (4xx)."""

from __future__ import annotations

from sqlalchemy import exc as sa_exc

# Connection refused or dropped, server shutting down, pool exhausted: all transient.
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
    sa_exc.DisconnectionError,
)


class Unavailable(Exception):
    """A dependency (``what``: "database" or "broker") cannot be reached right now."""

    def __init__(
        self, what: str, cause: BaseException | None = None, detail: str | None = None
    ) -> None:
        super().__init__(f"{what} unavailable: {cause}" if cause else f"{what} unavailable")
        self.what = what
        # What the client is told (the cause stays in the log).
        self.detail = detail or f"{what} temporarily unavailable; retry later"


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a connection-level database failure."""
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 8:
        if isinstance(cur, (Unavailable, *UNAVAILABLE_ERRORS)):
            return True
        if isinstance(cur, sa_exc.DBAPIError) and cur.connection_invalidated:
            return True
        cur = cur.__cause__
        seen += 1
    return False
