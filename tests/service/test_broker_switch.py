"""A process that configures the Celery app for a second broker sends to that broker.

Issue 19's intermittent Redis-restart fault: the test process had sent jobs to the shared
Redis (Postgres fault tests), then configured the app for a private Redis. ``Celery.close()``
reset only the connection pool; the producer pool stayed on the first broker, so the API's
sends and all its sweeper's re-sends went, without error, to a Redis no worker of that queue
read. Only the worker's own sweeper delivered jobs, when it won the race for the re-send.
"""

from __future__ import annotations

import uuid

import pytest
import redis

from app.settings import Settings
from workers.queues import CeleryQueue

from .conftest import REQUIRE_SERVICES
from .servers import PrivateRedis

pytestmark = pytest.mark.integration


def test_sends_go_to_the_broker_configured_last(integration_settings: Settings) -> None:
    first = integration_settings.model_copy(
        update={"queue_name": f"{integration_settings.queue_name}-first"}
    )
    shared = redis.Redis.from_url(first.broker_url)
    CeleryQueue(first).enqueue(str(uuid.uuid4()))  # creates the producer pool on broker 1
    try:
        other = PrivateRedis()
        other.start()
    except Exception as exc:
        if REQUIRE_SERVICES:
            raise
        pytest.skip(f"no private Redis: {exc}")
    try:
        second = first.model_copy(
            update={"broker_url": other.url, "queue_name": f"{first.queue_name}-second"}
        )
        queue = CeleryQueue(second)
        queue.enqueue(str(uuid.uuid4()))
        queue.resend(str(uuid.uuid4()))
        private = redis.Redis.from_url(other.url)
        assert private.llen(second.queue_name) == 2
        assert shared.llen(second.queue_name) == 0
    finally:
        shared.delete(first.queue_name, f"{first.queue_name}-second")
        other.stop()
        CeleryQueue(integration_settings)  # back to the session's broker for later tests
