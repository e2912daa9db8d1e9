"""The ``matdesign`` command: serve, worker, db upgrade, keys create, and client commands."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8000"


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app
    from app.settings import get_settings

    settings = get_settings()
    where = "embedded worker" if settings.embedded else f"broker {settings.broker_url}"
    print(f"matdesign: database {settings.database_url}, {where}", file=sys.stderr)
    if args.workers > 1:
        # Several API processes, each building its app from the environment.
        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=args.log_level,
        )
    else:
        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _worker(args: argparse.Namespace) -> int:
    from app.settings import get_settings
    from workers.celery_app import configure_celery

    settings = get_settings()
    if settings.embedded:
        print(
            "matdesign worker needs a broker: set MATDESIGN_BROKER_URL (e.g. "
            "redis://127.0.0.1:6379/0); on the embedded default `matdesign serve` runs jobs.",
            file=sys.stderr,
        )
        return 2
    app = configure_celery(settings)
    argv = [
        "worker",
        "--queues",
        settings.queue_name,
        "--concurrency",
        str(args.concurrency),
        "--pool",
        args.pool or settings.worker_pool,
        "--loglevel",
        args.log_level.upper(),
    ]
    if args.hostname:
        argv += ["--hostname", args.hostname]
    app.worker_main(argv)
    return 0


def _db(args: argparse.Namespace) -> int:
    from app.migrate import upgrade
    from app.settings import get_settings

    url = get_settings().database_url
    upgrade(url, args.revision)
    print(f"database at revision {args.revision}: {url.split('@')[-1]}")
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    from app.auth import create_key
    from app.db import Database
    from app.migrate import upgrade
    from app.settings import get_settings

    settings = get_settings()
    if settings.auto_migrate:
        upgrade(settings.database_url)
    db = Database(settings.database_url)
    try:
        row, plain = create_key(db, args.name)
    finally:
        db.dispose()
    print(plain)
    print(f"key {row.id} ({row.name}) created; the key is shown only once", file=sys.stderr)
    return 0


def _client(args: argparse.Namespace) -> Any:
    from app.client import Client

    return Client(args.url, api_key=args.api_key)


def _submit(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.request == "-" else Path(args.request).read_text()
    request = json.loads(text)
    if args.label is not None:
        request["label"] = args.label
    with _client(args) as c:
        job = c.submit(request, idempotency_key=args.idempotency_key)
        if args.wait:
            from app.cli_views import JobProgressBar

            print(f"job {job['id']} submitted", file=sys.stderr)
            bar = JobProgressBar(sys.stderr)
            try:
                job = c.follow(job["id"], on_event=bar, timeout=args.timeout)
            finally:
                bar.close()
    print(json.dumps(job, indent=2))
    return 0 if job["status"] != "failed" else 1


def _results(args: argparse.Namespace) -> int:
    from app.cli_views import results_table

    with _client(args) as c:
        items = list(c.structures(args.job_id, hits_only=args.hits_only))
    print(results_table(items[: args.limit] if args.limit else items))
    return 0


def _status(args: argparse.Namespace) -> int:
    with _client(args) as c:
        job = c.wait(args.job_id, timeout=args.timeout) if args.wait else c.job(args.job_id)
    print(json.dumps(job, indent=2))
    return 0


def _jobs(args: argparse.Namespace) -> int:
    from itertools import islice

    from app.cli_views import jobs_table

    filters = {"label": args.label, "status": args.status, "method": args.method}
    with _client(args) as c:
        jobs = list(islice(c.jobs(**filters), args.limit))
    print(jobs_table(jobs))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    with _client(args) as c:
        if args.purge:
            c.purge(args.job_id)
            print(f"job {args.job_id} and its structures deleted")
            return 0
        job = c.cancel(args.job_id)
    print(f"job {args.job_id} is {job['status']}")
    return 0


def _download(args: argparse.Namespace) -> int:
    from app.client import FINISHED

    out = args.output or f"matdesign-{args.job_id}.zip"
    with _client(args) as c:
        job = c.wait(args.job_id, timeout=args.timeout) if args.wait else c.job(args.job_id)
        if job["status"] not in FINISHED and not args.partial:
            progress = job.get("progress") or {}
            print(
                f"error: job {args.job_id} is {job['status']} (phase {progress.get('phase')}, "
                f"{progress.get('step')}/{progress.get('total')}): its archive would hold only "
                "what is stored so far. Use --wait to wait for it, or --partial to take that.",
                file=sys.stderr,
            )
            return 1
        if job["status"] in ("failed", "cancelled"):
            why = f": {job['error']}" if job.get("error") else ""
            print(f"note: job {args.job_id} {job['status']}{why}", file=sys.stderr)
        path = c.download_archive(args.job_id, out)
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="matdesign", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the HTTP API (with the embedded worker by default)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--workers", type=int, default=1, help="API processes (default 1)")
    s.add_argument("--log-level", default="info")
    s.set_defaults(func=_serve)

    w = sub.add_parser("worker", help="run a Celery worker on queue gpu (needs a broker)")
    w.add_argument("--concurrency", type=int, default=1)
    w.add_argument("--pool", default=None, help="prefork (default), solo or threads")
    w.add_argument("--hostname", default=None)
    w.add_argument("--log-level", default="info")
    w.set_defaults(func=_worker)

    d = sub.add_parser("db", help="database schema")
    dsub = d.add_subparsers(dest="db_command", required=True)
    up = dsub.add_parser("upgrade", help="migrate the database to the newest schema")
    up.add_argument("revision", nargs="?", default="head")
    up.set_defaults(func=_db)

    k = sub.add_parser("keys", help="API keys")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    kc = ksub.add_parser("create", help="create a key and print it (once)")
    kc.add_argument("--name", default="default")
    kc.set_defaults(func=_keys_create)

    def client_args(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--url", default=os.environ.get("MATDESIGN_URL", DEFAULT_URL))
        parser.add_argument("--api-key", default=os.environ.get("MATDESIGN_API_KEY"))
        parser.add_argument("--timeout", type=float, default=3600.0)
        parser.add_argument(
            "-v", "--verbose", action="store_true", help="log every HTTP request (httpx)"
        )

    sm = sub.add_parser("submit", help="submit a request (JSON file, or - for stdin)")
    sm.add_argument("request")
    sm.add_argument(
        "--wait", action="store_true", help="follow the job (progress bar) until it finished"
    )
    sm.add_argument("--idempotency-key", default=None)
    sm.add_argument("--label", default=None, help="label to find the job by (overrides the file's)")
    client_args(sm)
    sm.set_defaults(func=_submit)

    st = sub.add_parser("status", help="show a job")
    st.add_argument("job_id")
    st.add_argument("--wait", action="store_true")
    client_args(st)
    st.set_defaults(func=_status)

    js = sub.add_parser("jobs", help="list your jobs, newest first (label, objectives)")
    js.add_argument("--label", default=None, help="only jobs with exactly this label")
    js.add_argument("--status", default=None, help="only jobs in this state")
    js.add_argument("--method", default=None, help="only jobs of this method")
    js.add_argument("--limit", type=int, default=50, help="show at most N (default 50)")
    client_args(js)
    js.set_defaults(func=_jobs)

    cn = sub.add_parser("cancel", help="cancel a job, or with --purge delete a finished one")
    cn.add_argument("job_id")
    cn.add_argument(
        "--purge",
        action="store_true",
        help="delete the finished job and its structures for good instead",
    )
    client_args(cn)
    cn.set_defaults(func=_cancel)

    rs = sub.add_parser("results", help="print a job's structures as a ranked table")
    rs.add_argument("job_id")
    rs.add_argument("--hits-only", action="store_true")
    rs.add_argument("--limit", type=int, default=None, help="show the best N only")
    client_args(rs)
    rs.set_defaults(func=_results)

    dl = sub.add_parser("download", help="download a job's archive (zip)")
    dl.add_argument("job_id")
    dl.add_argument("-o", "--output", default=None)
    dl.add_argument("--wait", action="store_true", help="wait until the job has finished")
    dl.add_argument(
        "--partial", action="store_true", help="download an unfinished job's structures so far"
    )
    client_args(dl)
    dl.set_defaults(func=_download)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "verbose", False):
        # httpx logs every request at INFO: noise for someone reading a command's output.
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except Exception as exc:
        from app.client import ApiError

        if isinstance(exc, ApiError):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        message = _client_failure(args, exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 1


def _client_failure(args: argparse.Namespace, exc: Exception) -> str | None:
    """One line for a failure of a client command that is not a bug (server unreachable,
    timed out, unreadable request file); None for anything else."""
    import httpx

    url = getattr(args, "url", None)
    if isinstance(exc, httpx.TransportError) and url:
        reason = str(exc) or type(exc).__name__
        return f"cannot reach the server at {url} ({reason}); is `matdesign serve` running?"
    if isinstance(exc, TimeoutError):
        return str(exc)
    if isinstance(exc, OSError | json.JSONDecodeError) and url:
        return f"{type(exc).__name__}: {exc}"
    return None


if __name__ == "__main__":
    raise SystemExit(main())
