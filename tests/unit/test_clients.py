"""stream/clients.py's pure config builders: what every consumer and producer is configured with,
how settings and overrides reach them, security passed through, and the compression codec check.
(SASL_SSL with a password file reaching every builder is in test_security_settings.py.)"""
from __future__ import annotations

from pathlib import Path

import pytest
from kafka import codec

from protoguard.schemas.errors import ConfigError
from protoguard.schemas.security import KafkaSecurity
from protoguard.schemas.settings import KafkaSettings
from protoguard.stream.clients import consumer_config, kafka_common_config, producer_config


def test_a_bare_address_means_default_settings() -> None:
    assert consumer_config("b:9092", "g") == consumer_config(KafkaSettings(bootstrap_servers="b:9092"), "g")
    assert producer_config("b:9092") == producer_config(KafkaSettings(bootstrap_servers="b:9092"))
    assert kafka_common_config("b:9092") == {"bootstrap_servers": "b:9092"}


def test_consumers_commit_by_hand_and_take_their_sizes_from_the_settings() -> None:
    k = KafkaSettings(bootstrap_servers="b1:9092,b2:9092", auto_offset_reset="latest", session_timeout_ms=30_000,
                      fetch_min_bytes=4096, fetch_max_wait_ms=50, max_partition_fetch_bytes=2048, fetch_max_bytes=8192)
    config = consumer_config(k, "scorers")
    assert config["enable_auto_commit"] is False  # offsets are committed after the outputs are acked
    assert {key: config[key] for key in ("bootstrap_servers", "group_id", "auto_offset_reset", "session_timeout_ms",
                                          "fetch_min_bytes", "fetch_max_wait_ms", "max_partition_fetch_bytes",
                                          "fetch_max_bytes")} == {
        "bootstrap_servers": "b1:9092,b2:9092", "group_id": "scorers", "auto_offset_reset": "latest",
        "session_timeout_ms": 30_000, "fetch_min_bytes": 4096, "fetch_max_wait_ms": 50,
        "max_partition_fetch_bytes": 2048, "fetch_max_bytes": 8192}
    assert config["heartbeat_interval_ms"] == 10_000  # a third of the session timeout
    assert config["metadata_max_age_ms"] <= 10_000  # a join before the topic's metadata stalls seconds, not minutes


def test_heartbeats_stay_well_inside_the_session_timeout() -> None:
    for session_ms in (6_000, 10_000, 45_000):
        config = consumer_config(KafkaSettings(session_timeout_ms=session_ms), "g")
        assert 1_000 <= config["heartbeat_interval_ms"] <= session_ms / 3


def test_producers_are_idempotent_acks_all_and_sized_by_the_settings() -> None:
    config = producer_config(KafkaSettings(linger_ms=12, batch_size=65_536, compression_type="gzip"))
    assert config["acks"] == "all" and config["enable_idempotence"] is True
    assert config["max_in_flight_requests_per_connection"] <= 5  # what idempotence allows
    assert (config["linger_ms"], config["batch_size"], config["compression_type"]) == (12, 65_536, "gzip")
    assert producer_config(KafkaSettings())["compression_type"] is None  # "none" means no codec at all


def test_keyword_overrides_win_over_settings_and_defaults() -> None:
    k = KafkaSettings(auto_offset_reset="earliest", linger_ms=5)
    consumer = consumer_config(k, "g", auto_offset_reset="latest", max_poll_records=10, client_id="probe")
    assert (consumer["auto_offset_reset"], consumer["max_poll_records"], consumer["client_id"]) == ("latest", 10, "probe")
    assert producer_config(k, linger_ms=0, acks=1)["linger_ms"] == 0
    assert consumer_config(k, "g")["auto_offset_reset"] == "earliest"  # an override does not stick to the settings


def test_mutual_tls_reaches_every_client_without_sasl_keys(tmp_path: Path) -> None:
    k = KafkaSettings(bootstrap_servers="b:9093", security=KafkaSecurity(
        protocol="SSL", ca_file=tmp_path / "ca.pem", cert_file=tmp_path / "client.pem", key_file=tmp_path / "client.key",
        check_hostname=False))
    expected = {"security_protocol": "SSL", "ssl_cafile": str(tmp_path / "ca.pem"),
                "ssl_certfile": str(tmp_path / "client.pem"), "ssl_keyfile": str(tmp_path / "client.key"),
                "ssl_check_hostname": False, "ssl_password": None}
    for config in (kafka_common_config(k), consumer_config(k, "g"), producer_config(k)):
        assert expected.items() <= config.items()
        assert not any(key.startswith("sasl_") for key in config)


@pytest.mark.parametrize("name", ["lz4", "zstd", "snappy"])
def test_a_codec_whose_library_is_missing_fails_at_build_time_naming_the_setting(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, f"has_{name}", lambda: False)
    with pytest.raises(ConfigError, match=rf"kafka\.compression_type: '{name}' needs its codec library.*"
                                          r"PROTOGUARD_KAFKA__COMPRESSION_TYPE=none"):
        producer_config(KafkaSettings(compression_type=name))
    monkeypatch.setattr(codec, f"has_{name}", lambda: True)
    assert producer_config(KafkaSettings(compression_type=name))["compression_type"] == name
