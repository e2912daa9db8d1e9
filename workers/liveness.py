"""Is the worker that holds a job still running it? For taking over a redelivered job at once.

A job's ``worker`` column is ``<celery node>/pid<process id>``. When a message comes back
while the job's heartbeat is still fresh, its owner is gone if

- it was this very process, and this process is not running the job any more (a previous
  execution ended on a database outage and the message was requeued);
- it was another process of this node (a prefork pool child killed by the OOM killer or
  kill -9) and that process id no longer exists;
- it was another node, and that node does not answer, or answers that it is not running a
  task for the job.

Otherwise the owner is alive and the duplicate message is dropped (the claim is atomic).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

# Claim tokens of the executions running in this process. An execution registers its token
# before it claims, so a concurrent duplicate never mistakes it for a dead one.
_ACTIVE: set[str] = set()
_LOCK = threading.Lock()


@contextmanager
def running(claim: str) -> Iterator[None]:
    """Marks the execution holding (or about to take) this claim token as alive here."""
    with _LOCK:
        _ACTIVE.add(claim)
    try:
        yield
    finally:
        with _LOCK:
            _ACTIVE.discard(claim)


def is_running_here(claim: str) -> bool:
    with _LOCK:
        return claim in _ACTIVE


def exit_if_terminating(exc: BaseException) -> None:
    """Exit, as a terminate signal asked, if this process got one while ``exc`` was raised.

    Celery cancels running tasks when its broker connection drops, by a terminate signal to
    the pool process; billiard's handler raises SystemExit wherever the job is, and a C
    extension may hand that on as another exception (psycopg's wait loop raised "TypeError:
    raise: exception class must be a subclass of BaseException" in CI). Such an error is the
    signal's, not the job's: the message must be redelivered and the job resumed, not failed.
    """
    import billiard.common

    if billiard.common._should_have_exited[0]:
        raise SystemExit(f"terminated by signal during {type(exc).__name__}: {exc}") from exc


def _split(worker: str) -> tuple[str, int | None]:
    node, sep, pid = worker.rpartition("/pid")
    if not sep or not pid.isdigit():
        return worker, None
    return node, int(pid)


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def owner_gone(owner: str | None, claim: str, job_id: str, me: str, ask_nodes: bool = True) -> bool:
    """Whether the worker ``owner`` (holding ``claim``) certainly no longer runs ``job_id``
    (see module doc)."""
    if not owner:
        return True
    node, pid = _split(owner)
    my_node, my_pid = _split(me)
    if pid is None:
        return False
    if node == my_node:
        if pid == my_pid:
            return not is_running_here(claim)
        return not _pid_exists(pid)
    if not ask_nodes:
        return False
    return _node_not_running(node, job_id)


def _node_not_running(node: str, job_id: str) -> bool:
    from workers.celery_app import celery_app

    try:
        replies = celery_app.control.inspect(destination=[node], timeout=1.0).active()
    except Exception:  # broker trouble: cannot tell, so leave it to the sweeper
        log.exception("could not ask worker %s about job %s", node, job_id)
        return False
    if not replies or node not in replies:
        return True
    return not any(job_id in str(task.get("args")) for task in replies[node] or [])
