"""The secured local stack: the scorer end to end over Kafka SASL_SSL and Redis TLS + ACL; bad credentials refused.

The stack is started once for this module (its own broker and redis-server on free ports, next to
the session's plain stack when the whole suite runs); each test uses its own topics and prefix.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from kafka import KafkaAdminClient
from kafka.errors import KafkaError
from pydantic import SecretStr

from protoguard.deploy.secure_stack import SecureLocalStack
from protoguard.deploy.stack import StackInfo, free_port
from protoguard.schemas.alerts import alert_id
from protoguard.schemas.settings import KafkaSettings, RedisSettings, Settings, StackSettings, load_settings
from protoguard.stream.clients import build_consumer, build_producer, build_redis, ensure_topics, kafka_common_config
from protoguard.stream.replay import encode_events
from protoguard.trainer.registry import ModelRegistry
from protoguard.trainer.store import FeatureStore
from tests.fixtures.pipeline import FEATURES, N_FEATURES, alerts_of, fit_tiny_model, synthetic_traffic

pytestmark = pytest.mark.integration

_AUTH_FAILED = "Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512"


@pytest.fixture(scope="module")
def secure_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StackInfo, SecureLocalStack]]:
    run_dir = tmp_path_factory.mktemp("secure-stack")
    local = SecureLocalStack(StackSettings(run_dir=run_dir, kafka_port=free_port(), controller_port=free_port(),
                                           redis_port=free_port(), start_timeout_s=120))
    info = local.up()
    try:
        yield info, local
    finally:
        local.down()


@pytest.fixture
def secure_settings(secure_stack: tuple[StackInfo, SecureLocalStack]) -> Settings:
    info, _ = secure_stack
    assert info.secure and info.client_config is not None
    return load_settings(info.client_config)


def _env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


def _with_password(settings: KafkaSettings | RedisSettings, password: str) -> dict[str, object]:
    values = settings.model_dump()
    values["security"] = {**values["security"], "password_file": None, "password": SecretStr(password)}
    return values


def test_scorer_end_to_end_over_sasl_ssl_and_redis_tls_acl(secure_stack, secure_settings: Settings,
                                                          tmp_path: Path) -> None:
    info, local = secure_stack
    k, token = secure_settings.kafka, uuid.uuid4().hex[:8]
    events, alerts_topic, prefix, group = f"events-{token}", f"alerts-{token}", f"s{token}", f"scorers-{token}"
    ensure_topics(k, {events: 2, alerts_topic: 2, f"dlq-{token}": 1, f"labels-{token}": 1})

    client = build_redis(secure_settings.redis)
    weights, manifest, det = fit_tiny_model(seed=21)
    registry = ModelRegistry(client, prefix=prefix)
    version = registry.register(weights, manifest)
    registry.promote(version)

    X, _ = synthetic_traffic(3000, seed=22)
    producer = build_producer(k, linger_ms=20)
    ids = []
    for key, value, event_id in encode_events(X, FEATURES, id_prefix="sec"):
        producer.send(events, key=key, value=value)
        ids.append(event_id)
    producer.flush()
    producer.close()

    # The scorer gets the secure settings the way a container would: the env file `stack up --secure` wrote.
    env = {**os.environ, **_env_file(Path(info.client_config).with_suffix(".env")),
           "PROTOGUARD_KAFKA__EVENTS_TOPIC": events, "PROTOGUARD_KAFKA__ALERTS_TOPIC": alerts_topic,
           "PROTOGUARD_KAFKA__DLQ_TOPIC": f"dlq-{token}", "PROTOGUARD_KAFKA__LABELS_TOPIC": f"labels-{token}",
           "PROTOGUARD_KAFKA__CONSUMER_GROUP": group, "PROTOGUARD_KAFKA__N_PARTITIONS": "2",
           "PROTOGUARD_KAFKA__SESSION_TIMEOUT_MS": "6000", "PROTOGUARD_REDIS__PREFIX": prefix,
           "PROTOGUARD_STREAM__FEATURES_TTL_S": "3600", "PROTOGUARD_STREAM__METRICS_HOST": "127.0.0.1",
           "OMP_NUM_THREADS": "1"}
    assert env["PROTOGUARD_KAFKA__SECURITY__PROTOCOL"] == "SASL_SSL"
    log_path = tmp_path / "scorer.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "protoguard.cli.main", "--log-level", "INFO", "score",
                                 "--exit-when-idle-s", "5"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert proc.wait(timeout=180) == 0, log_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)

    # Every event was scored (its features reached Redis over TLS) and the alerts equal offline scoring.
    stored = FeatureStore(client, prefix=prefix, ttl_s=3600).lookup(ids, N_FEATURES)
    assert set(stored) == set(ids)
    reader = build_consumer(k, f"read-{token}", alerts_topic)
    records: list = []
    try:
        idle = 0
        while idle < 6:
            polled = reader.poll(timeout_ms=500)
            batch = [r for rs in polled.values() for r in rs]
            records += batch
            idle = 0 if batch else idle + 1
    finally:
        reader.close()
    offline = det.score(X) > np.float32(registry.manifest(version).threshold)
    expected = {alert_id(ids[i], version) for i in np.flatnonzero(offline)}
    assert expected, "the tiny model should alert on the planted anomalies"
    assert {a["alert_id"] for a in alerts_of(records)} == expected

    # The password never reaches the logs.
    password = local.client_password_file.read_text().strip()
    assert password not in log_path.read_text()
    client.close()


def test_wrong_password_is_refused_by_kafka_and_redis(secure_stack, secure_settings: Settings,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    info, _ = secure_stack
    broker_log = Path(info.run_dir) / "kafka-logs" / "server.log"
    refusals_before = broker_log.read_text(errors="replace").count(_AUTH_FAILED)
    bad_kafka = KafkaSettings(**_with_password(secure_settings.kafka, "not-the-password"))
    with caplog.at_level(logging.WARNING, logger="kafka"):
        with pytest.raises(KafkaError, match="Unable to bootstrap"):
            KafkaAdminClient(**kafka_common_config(bad_kafka), bootstrap_timeout_ms=4000)
    # The broker says why: the client either reads the SaslAuthenticate error or, when the broker's
    # close wins the race, just a closed socket; the broker's log has the reason every time.
    refused = [line for line in broker_log.read_text(errors="replace").splitlines() if _AUTH_FAILED in line]
    assert len(refused) > refusals_before, caplog.text[-2000:]
    assert "Failed authentication with /127.0.0.1" in refused[-1]

    bad_redis = build_redis(RedisSettings(**_with_password(secure_settings.redis, "not-the-password")))
    try:
        with pytest.raises(redis.AuthenticationError, match="invalid username-password pair"):
            bad_redis.ping()
    finally:
        bad_redis.close()

    # The right password works (the refusal above is about the password, not the TLS set-up).
    good_redis = build_redis(secure_settings.redis)
    try:
        assert good_redis.ping()
    finally:
        good_redis.close()
    admin = KafkaAdminClient(**kafka_common_config(secure_settings.kafka), bootstrap_timeout_ms=10_000)
    try:
        assert isinstance(admin.list_topics(), list)
    finally:
        admin.close()


def test_plaintext_clients_get_nothing_from_the_secure_stack(secure_stack) -> None:
    info, _ = secure_stack
    port = int(info.redis_url.rsplit(":", 1)[1].split("/")[0])
    plain = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=2, socket_timeout=2)
    try:
        with pytest.raises((redis.ConnectionError, redis.TimeoutError)):  # TLS only: a plain client gets no reply
            plain.ping()
    finally:
        plain.close()


def test_up_restarts_a_killed_secure_redis_with_the_same_credentials_and_data(secure_stack,
                                                                             secure_settings: Settings) -> None:
    """Runs last: it replaces the module's redis-server. The CA and passwords are reused, so the
    broker left running and the clients' settings file still match the restarted Redis."""
    info, local = secure_stack
    client = build_redis(secure_settings.redis)
    client.set("secure-restart-key", b"kept")
    client.close()
    os.kill(info.redis_pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while os.path.exists(f"/proc/{info.redis_pid}") and time.monotonic() < deadline:
        try:
            os.waitpid(info.redis_pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)
    after = local.up()
    assert after.started == ("redis",) and after.kafka_pid == info.kafka_pid
    settings = load_settings(after.client_config)
    client = build_redis(settings.redis)
    assert client.get("secure-restart-key") == b"kept"
    client.close()
    admin = KafkaAdminClient(**kafka_common_config(settings.kafka), request_timeout_ms=10_000)
    try:
        assert admin.list_topics() is not None
    finally:
        admin.close()
