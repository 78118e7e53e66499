"""Fixtures shared by the unit tests (no services: nothing here talks to Kafka or Redis)."""
from __future__ import annotations

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


@pytest.fixture
def offline() -> redis.Redis:
    """A client for a port nothing listens on: any command it actually sent would fail."""
    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.ConnectionError):
        client.ping()
    return client
