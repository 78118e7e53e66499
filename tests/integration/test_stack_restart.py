"""``stack up`` brings back one dead service without touching the other or anyone's data.

A private stack (its own run folder and ports, next to the session's) because these tests kill
its services; the session stack's pids must stay valid for every other test.
"""
from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
import redis
from kafka import KafkaAdminClient

from protoguard.deploy.stack import LocalStack, StackInfo, free_port
from protoguard.schemas.errors import StackError
from protoguard.schemas.settings import StackSettings
from protoguard.stream.clients import build_redis, ensure_topics

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    settings = StackSettings(run_dir=tmp_path_factory.mktemp("restart-stack"), kafka_port=free_port(),
                             controller_port=free_port(), redis_port=free_port(), start_timeout_s=120,
                             redis_maxmemory_mb=128)
    local = LocalStack(settings)
    local.up()
    try:
        yield local
    finally:
        local.down()


def _kill(pid: int) -> None:
    """SIGKILL, as a crash or the OOM killer would: no shutdown hook runs."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)  # reap it when this process started it
        except ChildProcessError:
            pass
        time.sleep(0.1)


def _topics(info: StackInfo) -> set[str]:
    admin = KafkaAdminClient(bootstrap_servers=info.bootstrap_servers, request_timeout_ms=10_000)
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


def _seed(info: StackInfo, tag: str) -> tuple[str, str]:
    key, topic = f"restart-key-{tag}", f"restart-topic-{tag}"
    client = build_redis(info.redis_url)
    client.set(key, b"kept")
    client.close()
    ensure_topics(info.bootstrap_servers, {topic: 2})
    return key, topic


def test_redis_runs_with_persistence_and_a_memory_bound(own_stack: LocalStack) -> None:
    info = own_stack.up()
    client = build_redis(info.redis_url)
    config = {**client.config_get("appendonly"), **client.config_get("appendfsync"),
              **client.config_get("maxmemory"), **client.config_get("maxmemory-policy"), **client.config_get("dir")}
    client.close()
    assert config["appendonly"] == "yes" and config["appendfsync"] == "everysec"
    assert int(config["maxmemory"]) == 128 * 1024 * 1024 and config["maxmemory-policy"] == "noeviction"
    assert config["dir"].startswith(str(own_stack.run_dir))


def test_up_on_a_running_stack_changes_nothing(own_stack: LocalStack) -> None:
    before = own_stack.up()
    again = own_stack.up()
    assert (again.kafka_pid, again.redis_pid) == (before.kafka_pid, before.redis_pid)
    with pytest.raises(StackError, match="refusing to wipe the data of running services"):
        own_stack.wipe()


def test_up_brings_back_a_killed_redis_with_its_data_and_leaves_the_broker_alone(own_stack: LocalStack) -> None:
    before = own_stack.up()
    key, topic = _seed(before, "redis")
    _kill(before.redis_pid)
    with pytest.raises(redis.ConnectionError):
        build_redis(before.redis_url).ping()

    after = own_stack.up()
    assert after.started == ("redis",)
    assert after.kafka_pid == before.kafka_pid and after.redis_pid != before.redis_pid
    client = build_redis(after.redis_url)
    assert client.get(key) == b"kept"
    client.close()
    assert topic in _topics(after)


def test_up_brings_back_a_killed_broker_with_its_topics_and_leaves_redis_alone(own_stack: LocalStack) -> None:
    before = own_stack.up()
    key, topic = _seed(before, "kafka")
    _kill(before.kafka_pid)

    after = own_stack.up()
    assert after.started == ("kafka",)
    assert after.redis_pid == before.redis_pid and after.kafka_pid != before.kafka_pid
    assert {topic, "restart-topic-redis"} <= _topics(after)  # also the earlier test's topic
    client = build_redis(after.redis_url)
    assert client.get(key) == b"kept"
    client.close()


def test_down_then_up_keeps_everything(own_stack: LocalStack) -> None:
    key, topic = _seed(own_stack.up(), "down")
    assert own_stack.down()
    after = own_stack.up()
    assert set(after.started) == {"kafka", "redis"}
    assert topic in _topics(after)
    client = build_redis(after.redis_url)
    assert client.get(key) == b"kept"
    client.close()
